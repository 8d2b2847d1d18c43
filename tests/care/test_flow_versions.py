"""Publishing dialogue versions: validated, unchanged content creates nothing, rollback makes
an old version active for new conversations while running ones keep theirs."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import select
from sqlalchemy.orm import Session

from care import flow_versions
from care.context import Care
from care.errors import NotFound
from care.flow_versions import (
    TRIGGERS_ID,
    ContentRejected,
    FlowStore,
    diff,
    history,
    publish,
    rollback,
)
from care.models import AuditEntry, FlowVersion
from dialogues import CONTENT_DIR, ChoiceInput, Context, Say, Step, resume, start
from dialogues import Session as DialogueSession

CONTEXT: Context = {"alias": "Sam", "worker_name": "Noor", "office_hours": True}


@pytest.fixture
def content(tmp_path: Path) -> Path:
    folder = tmp_path / "content"
    shutil.copytree(CONTENT_DIR, folder)
    return folder


def _edit(folder: Path, flow: str, old: str, new: str) -> None:
    path = folder / f"{flow}.yml"
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")


def _active(session: Session) -> dict[str, int]:
    rows = session.scalars(select(FlowVersion).where(FlowVersion.is_active.is_(True)))
    return {row.flow: row.number for row in rows}


def test_first_publish_stores_every_flow_and_the_triggers(
    db_session: Session, content: Path
) -> None:
    created = publish(db_session, content, "editor1", "first")
    db_session.commit()
    names = {version.flow for version in created}
    assert names == {p.stem for p in content.glob("*.yml")}
    assert TRIGGERS_ID in names
    assert set(_active(db_session).values()) == {1}
    checkin = next(v for v in created if v.flow == "checkin")
    assert checkin.source == (content / "checkin.yml").read_text(encoding="utf-8")
    assert checkin.publisher == "editor1" and checkin.note == "first"
    assert checkin.published_at.tzinfo is not None
    assert len(checkin.content_hash) == 64
    audit = db_session.scalars(select(AuditEntry).where(AuditEntry.action == "dialogues.publish"))
    assert len(list(audit)) == len(created)


def test_publishing_unchanged_content_creates_nothing(db_session: Session, content: Path) -> None:
    publish(db_session, content, "editor1")
    db_session.commit()
    path = content / "checkin.yml"  # a comment and a blank line only: the content is the same
    path.write_text(path.read_text(encoding="utf-8") + "\n# checked by Noor\n", encoding="utf-8")
    assert publish(db_session, content, "editor1") == []
    assert db_session.scalar(select(FlowVersion).where(FlowVersion.number == 2)) is None


def test_only_changed_flows_get_a_new_version(db_session: Session, content: Path) -> None:
    publish(db_session, content, "editor1")
    _edit(content, "checkin", "Fijn om te horen!", "Wat fijn!")
    created = publish(db_session, content, "editor2", "warmer")
    db_session.commit()
    assert [(v.flow, v.number) for v in created] == [("checkin", 2)]
    assert _active(db_session)["checkin"] == 2
    assert [v.is_active for v in history(db_session, "checkin")] == [False, True]


def test_invalid_content_is_never_published(db_session: Session, content: Path) -> None:
    _edit(content, "checkin", "next: ask_safe", "next: ask_saaf")
    with pytest.raises(ContentRejected) as caught:
        publish(db_session, content, "editor1")
    assert "checkin.yml" in str(caught.value) and "'ask_saaf'" in str(caught.value)
    assert db_session.scalars(select(FlowVersion)).first() is None


def test_history_and_diff(db_session: Session, content: Path) -> None:
    publish(db_session, content, "editor1")
    _edit(content, "wipe", "Oké, ik wis niks.", "Oké, ik laat alles staan.")
    publish(db_session, content, "editor1")
    assert [v.number for v in history(db_session, "wipe")] == [1, 2]
    text = diff(db_session, "wipe", 1, 2)
    assert text.startswith("--- wipe v1\n+++ wipe v2\n")
    assert '-      nl: "Oké, ik wis niks."\n' in text
    assert '+      nl: "Oké, ik laat alles staan."\n' in text
    assert diff(db_session, "wipe", 2, 2) == ""
    with pytest.raises(NotFound):
        history(db_session, "nope")
    with pytest.raises(NotFound):
        diff(db_session, "wipe", 1, 9)


def test_rollback_serves_new_conversations_while_running_ones_stay(
    care_ctx: Care, content: Path
) -> None:
    with care_ctx.sessions.begin() as session:
        publish(session, content, "editor1")
    _edit(content, "checkin", "Fijn om te horen!", "Wat fijn!")
    with care_ctx.sessions.begin() as session:
        publish(session, content, "editor1")
    store = FlowStore(care_ctx.sessions, working_copy=content, refresh_seconds=0)

    running = start(store.active("checkin"), CONTEXT, "nl", flows=store)
    assert running.session.version == 2
    stored = running.session.to_json()

    with care_ctx.sessions.begin() as session:
        rollback(session, "checkin", 1, actor="editor1")

    fresh = start(store.active("checkin"), CONTEXT, "nl", flows=store)
    assert fresh.session.version == 1
    good = _choose(fresh, "good")
    fresh_after = resume(fresh.session, good, store, CONTEXT)
    assert "Fijn om te horen! 😊" in _texts(fresh_after.events)

    session_v2 = DialogueSession.from_json(stored)
    running_after = resume(session_v2, _choose(running, "good"), store, CONTEXT)
    assert "Wat fijn! 😊" in _texts(running_after.events)
    assert running_after.session.version == 2


def test_rollback_that_would_break_a_jump_is_refused(db_session: Session, content: Path) -> None:
    _edit(content, "help", "contact_worker", "contact")
    _edit(content, "fallback", "node: contact_worker", "node: contact")
    _edit(content, "triggers", "node: contact_worker", "node: contact")
    publish(db_session, content, "editor1")
    shutil.rmtree(content)
    shutil.copytree(CONTENT_DIR, content)
    publish(db_session, content, "editor1")
    with pytest.raises(ContentRejected) as caught:
        rollback(db_session, "help", 1)
    assert "contact_worker" in str(caught.value)
    assert _active(db_session)["help"] == 2


def test_unknown_version_cannot_be_rolled_back_to(db_session: Session, content: Path) -> None:
    publish(db_session, content, "editor1")
    with pytest.raises(NotFound):
        rollback(db_session, "checkin", 7)


def test_store_uses_the_working_copy_until_something_is_published(
    care_ctx: Care, content: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FlowStore(care_ctx.sessions, working_copy=content, refresh_seconds=0)
    with caplog.at_level(logging.INFO, logger="care.flow_versions"):
        flow = store.active("checkin")
        store.active("checkin")
        triggers = store.triggers()
    assert flow.version == 0
    assert triggers.not_understood == "fallback"
    notes = [r.getMessage() for r in caplog.records if "working_copy" in r.getMessage()]
    assert notes == [
        "flow_store.working_copy flow=checkin (never published)",
        "flow_store.working_copy flow=triggers (never published)",
    ]
    with care_ctx.sessions.begin() as session:
        publish(session, content, "editor1")
    assert store.active("checkin").version == 1
    assert store.get("checkin", 1) is store.get("checkin", 1)


def test_store_sees_a_publish_after_its_refresh_time(
    care_ctx: Care, content: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(flow_versions.time, "monotonic", lambda: now[0])
    with care_ctx.sessions.begin() as session:
        publish(session, content, "editor1")
    store = FlowStore(care_ctx.sessions, working_copy=content, refresh_seconds=1.0)
    assert store.active("checkin").version == 1
    _edit(content, "checkin", "Fijn om te horen!", "Wat fijn!")
    with care_ctx.sessions.begin() as session:
        publish(session, content, "editor1")
    now[0] += 0.9
    assert store.active("checkin").version == 1, "read once per refresh time"
    now[0] += 0.2
    assert store.active("checkin").version == 2


def _choose(step: Step, button: str) -> ChoiceInput:
    for event in reversed(step.events):
        if isinstance(event, Say):
            for choice in event.choices:
                if choice.id.endswith("." + button):
                    return ChoiceInput(choice.id)
    raise AssertionError(button)


def _texts(events: tuple[object, ...]) -> list[str]:
    return [event.text for event in events if isinstance(event, Say)]


def test_warm_loads_every_active_flow_before_the_first_turn(
    care_ctx: Care, content: Path, caplog: pytest.LogCaptureFixture
) -> None:
    flows = {p.stem for p in content.glob("*.yml")} - {TRIGGERS_ID}
    assert FlowStore(care_ctx.sessions, working_copy=content).warm() == len(flows)
    with care_ctx.sessions.begin() as session:
        publish(session, content, "editor1")
        broken = session.scalar(select(FlowVersion).where(FlowVersion.flow == "checkin"))
        assert broken is not None
        broken.source = "flow: [no longer loads"
    store = FlowStore(care_ctx.sessions, working_copy=content, refresh_seconds=60)
    with caplog.at_level(logging.WARNING, logger="care.flow_versions"):
        assert store.warm() == len(flows) - 1, "a flow that no longer loads does not stop a start"
    assert "flow_store.warm_failed flow=checkin" in caplog.text
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(statement)

    sqlalchemy.event.listen(care_ctx.engine, "before_cursor_execute", seen)
    try:
        for flow in sorted(flows - {"checkin"}):
            assert store.active(flow).version == 1
        store.triggers()
    finally:
        sqlalchemy.event.remove(care_ctx.engine, "before_cursor_execute", seen)
    assert statements == [], "every flow was loaded by warm()"
