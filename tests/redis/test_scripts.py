"""The Lua scripts: one per operation, each opening with a header of KEYS, ARGV and replies."""

from __future__ import annotations

from importlib import resources

import msgspec
import pytest

from conveyor.brokers.redis.scripts import NAMES, Scripts
from conveyor.brokers.redis.wire import lua_string

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
    assert files == set(NAMES) | {"lib"}


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
