"""The Lua scripts: one per operation, each opening with a header of KEYS, ARGV and replies."""

from __future__ import annotations

from importlib import resources

import msgspec
import pytest

from conveyor.brokers.redis.scripts import INCLUDES, NAMES, Scripts
from conveyor.brokers.redis.wire import lua_string
from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Message

PACKAGE = resources.files("conveyor.brokers.redis")


def header(name: str) -> str:
    """The comment lines a script opens with."""
    lines = []
    for line in PACKAGE.joinpath(f"{name}.lua").read_text().splitlines():
        if not line.startswith("--"):
            break
        lines.append(line)
    return "\n".join(lines)


def test_every_lua_file_is_an_operation_or_the_shared_helpers():
    files = {p.name.removesuffix(".lua") for p in PACKAGE.iterdir() if p.name.endswith(".lua")}
    helpers = {extra for extras in INCLUDES.values() for extra in extras}  # some scripts' helpers
    assert files == set(NAMES) | {"lib", "slot_guard"} | helpers  # slot_guard: the cluster's prologue


@pytest.mark.parametrize("name", NAMES)
def test_script_opens_with_its_keys_arguments_and_replies(name):
    text = header(name)
    assert text.startswith(f"-- {name}: ")
    assert "KEYS[1]" in text
    assert "ARGV" in text or name == "next_due"
    assert "Returns" in text


def test_every_script_compiles_on_the_server(admin):
    scripts = Scripts()
    for name in NAMES:
        assert admin.script_load(scripts.source[name]) == scripts.sha[name]


@pytest.mark.parametrize("size", [0, 1, 31, 32, 255, 256, 65535, 65536])
def test_any_bytes_reach_lua_intact_inside_a_packed_list(admin, size):
    """Outcomes cross to ack.lua packed, their results, errors and effect arguments as
    MessagePack str of any bytes; every length class of the str header must read back."""
    value = bytes((i * 7 + 0x80) % 256 for i in range(size))  # not UTF-8
    packed = msgspec.msgpack.encode(["before", lua_string(value), "after"])
    script = "local t = cmsgpack.unpack(ARGV[1]); return {t[1], t[2], t[3]}"
    assert admin.eval(script, 0, packed) == [b"before", value, b"after"]


def test_calls_load_the_scripts_again_after_the_server_lost_them(open_redis, admin):
    """A restarted Redis has no scripts: a single call (sent on its own) and several calls (one
    pipeline) each get NOSCRIPT, load what they need and run once."""
    broker = open_redis()

    def message(queue: str) -> Message:
        return Message(id=new_id(), task="t", queue=queue, priority=1, payload=b"[[],{}]")

    admin.script_flush()
    one = message("a")
    assert broker.enqueue([one])[0].created
    admin.script_flush()
    two = [message("a"), message("b")]  # two queues: a check and a write pipeline of two calls
    assert all(e.created for e in broker.enqueue(two))
    assert {s.queue: s.total("ready") for s in broker.stats(["a", "b"])} == {"a": 2, "b": 1}
    admin.script_flush()
    leased = broker.reserve(["a"], 10, 60.0, "w1", Fairness((6, 3, 1)))
    assert sorted(d.id for d in leased) == sorted([one.id, two[0].id])
