"""Closing a SQLite broker while another thread is inside a store call must not crash the process
(a worker's wait can still be running when its application closes the broker)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import sys, threading
    from conveyor.brokers.sqlite import SQLiteBroker
    from conveyor.ids import new_id
    from conveyor.records import Message

    url = sys.argv[1]
    SQLiteBroker(url).enqueue([Message(id=new_id(), task="t", queue="q", priority=1, payload=b"[[],{}]", delay=3600)])
    for _ in range(150):
        broker = SQLiteBroker(url)
        busy, stop = threading.Event(), threading.Event()

        def waits():
            while not stop.is_set():
                try:
                    broker.stats(["q"])  # reads through this thread's connection, in a loop
                except Exception:
                    pass
                busy.set()

        t = threading.Thread(target=waits)
        t.start()
        busy.wait(5)
        broker.close()
        stop.set()
        t.join(5)
    print("ok")
    """
)


def test_closing_a_broker_while_a_thread_reads_through_it_does_not_crash(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, f"sqlite:///{tmp_path}/c.db"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.strip() == "ok"
