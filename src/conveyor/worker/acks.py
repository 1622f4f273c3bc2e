"""Sending outcomes to the store so that one it refuses holds back no other."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from conveyor.app import Conveyor
from conveyor.brokers.base import Lease
from conveyor.errors import AckRefused
from conveyor.records import AckStatus, Delivery, Outcome
from conveyor.redact import printable
from conveyor.worker.executor import failure

log = logging.getLogger("conveyor.worker")
T = TypeVar("T")

#: Times in a row an outcome the store refuses on its own is sent before it is replaced.
REFUSALS = 3

#: An outcome not acknowledged, with the store's error (None while the store does not answer).
Failed = tuple[Outcome, Exception | None]
#: Runs a broker call on the worker's store thread.
Call = Callable[..., Awaitable[Any]]


class Acknowledger:
    """Sends batches of outcomes; tells a store that is away from one that refuses an outcome.

    A batch that fails while the store answers (a read of one of its jobs succeeds) is sent
    again one outcome at a time, so the good ones land. An outcome refused on its own
    ``REFUSALS`` times in a row is replaced by a failed attempt (AckRefused) the store can take;
    if that is refused as often too, its lease is given up, to expire and be reclaimed. While the
    store does not answer, nothing counts against any outcome.
    """

    def __init__(self, app: Conveyor, call: Call) -> None:
        self.app = app
        self._call = call
        #: Times in a row the store refused an outcome on its own, by lease.
        self._refusals: dict[Lease, int] = {}

    async def send(self, batch: list[Outcome]) -> tuple[list[tuple[Outcome, AckStatus]], list[Failed]]:
        """The outcomes of ``batch`` the store answered, with its answers, and those it did not."""
        ack = self.app.broker.ack
        try:
            return self._answered(list(zip(batch, await self._call(ack, batch), strict=True))), []
        except Exception as exc:  # noqa: BLE001 - whatever the store raised, the outcomes stay ours
            cause = exc
        try:
            await self._call(self.app.broker.get, batch[0].id)
        except Exception as exc:  # noqa: BLE001 - the store is away: every outcome waits for it
            log.warning(
                "ack of %d outcomes failed (%s: %s); the store does not answer",
                len(batch),
                type(exc).__name__,
                exc,
            )
            return [], [(outcome, None) for outcome in batch]
        if len(batch) == 1:
            return [], [(batch[0], cause)]
        answered: list[tuple[Outcome, AckStatus]] = []
        failed: list[Failed] = []
        for outcome in batch:
            try:
                answered.append((outcome, (await self._call(ack, [outcome]))[0]))
            except Exception as exc:  # noqa: BLE001 - this outcome's own failure
                failed.append((outcome, exc))
        return self._answered(answered), failed

    def again(
        self,
        failed: list[Failed],
        held: Callable[[Lease], Delivery | None],
        worker: str,
        rng: random.Random,
    ) -> tuple[list[Outcome], list[Lease]]:
        """The outcomes to send again, and the leases to give up (``held``: a lease's delivery
        while it is held)."""
        outcomes: list[Outcome] = []
        given_up: list[Lease] = []
        for outcome, exc in failed:
            lease = (outcome.id, outcome.token)
            if exc is None:
                outcomes.append(outcome)
                continue
            cause = printable(f"{type(exc).__name__}: {exc}")
            refusals = self._refusals.get(lease, 0) + 1
            log.warning(
                "job %s: the store refused its outcome (%s), %d/%d", outcome.id, cause, refusals, REFUSALS
            )
            if refusals < REFUSALS:
                self._refusals[lease] = refusals
                outcomes.append(outcome)
                continue
            del self._refusals[lease]
            delivery = held(lease)
            if delivery is None:
                continue  # no longer ours: nothing to settle
            if outcome.error is not None and outcome.error.get("type") == AckRefused.__name__:
                log.error(
                    "job %s: the store refuses even its failed attempt; left to be reclaimed", outcome.id
                )
                given_up.append(lease)
                continue
            refused = AckRefused(f"the store refused the outcome ({outcome.kind}): {cause}")
            outcomes.append(failure(delivery, worker, refused, self.app.tasks.get(delivery.task), rng))
        return outcomes, given_up

    def _answered(self, answered: list[tuple[Outcome, AckStatus]]) -> list[tuple[Outcome, AckStatus]]:
        if self._refusals:
            for outcome, _ in answered:
                self._refusals.pop((outcome.id, outcome.token), None)
        return answered
