"""Deliberate mistakes in using typed tasks. The statement after each ``# expect:`` comment
must be reported by mypy --strict (``mypy[code]``) and by pyright (``pyright[rule]``) on its
first line, and nothing else may be reported.

Checked by tests/unit/test_typing.py, never imported or run.
"""

from __future__ import annotations

from conveyor import Conveyor

app = Conveyor("sqlite:///typing-check.db")


@app.task
def send_email(to: str, subject: str = "hello", *, urgent: bool = False) -> bool:
    return urgent


@app.task(queue="reports", retry=None)
def report(year: int) -> dict[str, float]:
    return {"year": float(year)}


@app.task
async def fetch(url: str) -> bytes:
    return url.encode()


def mistakes() -> None:
    # A wrong type for a parameter.
    # expect: mypy[arg-type] pyright[reportArgumentType]
    send_email.enqueue(123)
    # An extra argument.
    # expect: mypy[call-arg,arg-type] pyright[reportCallIssue]
    send_email.enqueue("a@example.com", "hi", "extra")
    # A misspelt keyword.
    # expect: mypy[call-arg] pyright[reportCallIssue]
    send_email.enqueue("a@example.com", subjet="hi")
    # A missing argument.
    # expect: mypy[call-arg] pyright[reportCallIssue]
    send_email.enqueue()
    # expect: mypy[arg-type] pyright[reportArgumentType]
    send_email.enqueue("a@example.com", urgent="yes")
    # Options are typed too.
    # expect: mypy[arg-type] pyright[reportArgumentType]
    send_email.options(delay="soon")
    # expect: mypy[arg-type] pyright[reportArgumentType]
    send_email.options(priority=1.5)
    # expect: mypy[call-arg] pyright[reportCallIssue]
    send_email.options(dealy=5)
    # The function's arguments after options.
    # expect: mypy[arg-type] pyright[reportArgumentType]
    send_email.options(delay=5).enqueue(42)
    # Options among the function's arguments: still run, but flagged (use options()).
    # expect: mypy[call-arg] pyright[reportCallIssue]
    send_email.enqueue("a@example.com", delay=5)
    # expect: mypy[arg-type] pyright[reportArgumentType]
    report.message("2026")
    # job.result() has the function's return type...
    # expect: mypy[assignment] pyright[reportAssignmentType]
    wrong: str = send_email.enqueue("a@example.com").result()
    # expect: mypy[assignment] pyright[reportAssignmentType]
    total: int = report.enqueue(2026).result()
    # ... the awaited one for an async function.
    # expect: mypy[assignment] pyright[reportAssignmentType]
    body: str = fetch.enqueue("https://example.com").result()
    # expect: mypy[arg-type] pyright[reportArgumentType]
    fetch.enqueue(b"https://example.com")
    del wrong, total, body


@app.periodic(every=60)
async def tick() -> int:
    return 1


def periodic_mistakes() -> None:
    # A periodic task takes no arguments, and its result is the awaited one.
    # expect: mypy[call-arg] pyright[reportCallIssue]
    tick.enqueue(1)
    # expect: mypy[assignment] pyright[reportAssignmentType]
    wrong: str = tick.enqueue().result()
    del wrong


# Decorator options are typed.
# expect: mypy[call-overload,untyped-decorator] pyright[reportArgumentType]
@app.task(queue=3)
def misconfigured() -> None:
    pass
