"""Task names as operators type them: the registered dotted name, or its last part."""

from __future__ import annotations

from collections.abc import Iterable


def matching(names: Iterable[str], name: str) -> list[str]:
    """The registered ``names`` that ``name`` designates: itself if registered, else every name
    whose last dotted part it is (``charge`` for ``shop.tasks.charge``), sorted."""
    known = set(names)
    if name in known:
        return [name]
    return sorted(n for n in known if n.rsplit(".", 1)[-1] == name)


def designates(name: str, stored: str) -> bool:
    """Whether ``name`` designates the stored task name ``stored`` without a registry to ask:
    the same name, or its last dotted part."""
    return stored == name or stored.rsplit(".", 1)[-1] == name
