"""Settings: the shipped config loads; every bad value stops start-up with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from care.errors import ConfigError
from care.settings import DEFAULT_CONFIG, load_settings


def test_shipped_config_loads_with_the_documented_defaults() -> None:
    s = load_settings(DEFAULT_CONFIG, environ={})
    assert s.database.url == "sqlite:///var/aftercare.db"
    assert s.default_language == "nl" and s.languages == ("nl", "en")
    assert s.timezone == "Europe/Amsterdam"
    assert s.nlu.backend == "embedded"
    assert s.reminders.appointment_offsets_hours == (24.0, 2.0)
    assert s.telegram.token is None


def test_secrets_come_from_the_environment_and_are_not_shown() -> None:
    s = load_settings(
        DEFAULT_CONFIG,
        environ={"AFTERCARE_TELEGRAM_TOKEN": "123:SECRET", "AFTERCARE_DATABASE_URL": "sqlite://"},
    )
    assert s.telegram.token is not None
    assert s.telegram.token.get_secret_value() == "123:SECRET"
    assert "SECRET" not in repr(s)
    assert s.database.url == "sqlite://"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nlu:\n  backend: spacy\n", "config.yml:2: key 'nlu.backend': Input should be"),
        ("languages: [nl, fr]\n", "key 'languages': must be a list drawn from: nl, en"),
        ("timezone: Mars/Olympus\n", "key 'timezone': must be an IANA time zone"),
        ("office_hours:\n  start: 9am\n  end: '17:00'\n", "config.yml:2: key 'office_hours.start'"),
        ("colour: blue\n", "config.yml:1: key 'colour': unknown key"),
        ("reminders:\n  appointment_offsets_hours: [-1]\n", "must be a list of hours"),
        ("default_language: en\nlanguages: [nl]\n", "key 'default_language': must be one of"),
        ("nlu: [1, 2\n", "fix the YAML syntax"),
        ("nlu:\n\tbackend: rasa\n", "config.yml:2: a tab is used for indentation"),
        ("- 1\n- 2\n", "must be a mapping"),
        ("telegram:\n  mode: webhook\n", "set AFTERCARE_WEBHOOK_SECRET"),
    ],
)
def test_bad_config_gives_one_line_naming_file_key_and_fix(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, text), environ={})
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert str(tmp_path) in message


def test_missing_config_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="AFTERCARE_CONFIG"):
        load_settings(tmp_path / "nope.yml", environ={})


def test_empty_config_gives_defaults(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, ""), environ={})
    assert s.default_language == "nl"
