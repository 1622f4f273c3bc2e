"""`conveyor status --watch` in an 80-column terminal: long queue names are folded, not cut."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
import time

import pytest
from harness import Cluster

pytestmark = pytest.mark.slow
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")


def test_status_watch_folds_long_queue_names_at_80_columns(sqlite_cluster: Cluster) -> None:
    name = "emails.transactional.receipts-eu-west-1.priority-customers"
    sqlite_cluster.cli("enqueue", "e2e_app:app", "ok", "--queue", name)
    primary, secondary = pty.openpty()
    env = {**sqlite_cluster.env, "COLUMNS": "80", "LINES": "40", "TERM": "xterm"}
    watch = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "status", sqlite_cluster.url, "--watch"],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env=env,
        close_fds=True,
    )
    os.close(secondary)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while b"oldest" not in seen or seen.count(b"normal") < 1:
            assert time.monotonic() < deadline, f"never drew the table: {seen[-2000:]!r}"
            seen += os.read(primary, 65536)
        watch.send_signal(signal.SIGINT)
        code = watch.wait(timeout=30)
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        assert code == 0, seen[-3000:]
    finally:
        watch.kill()
        os.close(primary)
    text = ANSI.sub(b"", seen).decode(errors="replace")
    assert "\u2026" not in text  # nothing cut with an ellipsis
    lines = text.split("\n")
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("queue"))
    body = [line for line in lines[start + 2 :] if line.strip()]
    column = ""
    for line in body:
        first = re.split(r"\s{2,}", line.strip())[0]
        if not name.startswith(column + first):
            break
        column += first
    assert column == name, text
    assert max(len(line) for line in lines) <= 80
