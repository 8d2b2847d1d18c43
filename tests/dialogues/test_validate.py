"""The validator and linter: broken example files are each rejected with the expected
`file:line` message; the bundled content is clean; all problems come out in one run."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from dialogues import CONTENT_DIR, REQUIRED_FLOWS, validate_dir
from dialogues.loader import MAX_FILE_BYTES
from dialogues.validate import validate_file

BROKEN = Path(__file__).parent / "broken"
INTENTS = frozenset(
    {
        *("mood_good", "mood_okay", "mood_bad", "need_help", "talk_to_worker", "feel_unsafe"),
        *("danger_now", "self_harm", "exploiter_contact", "confirm", "deny", "stop", "pause"),
        *("appointment_question", "cant_make_appointment", "wipe", "greeting", "thanks"),
        "out_of_scope",
    }
)
"""The intents of the shared contract (nlu/data defines them all)."""


def _expectation(path: Path) -> tuple[str, int, str]:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    found = re.fullmatch(r"# expect: (error|warning) (\d+): (.+)", first)
    assert found, f"{path.name} must start with '# expect: error|warning LINE: message'"
    return found.group(1), int(found.group(2)), found.group(3)


@pytest.mark.parametrize("path", sorted(BROKEN.glob("*.yml")), ids=lambda p: p.stem)
def test_broken_file_is_rejected_with_its_message(path: Path) -> None:
    severity, line, message = _expectation(path)
    report = validate_file(path, known_intents=INTENTS, display_root=BROKEN)
    lines = [finding.format() for finding in report.findings]
    expected = f"{path.name}:{line}: {severity}: "
    assert any(text.startswith(expected) and message in text for text in lines), lines
    assert all(". Fix: " in text for text in lines), "every finding says how to fix it"
    assert report.ok is (severity == "warning")


def test_bundled_content_has_no_findings_at_all() -> None:
    report = validate_dir(CONTENT_DIR, known_intents=INTENTS)
    assert [f.format() for f in report.findings] == []
    assert set(report.flows) >= REQUIRED_FLOWS


def test_all_problems_of_all_files_come_out_in_one_run(tmp_path: Path) -> None:
    for name in ("missing_node", "dead_end", "unknown_placeholder", "malformed", "tabs"):
        shutil.copy(BROKEN / f"{name}.yml", tmp_path)
    report = validate_dir(tmp_path, known_intents=INTENTS, required_flows=(), display_root=tmp_path)
    files = {finding.file for finding in report.errors}
    assert files >= {
        "missing_node.yml",
        "dead_end.yml",
        "unknown_placeholder.yml",
        "malformed.yml",
        "tabs.yml",
        "triggers.yml",
    }


def test_a_five_megabyte_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "huge.yml"
    path.write_text("spec_version: 3\n" + "# filler\n" * (5 * 1024 * 1024 // 9), encoding="utf-8")
    assert path.stat().st_size > MAX_FILE_BYTES
    report = validate_file(path, display_root=tmp_path)
    (finding,) = report.findings
    assert finding.format().startswith("huge.yml:1: error: the file is 5.2 MB")


def test_an_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["spec_version: 3", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [
        f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 9)
    ]
    path = tmp_path / "bomb.yml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = validate_file(path, display_root=tmp_path)
    assert "anchors and aliases" in report.findings[0].format()


def test_a_missing_required_flow_and_triggers_file_are_named(tmp_path: Path) -> None:
    shutil.copy(CONTENT_DIR / "checkin.yml", tmp_path)
    report = validate_dir(tmp_path, display_root=tmp_path)
    messages = [finding.format() for finding in report.errors]
    assert any("the triggers file is missing" in m for m in messages)
    assert any("the required flow 'crisis' is missing" in m for m in messages)


def test_triggers_pointing_at_missing_flows_are_errors(tmp_path: Path) -> None:
    for path in CONTENT_DIR.glob("*.yml"):
        shutil.copy(path, tmp_path)
    triggers = tmp_path / "triggers.yml"
    text = triggers.read_text(encoding="utf-8").replace("  taal: language", "  taal: languages")
    triggers.write_text(text, encoding="utf-8")
    report = validate_dir(tmp_path, known_intents=INTENTS, display_root=tmp_path)
    assert [f.format() for f in report.findings] == [
        "triggers.yml:18: error: the flow 'languages' does not exist. "
        "Fix: correct the flow id or add the flow"
    ]


def test_an_old_button_landing_on_a_missing_node_is_named(tmp_path: Path) -> None:
    for path in CONTENT_DIR.glob("*.yml"):
        shutil.copy(path, tmp_path)
    triggers = tmp_path / "triggers.yml"
    text = triggers.read_text(encoding="utf-8").replace(
        "stale_choice_node: menu", "stale_choice_node: menuu"
    )
    triggers.write_text(text, encoding="utf-8")
    line = text.splitlines().index("stale_choice_node: menuu") + 1
    report = validate_dir(tmp_path, known_intents=INTENTS, display_root=tmp_path)
    assert [f.format() for f in report.findings] == [
        f"triggers.yml:{line}: error: flow 'fallback' has no node 'menuu'. "
        "Fix: name a node of the flow 'fallback', or leave the key out"
    ]
