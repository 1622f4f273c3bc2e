"""The Lua scripts: one per operation, each opening with a header of KEYS, ARGV and replies."""

from __future__ import annotations

from importlib import resources

import pytest

from conveyor.brokers.redis.scripts import NAMES, Scripts

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
