"""`aftercare dialogues validate | try | graph` as an editor uses them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from click.testing import CliRunner

from bot.cli import main
from dialogues import CONTENT_DIR

BROKEN = Path(__file__).parent / "broken"


def test_validate_the_bundled_content_is_clean() -> None:
    result = CliRunner().invoke(main, ["dialogues", "validate"])
    assert result.exit_code == 0, result.output
    assert "0 error(s), 0 warning(s)" in result.output


def test_validate_a_broken_file_exits_1_with_file_and_line() -> None:
    result = CliRunner().invoke(main, ["dialogues", "validate", str(BROKEN / "missing_node.yml")])
    assert result.exit_code == 1
    assert "missing_node.yml:11: error: node 'a' goes to a node 'nowhere'" in result.output
    assert "Traceback" not in result.output


def test_validate_with_warnings_only_exits_0() -> None:
    result = CliRunner().invoke(main, ["dialogues", "validate", str(BROKEN / "unreachable.yml")])
    assert result.exit_code == 0
    assert "unreachable.yml:14: warning: node 'lonely' can never be reached" in result.output


def test_validate_a_directory_reports_everything_at_once(tmp_path: Path) -> None:
    for path in CONTENT_DIR.glob("*.yml"):
        shutil.copy(path, tmp_path)
    shutil.copy(BROKEN / "dead_end.yml", tmp_path)
    shutil.copy(BROKEN / "tabs.yml", tmp_path)
    result = CliRunner().invoke(main, ["dialogues", "validate", str(tmp_path)])
    assert result.exit_code == 1
    assert "dead_end.yml:8: error" in result.output
    assert "tabs.yml:9: error: a tab is used for indentation" in result.output


def test_try_shows_buttons_as_numbers_and_the_events() -> None:
    answers = "3\n1\n2\n/quit\n"
    result = CliRunner().invoke(
        main, ["dialogues", "try", "checkin", "--lang", "en", "--no-nlu"], input=answers
    )
    assert result.exit_code == 0, result.output
    assert "bot> Hi Sam! How are you today?" in result.output
    assert "  [3] 😔 Not so good" in result.output
    assert "-> field mood = bad" in result.output
    assert "-> escalation: normal, reason checkin_wants_contact" in result.output
    assert "-> escalation: high, reason checkin_unsafe" in result.output
    assert "-> end of flow checkin" in result.output


def test_try_takes_intents_and_safety_signals_and_after_hours() -> None:
    result = CliRunner().invoke(
        main,
        ["dialogues", "try", "checkin", "--no-nlu", "--after-hours"],
        input="#mood_good\n!critical:self_harm\n/quit\n",
    )
    assert result.exit_code == 0, result.output
    assert "-> field mood = good" in result.output
    assert "-> escalation: critical, reason crisis_self_harm" in result.output
    assert "buiten kantoortijd" in result.output


def test_try_an_unknown_flow_is_a_clear_error() -> None:
    result = CliRunner().invoke(main, ["dialogues", "try", "nope", "--no-nlu"])
    assert result.exit_code == 2
    assert "no flow 'nope'" in result.output


def test_graph_prints_mermaid(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["dialogues", "graph", "checkin", "--lang", "en"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("flowchart TD")
    assert "n_ask_mood -->|😔 Not so good| n_mood_bad" in result.output
    assert "n_unsafe_office_hours -->|yes| n_unsafe_told" in result.output
    out = tmp_path / "checkin.mmd"
    result = CliRunner().invoke(main, ["dialogues", "graph", "help", "-o", str(out)])
    assert result.exit_code == 0
    assert "n_to_crisis -->" in out.read_text(encoding="utf-8")


def test_publish_history_diff_rollback_from_the_command_line(tmp_path: Path) -> None:
    config = (Path(__file__).resolve().parents[2] / "config.yml").read_text(encoding="utf-8")
    (tmp_path / "config.yml").write_text(config, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFTERCARE_")}
    env["AFTERCARE_CONFIG"] = str(tmp_path / "config.yml")
    content = tmp_path / "content"
    shutil.copytree(CONTENT_DIR, content)

    def run(*args: str) -> tuple[int, str]:
        result = CliRunner(env=env).invoke(main, list(args), catch_exceptions=False)
        return result.exit_code, result.output

    assert run("init")[0] == 0
    code, out = run("dialogues", "publish", "--path", str(content), "--publisher", "noor")
    assert code == 0 and "published checkin v1" in out
    assert run("dialogues", "publish", "--path", str(content))[1].startswith("nothing changed")
    path = content / "wipe.yml"
    path.write_text(path.read_text(encoding="utf-8").replace("ik wis niks", "ik wis niets"))
    code, out = run("dialogues", "publish", "--path", str(content), "--note", "spelling")
    assert out.splitlines() == ["published wipe v2"]
    code, out = run("dialogues", "history", "wipe")
    lines = out.splitlines()
    assert lines[0].startswith("  v1 ") and lines[1].startswith("* v2 ")
    assert lines[1].endswith("spelling")
    code, out = run("dialogues", "diff", "wipe", "1", "2")
    assert '+      nl: "Oké, ik wis niets."' in out
    code, out = run("dialogues", "rollback", "wipe", "1")
    assert code == 0 and "wipe v1 is active" in out
    assert run("dialogues", "history", "wipe")[1].splitlines()[0].startswith("* v1 ")
    path.write_text("spec_version: 3\nflow: wipe\n", encoding="utf-8")
    result = CliRunner(env=env).invoke(main, ["dialogues", "publish", "--path", str(content)])
    assert result.exit_code == 1
    assert "Nothing was changed; fix these first" in result.output
    assert "Traceback" not in result.output
    code, out = run("dialogues", "rollback", "wipe", "9")
    assert code == 1 and "has no published version 9" in out
