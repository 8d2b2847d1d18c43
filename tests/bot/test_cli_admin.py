"""The admin command line as an admin uses it: commands explain themselves, errors are one line."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from bot.cli import main


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found.extend(_commands(command, (*prefix, name)))
        else:
            found.append((*prefix, name))
    return found


@pytest.mark.parametrize("path", _commands(main), ids=lambda p: " ".join(p) or "aftercare")
def test_every_command_explains_itself(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output
    # A real sentence of help, not just the usage line.
    assert len(result.output.splitlines()) >= 4


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """A fresh installation: its own config, database and key file."""
    config = (Path(__file__).resolve().parents[2] / "config.yml").read_text(encoding="utf-8")
    (tmp_path / "config.yml").write_text(config, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFTERCARE_")}
    env["AFTERCARE_CONFIG"] = str(tmp_path / "config.yml")
    return env


def _run(env: dict[str, str], *args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner(env=env).invoke(main, list(args), input=input, catch_exceptions=False)
    return result.exit_code, result.output


def test_a_fresh_installation_from_init_to_an_invited_client(
    home: dict[str, str], tmp_path: Path
) -> None:
    code, out = _run(home, "init")
    assert code == 0, out
    keys = tmp_path / "var" / "aftercare.keys"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert "Warning: created a new local key file" in out
    assert _run(home, "org", "add", "Kompas", "--phone", "020-1234567")[0] == 0
    code, out = _run(home, "worker", "add", "--org", "Kompas", "--name", "Sanne")
    assert code == 0 and "/start " in out
    code, out = _run(
        home, "client", "invite", "--worker", "Sanne", "--alias", "roos", "--lang", "en"
    )
    assert code == 0
    invite_code = out.split("use once): ")[1].split()[0]
    assert 22 <= len(invite_code) <= 64
    code, out = _run(home, "client", "list")
    assert "roos\tinvited\ten\tSanne" in out
    assert _run(home, "audit", "verify")[1].startswith("Audit trail intact")
    # The raw key file holds no invitation code, the database holds no code either.
    assert invite_code not in keys.read_text()
    assert invite_code.encode() not in (tmp_path / "var" / "aftercare.db").read_bytes()


def test_invite_link_is_printed_when_the_bot_username_is_known(
    home: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "config.yml"
    config.write_text(
        config.read_text().replace("  username: null", "  username: kompas_coach_bot")
    )
    _run(home, "init")
    _run(home, "org", "add", "Kompas")
    _run(home, "worker", "add", "--org", "Kompas", "--name", "Sanne")
    code, out = _run(home, "client", "invite", "--worker", "Sanne")
    assert code == 0
    assert "Her link: https://t.me/kompas_coach_bot?start=" in out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("worker", "add", "--org", "Nowhere", "--name", "X"), "no organisation named 'Nowhere'"),
        (("client", "invite", "--worker", "Nobody"), "no worker named 'Nobody'"),
        (("client", "invite", "--worker", "Sanne", "--alias", "Jane Doe!"), "the alias must be"),
        (("client", "invite", "--worker", "Sanne", "--lang", "fr"), "the language must be one of"),
        (("org", "add", "Kompas"), "already exists"),
    ],
)
def test_bad_input_is_one_clear_line_and_changes_nothing(
    home: dict[str, str], args: tuple[str, ...], expected: str
) -> None:
    _run(home, "init")
    _run(home, "org", "add", "Kompas")
    _run(home, "worker", "add", "--org", "Kompas", "--name", "Sanne")
    before = _run(home, "client", "list")[1]
    result = CliRunner(env=home).invoke(main, list(args))
    assert result.exit_code == 1
    assert expected in result.output
    assert "Traceback" not in result.output
    assert _run(home, "client", "list")[1] == before


def test_an_empty_database_asks_for_an_upgrade(home: dict[str, str], tmp_path: Path) -> None:
    _run(home, "keys", "generate")
    result = CliRunner(env=home).invoke(main, ["client", "list"])
    assert result.exit_code == 1
    assert "run `aftercare db upgrade`" in result.output


def test_a_broken_inline_key_set_refuses_to_start_naming_the_variable(home: dict[str, str]) -> None:
    _run(home, "init")
    env = {**home, "AFTERCARE_KEYS": '{"format": 1, "master_keys": [{"id": "m'}
    result = CliRunner(env=env).invoke(main, ["client", "list"])
    assert result.exit_code == 1
    assert "AFTERCARE_KEYS: not a valid key set" in result.output


def test_key_rotation_end_to_end_keeps_every_client_readable(
    home: dict[str, str], tmp_path: Path
) -> None:
    _run(home, "init")
    _run(home, "org", "add", "Kompas")
    _run(home, "worker", "add", "--org", "Kompas", "--name", "Sanne")
    _run(home, "client", "invite", "--worker", "Sanne", "--alias", "roos")
    keys = tmp_path / "var" / "aftercare.keys"
    old_id = json.loads(keys.read_text())["master_keys"][0]["id"]
    assert "Added master key" in _run(home, "keys", "generate", "--new-master")[1]
    assert "Re-wrapped 2 data keys" in _run(home, "keys", "rotate")[1]
    assert "Retired 1 master key" in _run(home, "keys", "retire")[1]
    assert old_id not in keys.read_text()
    code, out = _run(home, "client", "list")
    assert code == 0 and "roos" in out
    assert "All data keys are under" in _run(home, "keys", "rotate")[1]


def test_bad_config_value_stops_with_file_line_and_key(
    home: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "config.yml"
    config.write_text(config.read_text().replace("backend: embedded", "backend: spacy"))
    result = CliRunner(env=home).invoke(main, ["client", "list"])
    assert result.exit_code == 1
    line = result.output.strip()
    assert line.startswith(f"Error: {config}:")
    assert "key 'nlu.backend'" in line and "\n" not in line
