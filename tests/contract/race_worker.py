"""A claimer process for the race test: ``python -m contract.race_worker BACKEND URL NAME``.

Prints ``ready``, waits for a line on stdin, then reserves and acks until nothing is left and
prints the claimed ids as one JSON list.
"""

from __future__ import annotations

import json
import sys

from conveyor.priority import Fairness
from conveyor.records import Outcome

from .backends import BACKENDS
from .helpers import WEIGHTS


def claim_all(broker, worker: str, limit: int = 5) -> list[str]:
    """Reserve and ack until a reservation comes back empty; return the ids claimed."""
    fairness = Fairness(WEIGHTS)
    claimed: list[str] = []
    while batch := broker.reserve(["q"], limit, 60.0, worker, fairness):
        claimed += [d.id for d in batch]
        statuses = broker.ack([Outcome(d.id, d.token, "succeeded") for d in batch])
        assert [s.status for s in statuses] == ["ok"] * len(batch), statuses
    return claimed


def main() -> None:
    backend, url, name = sys.argv[1:4]
    broker = BACKENDS[backend].open(url)
    try:
        print("ready", flush=True)
        sys.stdin.readline()
        print(json.dumps(claim_all(broker, name)), flush=True)
    finally:
        broker.close()


if __name__ == "__main__":
    main()
