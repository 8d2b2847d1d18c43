"""`aftercare nlu parse|train|evaluate` as a developer uses them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bot.cli import main
from nlu.config import default_cache_dir

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The repository's config.yml with the NLU cache pointed at the shared model cache."""
    config = (ROOT / "config.yml").read_text(encoding="utf-8")
    config = config.replace("cache_dir: var/nlu-cache", f"cache_dir: {default_cache_dir()}")
    (tmp_path / "config.yml").write_text(config, encoding="utf-8")
    return {"AFTERCARE_CONFIG": str(tmp_path / "config.yml")}


def test_parse_json_shows_intent_ranking_and_safety(env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["nlu", "parse", "--json", "ik wil dood"], env=env)
    assert result.exit_code == 0, result.output
    parsed = json.loads(result.output)
    assert set(parsed["intent"]) == {"name", "confidence"}
    assert parsed["intent"]["name"] in {score["name"] for score in parsed["ranking"]}
    assert parsed["safety"] == {
        "severity": "critical",
        "category": "self_harm",
        "matched": "nl.self_harm.wants_to_die",
    }


def test_parse_plain_names_the_intent(env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["nlu", "parse", "--lang", "en", "thank you!"], env=env)
    assert result.exit_code == 0, result.output
    assert "intent:  thanks" in result.output
    assert "safety:  no danger signal" in result.output


def test_parse_file_prints_one_json_object_per_line(env: dict[str, str], tmp_path: Path) -> None:
    messages = tmp_path / "messages.txt"
    messages.write_text("hoi\n\nhij staat voor de deur\n😭😭\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["nlu", "parse", "--file", str(messages)], env=env)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert len(lines) == 4
    assert lines[1]["intent"]["name"] == "out_of_scope"
    assert lines[2]["safety"]["severity"] == "critical"


def test_parse_needs_text_or_file(env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["nlu", "parse"], env=env)
    assert result.exit_code == 2
    assert "Give either TEXT or --file FILE." in result.output


def test_train_embedded_reports_each_language(env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["nlu", "train", "--lang", "nl"], env=env)
    assert result.exit_code == 0, result.output
    assert "embedded nl:" in result.output and "done in" in result.output


def test_evaluate_prints_scores_danger_recall_and_parse_time(env: dict[str, str]) -> None:
    args = ["nlu", "evaluate", "--folds", "2", "--lang", "en"]
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "precision" in out and "confusion" in out
    assert "danger recall" in out and "parse p99 ms" in out
    row = next(line for line in out.splitlines() if line.startswith("embedded  en"))
    macro_f1 = float(row.split()[2])
    assert 0.4 < macro_f1 <= 1.0
