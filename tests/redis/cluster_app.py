"""The application the Redis Cluster fault tests run in real worker processes."""

from __future__ import annotations

import os

from conveyor import Conveyor, RetryPolicy, current_job

app = Conveyor()  # CONVEYOR_URL, set by the test


@app.task(retry=RetryPolicy(max_attempts=10, base=0.01, max_delay=0.1))
def record(n: int, ledger: str, pad: str = "") -> int:
    """Log this execution, then push ``n`` to the list ``ledger`` with the acknowledgement
    (``ledger`` is in the job's queue slot, so the push runs inside the ack script). ``pad``
    makes the job as large as a test needs."""
    job = current_job()
    line = f"{n} {job.token} {os.getpid()}\n".encode()
    fd = os.open(os.environ["CLUSTER_EXEC_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    job.execute("RPUSH", (ledger, n))
    return n
