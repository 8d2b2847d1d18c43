"""Settings and the Rasa environment helpers that need no Rasa."""

from __future__ import annotations

from pathlib import Path

import pytest

from nlu import NluConfig, RasaEnvironmentError
from nlu.config import parse_rasa_urls
from nlu.rasa_env import model_path, pipeline_config, rasa_bin, rasa_venv


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
