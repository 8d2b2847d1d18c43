"""Migrations: every registered step has a fixture pair and turns one into the other; old
files load as the current spec; files newer than the code are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from dialogues import CURRENT_SPEC_VERSION, ContentError, NewerSpecError, load_flow_text
from dialogues.migrations import MIGRATIONS

FIXTURES = Path(__file__).parent / "migrations"


def _load(path: Path) -> Any:
    return YAML(typ="rt").load(path.read_text(encoding="utf-8"))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def test_every_version_below_the_current_one_has_a_step() -> None:
    assert sorted(MIGRATIONS) == list(range(1, CURRENT_SPEC_VERSION))


@pytest.mark.parametrize("version", sorted(MIGRATIONS))
def test_each_step_turns_its_fixture_into_the_next_version(version: int) -> None:
    source, target = FIXTURES / f"from_v{version}.yml", FIXTURES / f"to_v{version + 1}.yml"
    assert source.is_file() and target.is_file(), (
        f"step {version} needs {source.name}, {target.name}"
    )
    document = _load(source)
    MIGRATIONS[version](document)
    document["spec_version"] = version + 1
    assert _plain(document) == _plain(_load(target))
    assert "Why:" in (MIGRATIONS[version].__doc__ or ""), "each step says why it exists"


@pytest.mark.parametrize("version", sorted(MIGRATIONS))
def test_an_old_file_loads_as_the_current_spec(version: int) -> None:
    source = FIXTURES / f"from_v{version}.yml"
    loaded = load_flow_text(source.read_text(encoding="utf-8"), source.name)
    assert loaded.spec.spec_version == CURRENT_SPEC_VERSION
    assert loaded.migrated_from == tuple(range(version, CURRENT_SPEC_VERSION))


def test_a_migrated_file_hashes_like_the_same_content_written_today() -> None:
    old = load_flow_text((FIXTURES / "from_v2.yml").read_text(encoding="utf-8"), "old.yml")
    new = load_flow_text((FIXTURES / "to_v3.yml").read_text(encoding="utf-8"), "new.yml")
    assert old.content_hash == new.content_hash


def test_a_newer_file_is_refused_with_its_line() -> None:
    text = f"spec_version: {CURRENT_SPEC_VERSION + 1}\nflow: x\n"
    with pytest.raises(NewerSpecError) as caught:
        load_flow_text(text, "future.yml")
    assert str(caught.value).startswith(
        f"future.yml:1: error: this file is written for spec_version {CURRENT_SPEC_VERSION + 1}"
    )


def test_an_unknown_old_level_is_named_by_the_validator_after_migration() -> None:
    text = (FIXTURES / "from_v2.yml").read_text(encoding="utf-8").replace("urgent", "panic")
    with pytest.raises(ContentError) as caught:
        load_flow_text(text, "old.yml")
    assert "old.yml:10: error: nodes.alert.severity: must be 'critical'" in str(caught.value)
