"""Settings and the Rasa environment helpers that need no Rasa."""

from __future__ import annotations

from pathlib import Path

import pytest

from nlu import NluConfig, RasaEnvironmentError
from nlu.config import parse_rasa_urls
from nlu.rasa_env import RasaServer, free_port, model_path, pipeline_config, rasa_bin, rasa_venv


def test_one_url_serves_every_language() -> None:
    urls = parse_rasa_urls("http://rasa:5005/", ("nl", "en"))
    assert urls == {"nl": "http://rasa:5005", "en": "http://rasa:5005"}


def test_one_server_per_language() -> None:
    urls = NluConfig(rasa_url="nl=http://a:5005, en=http://b:5006/").rasa_urls()
    assert urls == {"nl": "http://a:5005", "en": "http://b:5006"}


def test_the_default_is_one_server_per_language() -> None:
    assert set(NluConfig().rasa_urls()) == {"nl", "en"}
    assert len(set(NluConfig().rasa_urls().values())) == 2


def test_the_pipeline_gets_the_language_of_the_model() -> None:
    assert "language: en" in pipeline_config("en")
    assert "language: nl" in pipeline_config("nl")


def test_models_are_cached_per_language_and_data(tmp_path: Path) -> None:
    nl, en = model_path("nl", tmp_path), model_path("en", tmp_path)
    assert nl != en and nl == model_path("nl", tmp_path)
    assert nl.parent == tmp_path / "rasa"


def test_a_missing_environment_says_how_to_make_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AFTERCARE_RASA_VENV", "/nonexistent/rasa-env")
    assert rasa_venv() == Path("/nonexistent/rasa-env")
    with pytest.raises(RasaEnvironmentError, match="make rasa"):
        rasa_bin()


def test_a_server_that_exits_at_once_says_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    venv = tmp_path / "rasa-env"
    (venv / "bin").mkdir(parents=True)
    fake = venv / "bin" / "rasa"
    fake.write_text("#!/bin/sh\necho 'OSError: [Errno 98] address already in use' >&2\nexit 3\n")
    fake.chmod(0o755)
    (venv / ".aftercare-rasa-complete").write_text("test")
    monkeypatch.setenv("AFTERCARE_RASA_VENV", str(venv))
    server = RasaServer(tmp_path / "model.tar.gz", free_port(), "s3cr3t-value")
    with pytest.raises(RasaEnvironmentError) as raised:
        server.start(timeout_s=30)
    message = str(raised.value)
    assert "exit code 3" in message
    assert "address already in use" in message
    assert "s3cr3t-value" not in message
