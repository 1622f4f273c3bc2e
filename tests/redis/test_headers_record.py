"""Headers in a Redis record (docs/hooks.md): a job without headers stores nothing for them, so
its record keeps the size it had before headers existed; one with headers stores them last."""

from __future__ import annotations

import msgspec

from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Message, Outcome


def record(admin, broker, queue: str, job_id: str) -> list[object]:
    raw = admin.hget(f"{broker.target.prefix}:{{{queue}}}:jobs", job_id)
    return msgspec.msgpack.decode(raw)


def test_only_jobs_with_headers_store_them(open_redis, admin):
    broker = open_redis()
    plain = Message(id=new_id(), task="t", queue="q", priority=1, payload=b"[[],{}]")
    headed = Message(id=new_id(), task="t", queue="q", priority=1, payload=b"[[],{}]", headers={"a": "b"})
    broker.enqueue([plain, headed])

    assert len(record(admin, broker, "q", plain.id)) == 10  # as before headers: no field added
    fields = record(admin, broker, "q", headed.id)
    assert (len(fields), fields[-1]) == (21, '{"a":"b"}')

    got = broker.reserve(["q"], 10, 30.0, "w", Fairness((6, 3, 1)))
    broker.ack([Outcome(d.id, d.token, "succeeded") for d in got])
    assert len(record(admin, broker, "q", plain.id)) <= 17
    assert record(admin, broker, "q", headed.id)[-1] == '{"a":"b"}'
