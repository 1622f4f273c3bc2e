"""Store outages in a worker's log: one line each, naming the store and the cause.

A :class:`~conveyor.errors.StoreUnavailable` is an expected condition the worker rides out by
retrying, not a bug: its traceback would only bury the one line that matters (the error's
message names the store and the cause), so it is logged as that line.
"""

from __future__ import annotations

import logging

from conveyor.errors import StoreUnavailable


class OneLineOutages(logging.Filter):
    """Turns a record carrying a StoreUnavailable into one line: its message, then the error."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, StoreUnavailable):
            record.msg = f"{record.getMessage()}: {exc}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def one_line_outages(logger: logging.Logger) -> None:
    """Install :class:`OneLineOutages` on ``logger`` (once)."""
    if not any(isinstance(f, OneLineOutages) for f in logger.filters):
        logger.addFilter(OneLineOutages())
