"""Migrations of flow files from older `spec_version`s to the current one.

One small function per step, registered under the version it migrates *from*. Each works in
place on the loaded YAML mapping (so line numbers survive for error messages) and says why it
exists. The loader runs them in order; a file newer than `CURRENT_SPEC_VERSION` is refused.
Every step has a fixture pair in `tests/dialogues/migrations/` and a test that runs it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, MutableMapping
from typing import Any

from dialogues.spec import CURRENT_SPEC_VERSION

Document = MutableMapping[str, Any]
Migration = Callable[[Document], None]

MIGRATIONS: dict[int, Migration] = {}
"""Migration steps by the `spec_version` they migrate from (n -> n + 1)."""


def _step(from_version: int) -> Callable[[Migration], Migration]:
    def register(function: Migration) -> Migration:
        MIGRATIONS[from_version] = function
        return function

    return register


def _nodes(document: Document) -> list[MutableMapping[str, Any]]:
    nodes = document.get("nodes")
    if not isinstance(nodes, MutableMapping):
        return []
    return [node for node in nodes.values() if isinstance(node, MutableMapping)]


@_step(1)
def give_buttons_stable_ids(document: Document) -> None:
    """v1 -> v2: every button gets a short stable `id`.

    Why: in v1 the callback data of a button was its label text. Rewording or translating a
    label broke every button still waiting on her phone, and the label (her answer, in words)
    travelled through Telegram's callback data. v2 gives each button an id that never changes.
    The id is taken from the button's `value` when that is already a short code, else from its
    position (`b1`, `b2`, ...), which is what the v1 engine effectively matched on.
    """
    for node in _nodes(document):
        buttons = node.get("buttons")
        if not isinstance(buttons, list):
            continue
        for position, button in enumerate(buttons, start=1):
            if not isinstance(button, MutableMapping) or "id" in button:
                continue
            value = button.get("value")
            if isinstance(value, str) and re.fullmatch(r"[a-z0-9][a-z0-9_]{0,15}", value):
                button["id"] = value
            else:
                button["id"] = f"b{position}"


_LEVEL_TO_SEVERITY = {"urgent": "critical", "high": "high", "medium": "normal", "low": "low"}


@_step(2)
def rename_escalation_level_to_severity(document: Document) -> None:
    """v2 -> v3: escalate nodes say `severity: critical|high|normal|low` instead of `level`.

    Why: v2 used `level: urgent|high|medium|low`, a scale of its own that `care` had to
    translate; two names for one idea led to a crisis escalation being filed as merely "high".
    v3 uses the escalation severities of the rest of the system, so content and alerts agree.
    An unknown old level is left as it is, so that the validator names it with its line.
    """
    for node in _nodes(document):
        if node.get("kind") != "escalate" or "level" not in node:
            continue
        level = node["level"]
        severity = _LEVEL_TO_SEVERITY.get(level, level) if isinstance(level, str) else level
        _rename(node, "level", "severity", severity)


def _rename(mapping: MutableMapping[str, Any], old: str, new: str, value: Any) -> None:
    """Replace key `old` by `new` in the same place, keeping its line for error messages."""
    keys = list(mapping)
    position = keys.index(old)
    lines = getattr(getattr(mapping, "lc", None), "data", None)
    where = lines.get(old) if isinstance(lines, dict) else None
    del mapping[old]
    if hasattr(mapping, "insert"):
        mapping.insert(position, new, value)
    else:
        mapping[new] = value
    if where is not None and isinstance(lines, dict):
        lines[new] = where


def migrate(document: Document) -> list[int]:
    """Migrate `document` in place to `CURRENT_SPEC_VERSION`; return the versions it passed.

    The caller checks first that `spec_version` is an int not newer than the current one.
    """
    version = document["spec_version"]
    passed: list[int] = []
    while version < CURRENT_SPEC_VERSION:
        MIGRATIONS[version](document)
        passed.append(version)
        version += 1
        document["spec_version"] = version
    return passed
