"""The engine: pure, deterministic, JSON sessions pinned to a flow version, stale buttons
re-asked, never a crash for anything she sends."""

from __future__ import annotations

import functools
import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dialogues import (
    CONTENT_DIR,
    ChoiceInput,
    CommandInput,
    Context,
    Escalate,
    Flow,
    Input,
    Library,
    NotifyWorker,
    Say,
    Session,
    SessionError,
    TextInput,
    TimeoutInput,
    ask_again,
    event_from_dict,
    event_to_dict,
    load_flow_text,
    load_library,
    resume,
    silence_alerts,
    start,
    takes_choice,
    timeout_alerts,
)

CONTEXT: Context = {
    "alias": "Sam",
    "worker_name": "Noor",
    "office_hours": True,
    "org_phone": "030 1",
}


@functools.cache
def _library() -> Library:
    return load_library()


@pytest.fixture
def library() -> Library:
    return _library()


def _first_choice(events: tuple[object, ...], button: str) -> str:
    for event in reversed(events):
        if isinstance(event, Say):
            for choice in event.choices:
                if choice.id.endswith("." + button):
                    return choice.id
    raise AssertionError(f"no button {button}")


def test_the_same_input_always_gives_the_same_step(library: Library) -> None:
    first = start(library.active("checkin"), CONTEXT, "nl", flows=library)
    again = start(library.active("checkin"), CONTEXT, "nl", flows=library)
    assert first == again
    choice = ChoiceInput(_first_choice(first.events, "bad"))
    assert resume(first.session, choice, library, CONTEXT) == resume(
        again.session, choice, library, CONTEXT
    )


def test_a_session_survives_json_and_names_its_flow_version(library: Library) -> None:
    step = start(library.active("checkin"), CONTEXT, "en", flows=library)
    data = json.loads(step.session.to_json())
    assert data["flow"] == "checkin"
    assert data["version"] == 0
    assert data["content_hash"] == library.active("checkin").content_hash
    assert Session.from_json(step.session.to_json()) == step.session
    assert "How are you" not in step.session.to_json()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{}",
        "[]",
        '{"format": 1}',
        '{"format": 2, "flow": "x"}',
        "not json",
        '{"format": 1, '
        '"flow": 1, "version": "1", "content_hash": "", "lang": "nl", "node": null, "turn": 0}',
    ],
)
def test_an_unreadable_session_is_a_session_error(text: str) -> None:
    with pytest.raises(SessionError):
        Session.from_json(text)


def test_button_ids_are_short_and_never_carry_text(library: Library) -> None:
    step = start(library.active("appointment_reminder"), CONTEXT, "nl", flows=library)
    (say,) = step.events
    assert isinstance(say, Say)
    for choice in say.choices:
        assert len(choice.id.encode()) <= 64
        assert choice.label.split()[-1].lower() not in choice.id


def test_a_button_of_another_flow_with_the_same_id_is_stale(library: Library) -> None:
    wipe = start(library.active("wipe"), CONTEXT, "nl", flows=library)
    wipe_yes = _first_choice(wipe.events, "yes")
    checkin = start(library.active("checkin"), CONTEXT, "nl", flows=library)
    step = resume(
        checkin.session, ChoiceInput(_first_choice(checkin.events, "good")), library, CONTEXT
    )
    after = resume(step.session, ChoiceInput(wipe_yes), library, CONTEXT)
    assert after.session == step.session
    (say,) = after.events
    assert isinstance(say, Say)
    assert say.text.startswith("Die knop hoort bij een eerder bericht.")
    assert not any(type(event).__name__ == "Wipe" for event in after.events)


def test_an_old_button_after_the_flow_ended_says_so_and_offers_the_menu(
    library: Library,
) -> None:
    checkin = start(library.active("checkin"), CONTEXT, "en", flows=library)
    old = _first_choice(checkin.events, "good")
    ended = start(library.active("fallback"), CONTEXT, "en", flows=library, node="thanks")
    assert ended.session.node is None
    after = resume(ended.session, ChoiceInput(old), library, CONTEXT)
    texts = [event.text for event in after.events if isinstance(event, Say)]
    assert texts[0] == "That button belongs to an earlier message."
    assert not any("didn't quite get that" in text for text in texts)
    assert texts[-1] == "What can I do for you?"
    last = after.events[-1]
    assert isinstance(last, Say) and last.choices


def test_a_running_conversation_keeps_its_version(library: Library) -> None:
    old = library.active("checkin")
    step = start(old, CONTEXT, "nl", flows=library)
    text = (
        (CONTENT_DIR / "checkin.yml")
        .read_text(encoding="utf-8")
        .replace("Fijn om te horen!", "Wat fijn!")
    )
    loaded = load_flow_text(text, "checkin.yml")
    newer = Flow(loaded.spec, loaded.content_hash, version=2)
    pinned = Library({**library.flows, "checkin": newer}, library.triggers(), {("checkin", 0): old})
    running = resume(step.session, ChoiceInput(_first_choice(step.events, "good")), pinned, CONTEXT)
    assert any(isinstance(e, Say) and e.text == "Fijn om te horen! 😊" for e in running.events)
    fresh = start(pinned.active("checkin"), CONTEXT, "nl", flows=pinned)
    fresh = resume(fresh.session, ChoiceInput(_first_choice(fresh.events, "good")), pinned, CONTEXT)
    assert any(isinstance(e, Say) and e.text == "Wat fijn! 😊" for e in fresh.events)
    assert fresh.session.version == 2


_SILENCE = """
spec_version: 3
flow: silence
title: Two questions, then (out of office hours) her worker is told
languages: [nl, en]
start: first
nodes:
  first:
    kind: ask
    text: {nl: "Een?", en: "One?"}
    buttons: [{id: ok, label: {nl: "Ja", en: "Yes"}, next: done}]
    timeout: second
    timeout_minutes: 10
  second:
    kind: ask
    text: {nl: "Twee?", en: "Two?"}
    buttons: [{id: ok, label: {nl: "Ja", en: "Yes"}, next: done}]
    timeout: late
    timeout_minutes: 10
  late:
    kind: branch
    flag: office_hours
    then: done
    else: tell
  tell:
    kind: notify
    reason: silent
    next: done
  done:
    kind: end
"""


def test_a_question_whose_silence_alerts_her_worker_is_known(library: Library) -> None:
    """`timeout_alerts`: the safety check's question alerts after 30 minutes of silence; the
    check-in's first question only notes her silence; a path counts through branches and
    through the time-outs of the questions asked on the way."""
    safety = start(library.active("safety_check"), CONTEXT, "nl", flows=library)
    assert timeout_alerts(safety.session, library)
    checkin = start(library.active("checkin"), CONTEXT, "nl", flows=library)
    assert not timeout_alerts(checkin.session, library)
    loaded = load_flow_text(_SILENCE, "silence.yml")
    silence = Library(
        {**library.flows, "silence": Flow(loaded.spec, loaded.content_hash)}, library.triggers()
    )
    chained = start(silence.active("silence"), CONTEXT, "nl", flows=silence)
    assert chained.session.node == "first"
    assert timeout_alerts(chained.session, silence)  # first -> second -> (out of hours) notify
    quiet = load_flow_text(_SILENCE.replace("else: tell", "else: done"), "silence.yml")
    calm = Library(
        {**library.flows, "silence": Flow(quiet.spec, quiet.content_hash)}, library.triggers()
    )
    assert not timeout_alerts(
        start(calm.active("silence"), CONTEXT, "nl", flows=calm).session, calm
    )
    ended = resume(
        safety.session, ChoiceInput(_first_choice(safety.events, "no")), library, CONTEXT
    )
    assert ended.session.node is None and not timeout_alerts(ended.session, library)


def test_a_question_left_for_a_command_can_be_alerted_asked_again_and_answered(
    library: Library,
) -> None:
    """What the host needs to hold a question she left: `interrupted` says she left it for
    another flow (not for a danger the question hears out), `silence_alerts` gives only the
    alerts its silence promised (through chained time-outs, out of office hours here),
    `ask_again` asks it with fresh buttons, and `takes_choice` knows its old buttons."""
    safety = start(library.active("safety_check"), CONTEXT, "nl", flows=library)
    left = resume(safety.session, CommandInput("help"), library, CONTEXT)
    assert left.interrupted and left.session.flow == "help"
    answered = resume(
        safety.session, ChoiceInput(_first_choice(safety.events, "no")), library, CONTEXT
    )
    assert not answered.interrupted
    idle = resume(answered.session, CommandInput("help"), library, CONTEXT)
    assert not idle.interrupted, "nothing waited"
    assert silence_alerts(safety.session, library, CONTEXT) == (
        Escalate("normal", "safety_check_no_answer"),
    )
    loaded = load_flow_text(_SILENCE, "silence.yml")
    silence = Library(
        {**library.flows, "silence": Flow(loaded.spec, loaded.content_hash)}, library.triggers()
    )
    chained = start(silence.active("silence"), CONTEXT, "nl", flows=silence)
    out_of_hours = {**CONTEXT, "office_hours": False}
    assert silence_alerts(chained.session, silence, out_of_hours) == (NotifyWorker("silent"),)
    assert silence_alerts(chained.session, silence, CONTEXT) == ()
    again = ask_again(safety.session, library, CONTEXT, "Terug:")
    (say,) = again.events
    assert isinstance(say, Say) and say.text.startswith("Terug:\n\nIk wil zeker weten")
    assert again.session == replace(safety.session, turn=safety.session.turn + 1)
    old_no = ChoiceInput(_first_choice(safety.events, "no"))
    assert takes_choice(safety.session, old_no, library)
    assert not takes_choice(again.session, old_no, library), "stale once asked again"
    assert takes_choice(again.session, ChoiceInput(say.choices[1].id), library)
    with pytest.raises(SessionError):
        ask_again(answered.session, library, CONTEXT, "Terug:")


def test_a_session_whose_flow_changed_under_it_is_refused(library: Library) -> None:
    step = start(library.active("checkin"), CONTEXT, "nl", flows=library)
    forged = replace(step.session, content_hash="0" * 64)
    with pytest.raises(SessionError):
        resume(forged, TimeoutInput(), library, CONTEXT)


def test_an_empty_placeholder_leaves_no_stray_space(library: Library) -> None:
    step = start(library.active("checkin"), {"worker_name": "Noor"}, "nl", flows=library)
    assert isinstance(step.events[0], Say)
    assert step.events[0].text == "Hoi! Hoe gaat het vandaag?"


def test_an_unknown_language_falls_back_to_dutch(library: Library) -> None:
    step = start(library.active("checkin"), CONTEXT, "fr", flows=library)
    assert step.session.lang == "nl"


def test_events_round_trip_through_dicts(library: Library) -> None:
    step = start(library.active("crisis"), CONTEXT, "en", flows=library)
    assert any(isinstance(e, Escalate) and e.severity == "critical" for e in step.events)
    for event in step.events:
        assert event_from_dict(json.loads(json.dumps(event_to_dict(event)))) == event


inputs = st.one_of(
    st.builds(ChoiceInput, st.text(max_size=70)),
    st.builds(
        TextInput,
        st.text(max_size=200),
        st.one_of(st.none(), st.sampled_from(["confirm", "deny", "stop", "danger_now", "x"])),
        st.floats(0, 1),
        st.one_of(st.none(), st.sampled_from(["critical", "high"])),
        st.one_of(st.none(), st.sampled_from(["self_harm", "feel_unsafe", "other"])),
    ),
    st.builds(CommandInput, st.text(max_size=20)),
    st.just(TimeoutInput()),
)


@settings(max_examples=150, deadline=None)
@given(
    flow=st.sampled_from(["checkin", "onboarding", "help", "stop", "fallback"]),
    seq=st.lists(inputs, max_size=6),
)
def test_no_input_sequence_crashes_or_goes_silent(flow: str, seq: list[Input]) -> None:
    library = _library()
    step = start(library.active(flow), CONTEXT, "nl", flows=library)
    for item in seq:
        step = resume(step.session, item, library, CONTEXT)
        if not isinstance(item, TimeoutInput):
            assert any(isinstance(event, Say) for event in step.events), item
