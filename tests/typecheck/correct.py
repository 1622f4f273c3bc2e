"""Correct uses of typed tasks: mypy --strict and pyright must find nothing here.

Checked by tests/unit/test_typing.py, never imported or run.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from conveyor import AsyncTask, Conveyor, Job, Message, Task, TaskOptions

app = Conveyor("sqlite:///typing-check.db")


@app.task
def send_email(to: str, subject: str = "hello", *, urgent: bool = False) -> bool:
    return urgent


@app.task(queue="reports", priority="low")
def report(year: int, months: list[int]) -> dict[str, float]:
    return {str(m): float(year) for m in months}


@app.task
async def fetch(url: str) -> bytes:
    return url.encode()


@app.task(timeout=30)
async def fetch_later(url: str, tries: int = 1) -> int:
    return tries


@app.periodic(every=60)
def tick() -> int:
    return 1


@app.periodic(cron="*/5 * * * *")
async def atick() -> str:
    return "ok"


def uses() -> None:
    job: Job[bool] = send_email.enqueue("ada@example.com")
    sent: bool = job.result(timeout=5)
    send_email.enqueue("ada@example.com", "hi", urgent=True)
    send_email.enqueue(to="ada@example.com", subject="hi")
    ran_here: bool = send_email("ada@example.com")

    figures: dict[str, float] = report.enqueue(2026, [1, 2]).result()
    later: TaskOptions[..., dict[str, float]] = report.options(delay=60, priority="high")
    later.enqueue(2026, months=[3])
    report.options(delay=timedelta(minutes=5), queue="reports-slow", key="r-2026").enqueue(2026, [1])
    report.options(run_at=datetime(2027, 1, 1, tzinfo=UTC), priority=0).enqueue(2025, [])
    report.options(run_at=1_900_000_000.0).enqueue(2025, [])
    batch: list[Message] = [report.message(y, [1]) for y in range(3)] + [later.message(1, [2])]
    app.enqueue_many(batch)

    body: bytes = fetch.enqueue("https://example.com").result()
    fetch_later.options(priority="high").enqueue("https://example.com", tries=3)
    typed: AsyncTask[..., bytes] = fetch
    plain: Task[..., bool] = send_email
    ticks: int = tick.enqueue().result()
    aticks: str = atick.enqueue().result()
    del ticks, aticks
    del sent, ran_here, figures, body, typed, plain


async def async_uses() -> None:
    job = await fetch.enqueue_async("https://example.com")
    body: bytes = await job.result_async()
    count: int = await fetch_later("https://example.com")
    ok: bool = await (await send_email.options(delay=1).enqueue_async("ada@example.com")).result_async()
    del body, count, ok
