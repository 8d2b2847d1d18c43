"""Scenario tests: each file in scenarios/ holds conversations (inputs and the events the bot
must produce) for one flow in one language; this one runner plays them all.

A scenario that no longer matches fails. After a deliberate content change, regenerate the
expected events with `AFTERCARE_UPDATE_SCENARIOS=1 pytest tests/dialogues/test_scenarios.py`
and read the diff before committing it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from dialogues import (
    LANGUAGES,
    ChoiceInput,
    CommandInput,
    EndFlow,
    Escalate,
    Event,
    Input,
    Library,
    NotifyWorker,
    Say,
    Session,
    SetField,
    SetLanguage,
    SetStatus,
    Step,
    TextInput,
    TimeoutInput,
    Wipe,
    load_library,
    resume,
    start,
)

SCENARIOS = Path(__file__).parent / "scenarios"
UPDATE = os.environ.get("AFTERCARE_UPDATE_SCENARIOS") == "1"

DEFAULT_CONTEXT: dict[str, dict[str, str | bool]] = {
    "nl": {"appointment_time": "dinsdag 14 mei, 15:00"},
    "en": {"appointment_time": "Tuesday 14 May, 15:00"},
}
COMMON_CONTEXT: dict[str, str | bool] = {
    "alias": "Sam",
    "worker_name": "Noor",
    "appointment_place": "Stationsstraat 12",
    "org_name": "Team Noord",
    "org_phone": "030 123 45 67",
    "office_hours": True,
    "has_alias": True,
    "has_appointment": True,
}


_AMBIGUOUS = {"yes", "no", "on", "off", "true", "false", "null", "y", "n", "~", ""}


def _represent_text(representer: Any, value: str) -> Any:
    style = '"' if value.lower() in _AMBIGUOUS else None
    return representer.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _represent_null(representer: Any, _value: None) -> Any:
    return representer.represent_scalar("tag:yaml.org,2002:null", "null")


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.width = 4096
    yaml.preserve_quotes = True
    yaml.representer.add_representer(str, _represent_text)
    yaml.representer.add_representer(type(None), _represent_null)
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


@pytest.fixture(scope="module")
def library() -> Library:
    return load_library()


def compact(event: Event) -> dict[str, Any]:
    """The event as scenario files write it (button ids without their per-question tag)."""
    if isinstance(event, Say):
        data: dict[str, Any] = {"say": event.text}
        if event.choices:
            data["buttons"] = [f"{c.id.split('.', 1)[1]}: {c.label}" for c in event.choices]
        return data
    if isinstance(event, Escalate):
        return {"escalate": event.severity, "reason": event.reason}
    if isinstance(event, NotifyWorker):
        return {"notify_worker": event.reason}
    if isinstance(event, SetField):
        return {"set_field": event.name, "value": event.value}
    if isinstance(event, EndFlow):
        return {"end_flow": event.flow}
    if isinstance(event, Wipe):
        return {"wipe": True}
    if isinstance(event, SetLanguage):
        return {"set_language": event.lang}
    assert isinstance(event, SetStatus)
    return {"set_status": event.status}


def _input(step: dict[str, Any], last: Say | None) -> Input:
    if "choice" in step:
        assert last is not None, "a `choice` step needs buttons on an earlier message"
        ids = [c.id for c in last.choices if c.id.split(".", 1)[1] == step["choice"]]
        assert ids, f"no button {step['choice']!r} on the last question"
        return ChoiceInput(ids[0])
    if "raw_choice" in step:
        return ChoiceInput(str(step["raw_choice"]))
    if "command" in step:
        return CommandInput(str(step["command"]))
    if "timeout" in step:
        return TimeoutInput()
    if "text" in step or "intent" in step or "safety" in step:
        return TextInput(
            str(step.get("text", "")),
            intent=step.get("intent"),
            confidence=float(step.get("confidence", 0.9)),
            safety=step.get("safety"),
            safety_category=step.get("category"),
        )
    raise AssertionError(f"a step without input: {dict(step)}")


def _files() -> list[Path]:
    return sorted(SCENARIOS.glob("*.yml"))


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.stem)
def test_scenario(path: Path, library: Library) -> None:
    yaml = _yaml()
    document = yaml.load(path.read_text(encoding="utf-8"))
    lang = str(document["lang"])
    for scenario in document["scenarios"]:
        context = {**COMMON_CONTEXT, **DEFAULT_CONTEXT[lang], **scenario.get("context", {})}
        session: Session | None = None
        last: Say | None = None
        for number, item in enumerate(scenario["steps"], start=1):
            where = f"{path.name}: {scenario['name']!r}, step {number}"
            result: Step
            if "start" in item:
                flow = library.active(str(item["start"]))
                result = start(flow, context, lang, flows=library, node=item.get("node"))
            elif "idle" in item:
                result = Step(Session("none", 0, "", lang, None), ())
            else:
                assert session is not None, f"{where}: the first step must `start` or be `idle`"
                result = resume(session, _input(item, last), library, context)
            session = Session.from_json(result.session.to_json())  # must survive storage
            asked = [e for e in result.events if isinstance(e, Say) and e.choices]
            last = asked[-1] if asked else last
            actual = [compact(event) for event in result.events]
            if UPDATE:
                item["events"] = actual
                continue
            assert actual == item.get("events"), where
            if "waiting" in item:
                assert session.node == item["waiting"], where
    if UPDATE:
        buffer = io.StringIO()
        yaml.dump(document, buffer)
        lines = [line for line in buffer.getvalue().splitlines() if line.strip()]
        text = "\n".join(lines).replace("\n  - name:", "\n\n  - name:")
        path.write_text(text + "\n", encoding="utf-8")


def test_every_flow_has_scenarios_in_every_language(library: Library) -> None:
    for flow in library.flows:
        for lang in LANGUAGES:
            path = SCENARIOS / f"{flow}.{lang}.yml"
            assert path.is_file(), f"missing scenarios for {flow} in {lang}: {path.name}"
            document = _yaml().load(path.read_text(encoding="utf-8"))
            assert document["lang"] == lang
            started = [s for sc in document["scenarios"] for s in sc["steps"] if "start" in s]
            assert any(s["start"] == flow for s in started), f"{path.name} never starts {flow}"
