"""Dependencies point one way; only `bot` may import `telegram`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "dialogues": {"telegram", "care", "nlu", "reminders", "bot", "sqlalchemy"},
    "nlu": {"telegram", "care", "dialogues", "reminders", "bot"},
    "care": {"telegram", "reminders", "bot"},
    "reminders": {"telegram", "bot"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_it_may(package: str) -> None:
    offending = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = _imports(path) & FORBIDDEN[package]
        if bad:
            offending.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert offending == []


def test_the_checker_finds_imports(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("import telegram.ext\nfrom care.models import Client\nfrom . import y\n")
    assert _imports(sample) == {"telegram", "care"}
