"""The conversation service without a channel: what it decides, read from the outbox."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, update
from sqlalchemy.orm import Session

import dialogues
from bot.bootstrap import Background, Parts
from care import directory, outbox
from care.context import Care
from care.conversation import LazyContext, in_office_hours
from care.models import (
    Appointment,
    ChatMessage,
    CheckIn,
    CheckInStatus,
    Client,
    ClientStatus,
    DialogueSession,
    Escalation,
    Organisation,
    OutboxMessage,
    OutboxPriority,
    OutboxStatus,
    ProcessedUpdate,
    RecipientKind,
    Severity,
    Worker,
)
from care.outbox import OutboxSender, SenderOptions
from tests.bot.world import CLIENT_CHAT, OFFICE_TIME, Sent, World, make_world
from tests.care.protocol import client_messages, round_trips, tracing
from tests.reminders.helpers import FakeChannel


@pytest.fixture
def world(care_ctx: Care) -> World:
    """Het Anker, Anna, and roos-1 (invited)."""
    return make_world(care_ctx)


async def enrolled(world: World) -> World:
    """roos-1 enrolled, Dutch, consent given, no nickname."""
    await world.enroll()
    await world.press(world.to_client()[-1].button("Nederlands"))
    await world.press(world.to_client()[-1].button("Ja, prima"))
    await world.press(world.to_client()[-1].button("Geen bijnaam"))
    world.pending()
    return world


def add_appointment(world: World, starts_at: datetime, place: str | None = None) -> None:
    """An appointment of hers with her worker (no reminder jobs: tests start the flow)."""
    with world.care.sessions.begin() as session:
        client = session.get_one(Client, world.client_id)
        session.add(
            Appointment(
                client_id=client.id,
                worker_id=world.worker_id,
                starts_at=starts_at,
                place_enc=(
                    world.care.vault.encrypt(session, client.data_key_id, place) if place else None
                ),
            )
        )


def invite_another(world: World, alias: str) -> directory.Issued:
    """A second client of her worker, invited (not linked)."""
    with world.care.sessions.begin() as session:
        worker = session.get(Worker, world.worker_id)
        assert worker is not None
        return directory.invite_client(session, world.care.vault, worker, alias=alias)


async def test_start_flow_sends_once_per_dedupe_key(world: World) -> None:
    await enrolled(world)
    expires = world.clock.now() + timedelta(hours=3)
    first = await world.service.start_flow(
        world.client_id, "checkin", dedupe_key="checkin:1", expires_at=expires
    )
    again = await world.service.start_flow(world.client_id, "checkin", dedupe_key="checkin:1")
    assert (first, again) == (True, False)
    rows = world.to_client()
    assert [r.text for r in rows] == ["Hoi! Hoe gaat het vandaag?"]
    assert rows[0].priority == OutboxPriority.REMINDER
    with world.care.sessions() as session:
        row = session.get(OutboxMessage, rows[0].id)
        assert row is not None and row.expires_at == expires and row.dedupe_key == "checkin:1"


async def test_start_flow_refuses_who_must_not_get_messages(world: World) -> None:
    assert not await world.service.start_flow(world.client_id, "checkin"), "not enrolled"
    await enrolled(world)
    await world.command("pauze")
    await world.press(world.to_client()[-1].button_ids[0])
    assert world.client().status is ClientStatus.PAUSED
    world.pending()
    assert not await world.service.start_flow(world.client_id, "checkin")
    assert not await world.service.start_flow(999_999, "checkin")
    assert world.pending() == []


async def test_stop_means_stop_and_her_worker_is_told_once(world: World) -> None:
    await enrolled(world)
    await world.command("stop")
    await world.press(world.to_client()[-1].button("Ja, stoppen"))
    assert world.client().status is ClientStatus.ENDED
    notices = [s.text for s in world.to_worker()]
    assert notices == ["ℹ️ roos-1: is gestopt met de app."]
    assert not await world.service.start_flow(world.client_id, "appointment_reminder")


async def test_language_switch_changes_her_language(world: World) -> None:
    await enrolled(world)
    await world.command("language")
    await world.press(world.to_client()[-1].button("English"))
    assert world.client().language == "en"
    await world.command("checkin")
    assert world.to_client()[-1].text == "Hi! How are you today?"


async def test_a_failing_turn_still_answers_her_and_tells_her_worker(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    await enrolled(world)

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("engine exploded")

    monkeypatch.setattr(dialogues, "resume", broken)
    caplog.set_level(logging.INFO)
    inbound = await world.text("mijn geheime tekst")
    assert [s.text for s in world.to_client()] == [
        "Sorry, er ging bij mij iets mis. Ik heb Anna een seintje gegeven. "
        "Ben je in gevaar? Bel 112."
    ]
    assert "kon een bericht van haar niet verwerken" in world.to_worker()[0].text
    with world.care.sessions() as session:
        assert session.get(ProcessedUpdate, inbound.update_id) is not None
        ids = session.scalars(select(ChatMessage.message_id)).all()
    assert inbound.message_id in ids, "her message can still be wiped"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "turn.failed" in logged
    assert "geheime" not in logged and "exploded" not in logged and str(CLIENT_CHAT) not in logged


async def test_when_even_the_apology_cannot_be_stored_the_channel_gets_a_text(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    await enrolled(world)

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("broken")

    monkeypatch.setattr(dialogues, "resume", broken)
    monkeypatch.setattr(world.service, "_reply", broken)
    handled = await world.service.handle(world.inbound(CLIENT_CHAT, "text", text="hoi"))
    assert handled.direct is not None and handled.direct.startswith("Sorry")


@pytest.mark.parametrize("kind", ["text", "choice", "command"])
async def test_while_the_database_is_down_her_update_goes_back_to_the_channel(
    world: World, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """No connection at all: nothing can be stored, not even an apology, so the channel gets
    the error (a webhook answers 503 and Telegram delivers the update again); once the
    database is back, the same update is handled as new."""
    from sqlalchemy.exc import OperationalError

    await enrolled(world)
    await world.command("checkin")
    pressed = world.to_client()[-1].button_ids[0]
    fields: dict[str, Any] = {
        "text": {"text": "hoi"},
        "choice": {"choice_id": pressed},
        "command": {"command": "help"},
    }[kind]
    inbound = world.inbound(CLIENT_CHAT, kind, **fields)  # type: ignore[arg-type]

    def refused(*args: object, **kwargs: object) -> object:
        raise OperationalError("connect", {}, ConnectionRefusedError("refused"))

    monkeypatch.setattr(world.care.engine.pool, "connect", refused)
    with pytest.raises(OperationalError):
        await world.service.handle(inbound)
    monkeypatch.undo()
    assert world.to_client() == []
    handled = await world.service.handle(inbound)
    assert not handled.duplicate and handled.direct is None
    assert len(world.to_client()) >= 1


async def test_duplicate_updates_are_handled_once(world: World) -> None:
    await enrolled(world)
    inbound = world.inbound(CLIENT_CHAT, "command", command="checkin")
    first = await world.service.handle(inbound)
    second = await world.service.handle(inbound)
    assert (first.duplicate, second.duplicate) == (False, True)
    assert len(world.to_client()) == 1


async def test_appointment_placeholders_in_her_language_and_time_zone(world: World) -> None:
    await enrolled(world)
    # Thu 5 March, 15:00 CET
    add_appointment(world, OFFICE_TIME + timedelta(days=2, hours=5), place="Buurthuis")
    await world.service.start_flow(world.client_id, "appointment_reminder")
    text = world.to_client()[0].text
    assert "donderdag 5 maart om 15:00" in text
    assert "Buurthuis" in text


def test_office_hours_follow_the_settings(care_ctx: Care) -> None:
    settings = care_ctx.settings
    assert in_office_hours(OFFICE_TIME, settings)  # Tuesday 10:00 in Amsterdam
    assert not in_office_hours(OFFICE_TIME + timedelta(hours=9), settings)  # 19:00
    assert not in_office_hours(OFFICE_TIME + timedelta(days=4), settings)  # Saturday


async def test_out_of_office_hours_she_is_told_the_answer_may_come_later(world: World) -> None:
    await enrolled(world)
    world.clock.advance(timedelta(hours=12))  # type: ignore[attr-defined]
    await world.text("ik wil dood")
    texts = " ".join(s.text for s in world.to_client())
    assert "buiten kantoortijd" in texts
    assert "0800-0113" in texts


async def test_auto_delete_removes_messages_older_than_her_hours(world: World) -> None:
    await enrolled(world)
    with world.care.sessions.begin() as session:
        client = session.get(Client, world.client_id)
        assert client is not None
        client.auto_delete_hours = 6
        before = session.scalar(select(func.count()).select_from(ChatMessage))
    world.clock.advance(timedelta(hours=7))  # type: ignore[attr-defined]
    await world.text("hoi")
    queued = await world.service.auto_delete()
    assert queued == before
    deletes = [s for s in world.to_client() if s.payload["type"] == "delete"]
    assert len(deletes) == 1 and len(deletes[0].payload["message_ids"]) == before
    assert await world.service.auto_delete() == 0, "nothing twice"


async def test_wipe_forgets_her_nickname(world: World) -> None:
    await world.enroll()
    await world.press(world.to_client()[-1].button("Nederlands"))
    await world.press(world.to_client()[-1].button("Ja, prima"))
    await world.text("Sam")
    await world.command("checkin")
    assert world.to_client()[-1].text == "Hoi Sam! Hoe gaat het vandaag?"
    await world.command("wissen")
    await world.press(world.to_client()[-1].button("Ja, alles wissen"))
    deleted = [s for s in world.to_client() if s.payload["type"] == "delete"]
    assert deleted, "the chat is deleted"
    await world.command("checkin")
    assert world.to_client()[-1].text == "Hoi! Hoe gaat het vandaag?"


async def test_her_text_never_reaches_the_logs(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await enrolled(world)
    await world.text("ik wil niet meer leven, geheim woord zebra")
    await world.command("checkin")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "zebra" not in logged and str(CLIENT_CHAT) not in logged
    assert "turn.handled" in logged


async def test_her_reply_goes_to_the_sender_in_her_turn_whatever_waits_for_others(
    world: World,
) -> None:
    """A message still waiting for another girl does not hold hers back: the turn hands her
    reply to the sender in its own transaction (no claim, no wait for the next look)."""
    await enrolled(world)
    with world.care.sessions.begin() as session:
        # What onboarding sent her is delivered (nothing sends in this world).
        session.execute(update(OutboxMessage).values(status=OutboxStatus.SENT))
    other = invite_another(world, "iris-2")
    sender = OutboxSender(world.care, FakeChannel(), options=SenderOptions(poll_seconds=30))
    await sender.start()
    await asyncio.sleep(0.1)  # its first look is over; it looks again in 30 s
    with world.care.sessions.begin() as session:  # a message for her waits (no wake)
        her = session.get(Client, other.id)
        assert her is not None
        outbox.enqueue(
            session, world.care.vault, her, {"type": "text", "text": "hoi"}, kind="reply"
        )
    taken: list[tuple[int, int]] = []
    real_take = sender.take

    def take(session: Session, rows: Sequence[OutboxMessage]) -> list[Any]:
        mine = real_take(session, rows)
        taken.append((len(rows), len(mine)))
        return mine

    sender.take = take  # type: ignore[method-assign]
    world.service.set_handoff(sender)
    try:
        await world.command("checkin")
    finally:
        world.service.set_handoff(None)
        await sender.stop(flush=False)
    assert taken == [(1, 1)], "her reply was handed over in her turn"


@pytest.mark.parametrize("backend", ["postgres"])
async def test_her_turn_is_two_statements_between_begin_and_commit(
    world: World, tmp_path: Path
) -> None:
    """Her text's turn, as psycopg's protocol trace shows it: BEGIN; her row locked (her
    update and message recorded, her state read with it); her reply written (her new state
    riding along); COMMIT: four waits for the database."""
    await enrolled(world)
    trace = tmp_path / "trace.txt"
    with tracing(world.care.engine, trace):
        await world.text("dank je")
    sent = client_messages(trace)
    kinds = [fields[2] for fields in sent]
    assert kinds.count("Sync") == 2, "two statements: her row's lock, her reply"
    assert round_trips(trace) == 4, "BEGIN, two statements, COMMIT"
    assert sum("COMMIT" in " ".join(fields) for fields in sent) == 1
    assert len(world.to_client()) == 1, "her reply was written, and committed"


async def test_worker_replies_and_alerts_are_for_the_worker(world: World) -> None:
    await enrolled(world)
    await world.text("help ik ben in gevaar")
    alerts = world.to_worker()
    assert alerts and alerts[0].to is RecipientKind.WORKER
    assert alerts[0].priority == OutboxPriority.CRITICAL
    assert alerts[0].button_ids[0].startswith("esc:ack:")


async def test_old_update_ids_are_forgotten_after_a_week(world: World) -> None:
    await enrolled(world)
    world.clock.advance(timedelta(days=8))  # type: ignore[attr-defined]
    recent = await world.command("checkin")
    dropped = await world.service.forget_old_updates()
    assert dropped >= 3
    with world.care.sessions() as session:
        kept = session.scalars(select(ProcessedUpdate.update_id)).all()
    assert kept == [recent.update_id]


async def test_new_clients_get_the_configured_auto_delete(care_ctx: Care) -> None:
    settings = care_ctx.settings.model_copy(
        update={"privacy": care_ctx.settings.privacy.model_copy(update={"auto_delete_hours": 24})}
    )
    import dataclasses

    world = make_world(dataclasses.replace(care_ctx, settings=settings))
    await world.enroll()
    assert world.client().auto_delete_hours == 24


async def test_a_new_code_in_a_linked_chat_moves_the_chat_to_its_person(world: World) -> None:
    await enrolled(world)
    other = invite_another(world, "maan-2")
    await world.command("start", other.code)
    assert world.to_client()[0].text == "Hoi! 👋 Fijn dat je er bent."
    with world.care.sessions() as session:
        old = session.get(Client, world.client_id)
        new = session.get(Client, other.id)
        assert old is not None and new is not None
        assert old.chat_index is None and new.chat_index is not None
        assert new.status is ClientStatus.ACTIVE
    # An old, used code clicked again is a plain /start for whoever has the chat now.
    await world.command("start", other.code)
    assert world.to_client()[0].text == "Hoi! 👋 Fijn dat je er bent."


def test_a_turns_context_reads_a_group_only_when_asked_and_once() -> None:
    reads: list[str] = []

    def worker() -> dict[str, str | bool]:
        reads.append("worker")
        return {"worker_name": "Noor"}

    def appointment() -> dict[str, str | bool]:
        reads.append("appointment")
        return {"appointment_time": "di 3 dec 10:00", "has_appointment": True}

    context = LazyContext(
        {"alias": "Sam"},
        {("worker_name",): worker, ("appointment_time", "has_appointment"): appointment},
    )
    assert context["alias"] == "Sam" and reads == []
    assert context["worker_name"] == "Noor" and context.get("worker_name") == "Noor"
    assert reads == ["worker"], "read once, when a text asked for it"
    assert context.get("unknown") is None
    context.overlay({"appointment_time": "morgen 9:00"})
    assert context["has_appointment"] is True
    assert context["appointment_time"] == "morgen 9:00", "a reminder's own value wins"
    assert sorted(context) == ["alias", "appointment_time", "has_appointment", "worker_name"]
    assert len(context) == 4


async def test_a_text_without_placeholders_does_not_read_her_appointments(
    world: World, care_ctx: Care
) -> None:
    await enrolled(world)
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(statement)

    event.listen(care_ctx.engine, "before_cursor_execute", seen)
    try:
        await world.text("dank je")
    finally:
        event.remove(care_ctx.engine, "before_cursor_execute", seen)
    assert world.to_client(), "she got an answer"
    assert statements, "the turn ran"
    assert not [s for s in statements if "FROM appointments" in s]


async def test_a_double_tap_is_one_answer(world: World, care_ctx: Care) -> None:
    """Two presses of the same button at once (a double tap): her turns take turns on her row,
    so the second finds the question answered and gets the gentle re-ask. The first turn holds
    her row a moment after it locked it, so that the second surely waits for it (on
    PostgreSQL it must then read her session as the first left it, not as it was when it
    began to wait)."""
    await enrolled(world)
    await world.command("checkin")
    button = world.to_client()[-1].button("Niet zo goed")
    locks = itertools.count()
    locked = threading.Event()

    def hold_the_first(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "FOR UPDATE" in statement and next(locks) == 0:
            locked.set()
            time.sleep(0.3)

    def tap() -> Any:
        return world.service.handle(world.inbound(CLIENT_CHAT, "choice", choice_id=button))

    event.listen(care_ctx.engine, "after_cursor_execute", hold_the_first)
    try:
        first = asyncio.create_task(tap())
        if world.care.engine.dialect.name == "postgresql":
            assert await asyncio.to_thread(locked.wait, 10), "the first tap locked her row"
        await asyncio.gather(first, tap())
    finally:
        event.remove(care_ctx.engine, "after_cursor_execute", hold_the_first)
    texts = [sent.text for sent in world.to_client()]
    assert sum("niet zo goed gaat" in text for text in texts) == 1, texts
    assert sum(text.startswith("Die knop hoort bij een eerder bericht") for text in texts) == 1


async def test_how_she_is_said_unasked_is_her_check_in_answer(world: World) -> None:
    await enrolled(world)
    await world.text("ik voel me echt slecht vandaag")
    texts = [sent.text for sent in world.pending()]
    assert texts[0] == "Wat rot dat het niet zo goed gaat. Fijn dat je het eerlijk zegt."
    assert texts[-1] == "Wil je dat Anna contact met je opneemt?"
    with world.care.sessions() as session:
        moods = session.scalars(select(CheckIn.mood).where(CheckIn.client_id == world.client_id))
        assert list(moods) == ["bad"]


def her_checkins(world: World) -> list[tuple[CheckInStatus, str | None, bool | None]]:
    with world.care.sessions() as session:
        rows = session.execute(
            select(CheckIn.status, CheckIn.mood, CheckIn.feels_safe)
            .where(CheckIn.client_id == world.client_id)
            .order_by(CheckIn.id)
        )
        return [(status, mood, safe) for status, mood, safe in rows]


async def test_her_answers_go_into_the_check_in_that_was_sent(world: World) -> None:
    await enrolled(world)
    now = world.clock.now()
    with world.care.sessions.begin() as session:
        session.add(
            CheckIn(client_id=world.client_id, due_at=now, sent_at=now, status=CheckInStatus.SENT)
        )
    assert await world.service.start_flow(world.client_id, "checkin")
    await world.press(world.to_client()[-1].button("Goed"))
    await world.press(world.to_client()[-1].button("Ja"))
    assert her_checkins(world) == [(CheckInStatus.ANSWERED, "good", True)]


async def test_a_second_check_in_she_asks_for_is_a_new_one(world: World) -> None:
    """Each mood begins a check-in of its own; her safe answer goes into the one she is
    answering, also an hour later."""
    await enrolled(world)
    await world.command("checkin")
    await world.press(world.to_client()[-1].button("Goed"))
    await world.press(world.to_client()[-1].button("Ja"))
    world.clock.advance(timedelta(minutes=30))
    await world.command("checkin")
    await world.press(world.to_client()[-1].button("Gaat wel"))
    world.clock.advance(timedelta(hours=1))
    await world.press(world.to_client()[-1].button("Ja"))
    assert her_checkins(world) == [
        (CheckInStatus.ANSWERED, "good", True),
        (CheckInStatus.ANSWERED, "okay", True),
    ]


def her_escalations(world: World) -> list[str]:
    with world.care.sessions() as session:
        return list(
            session.scalars(
                select(Escalation.reason)
                .where(Escalation.client_id == world.client_id)
                .order_by(Escalation.id)
            )
        )


NO_ANSWER_SAID = (
    "Ik hoorde niks meer van je. Daarom heb ik Anna een seintje gegeven. Ben je in gevaar? Bel 112."
)
"""What the safety check tells her when her silence alerted Anna."""
SAFETY_QUESTION = "Ik wil zeker weten dat het goed met je gaat. Zal ik Anna nu een seintje geven?"


async def asked_if_anna_may_be_alerted(world: World) -> Sent:
    """She writes something that may mean danger; the safety check asks her (30 minutes of
    silence alert Anna). Returns the question."""
    await enrolled(world)
    await world.text("ik weet niet waar ik ben")
    (question,) = world.to_client()
    assert question.text == SAFETY_QUESTION
    return question


async def test_a_safety_check_she_does_not_answer_alerts_her_worker_once(world: World) -> None:
    """The safety check waits 30 minutes for her (`timeout_minutes`); then her worker is
    alerted gently and she is told so. It happens once, however often the job looks."""
    await enrolled(world)
    assert await world.service.start_flow(world.client_id, "safety_check")
    assert world.to_client()[-1].text.startswith("Ik wil zeker weten dat het goed met je gaat")
    world.clock.advance(timedelta(minutes=29))
    assert await world.service.fire_timeouts() == 0
    assert world.pending() == [] and her_escalations(world) == []
    world.clock.advance(timedelta(minutes=2))
    assert await world.service.fire_timeouts() == 1
    assert her_escalations(world) == ["safety_check_no_answer"]
    assert [sent.text for sent in world.to_client()] == [NO_ANSWER_SAID]
    alerts = world.to_worker()
    assert [a.kind for a in alerts] == ["alert"]
    assert "schreef iets wat op gevaar wijst en antwoordt niet meer" in alerts[0].text
    world.clock.advance(timedelta(hours=2))
    assert await world.service.fire_timeouts() == 0
    assert world.pending() == [] and her_escalations(world) == ["safety_check_no_answer"]


@pytest.mark.parametrize("scheduled", ["checkin", "appointment_reminder"])
async def test_a_scheduled_message_never_takes_the_place_of_a_safety_question(
    world: World, scheduled: str
) -> None:
    """She wrote something that may mean danger and is asked "shall I alert Anna?" (30
    minutes of silence alert Anna). A check-in or reminder due meanwhile is held back (it
    would have replaced the question, and the alert with it): nothing new on her screen, her
    worker sees why it was not sent, and 30 minutes of silence still alert Anna. Once the
    question is settled, scheduled messages go out again."""
    await asked_if_anna_may_be_alerted(world)
    add_appointment(world, OFFICE_TIME + timedelta(days=1))
    world.clock.advance(timedelta(minutes=10))
    assert not await world.service.start_flow(world.client_id, scheduled, dedupe_key="due:1")
    assert world.to_client() == []
    with world.care.sessions() as session:
        skipped = [
            (s.kind, s.reason, s.ref) for s in outbox.skipped_sends(session, world.client_id)
        ]
    assert skipped == [(scheduled, "alert_waits", "due:1")]
    world.clock.advance(timedelta(minutes=21))
    assert await world.service.fire_timeouts() == 1
    assert her_escalations(world) == ["safety_check_no_answer"]
    assert [sent.text for sent in world.to_client()] == [NO_ANSWER_SAID]
    assert [alert.kind for alert in world.to_worker()] == ["alert"]
    assert await world.service.start_flow(world.client_id, scheduled, dedupe_key="due:2")
    assert len(world.to_client()) == 1


def buurthuis_at_three(world: World) -> int:
    """Her appointment at the Buurthuis, Tuesday 15:00 in Amsterdam (five hours after
    `OFFICE_TIME`), booked by Anna; its id."""
    from reminders.appointments import create_appointment

    with world.care.sessions.begin() as session:
        client = session.get_one(Client, world.client_id)
        worker = session.get_one(Worker, world.worker_id)
        starts = OFFICE_TIME + timedelta(hours=5)
        return create_appointment(
            session, world.care, client, worker, starts, "Buurthuis", now=world.clock.now()
        ).id


async def test_her_appointment_reminder_comes_once_the_safety_question_is_settled(
    world: World,
) -> None:
    """The 2-hour reminder falls due while she is asked "shall I alert Anna?": nothing new on
    her screen, the reminder job moves to just after the question's 30 minutes; she answers
    "not now" meanwhile, and then the reminder reaches her (nothing recorded as not sent)."""
    from reminders import jobstore
    from reminders.appointments import send_reminder

    await enrolled(world)
    appointment_id = buurthuis_at_three(world)
    world.clock.advance(timedelta(hours=2, minutes=50))  # 12:50
    await world.text("ik weet niet waar ik ben")
    question = world.to_client()[-1]
    world.clock.advance(timedelta(minutes=10))  # 13:00, two hours before
    assert not await send_reminder(
        world.care, world.service, appointment_id, 120, world.clock.now()
    )
    assert world.to_client() == []
    with world.care.sessions() as session:
        moved = jobstore.job_times(session, "appt:")[f"appt:{appointment_id}:120"]
    assert moved == OFFICE_TIME + timedelta(hours=3, minutes=22)  # her 30 minutes, and 2
    await world.press(question.button("Nee, nu niet"))
    assert world.to_client()[-1].text.startswith("Oké, ik doe niks")
    world.clock.advance(timedelta(minutes=22))
    assert await send_reminder(world.care, world.service, appointment_id, 120, world.clock.now())
    (reminder,) = world.to_client()
    assert "Buurthuis" in reminder.text
    assert her_escalations(world) == []
    with world.care.sessions() as session:
        assert outbox.skipped_sends(session, world.client_id) == []


async def test_a_safety_question_that_begins_as_her_reminder_runs_still_moves_it(
    world: World,
) -> None:
    """Her reminder job runs at 13:00, and in the same moment she writes something that may
    mean danger and is asked "shall I alert Anna?". Whichever comes first, the reminder is
    not lost: it did not replace the question, nothing is recorded as not sent, and its job
    moves to just after the question's 30 minutes. (It was skipped for good when the
    question came between the reminder's look at her and its start.)"""
    from reminders import jobstore
    from reminders.appointments import send_reminder

    await enrolled(world)
    appointment_id = buurthuis_at_three(world)
    world.clock.advance(timedelta(hours=3))  # 13:00, two hours before
    service = world.service

    class SheWritesFirst:
        """The service, as her danger text is handled just before the reminder starts."""

        def __getattr__(self, name: str) -> Any:
            return getattr(service, name)

        async def start_flow(self, *args: Any, **kwargs: Any) -> bool:
            await world.text("ik weet niet waar ik ben")
            return await service.start_flow(*args, **kwargs)

    assert not await send_reminder(
        world.care, SheWritesFirst(), appointment_id, 120, world.clock.now()
    )
    assert [sent.text for sent in world.to_client()] == [SAFETY_QUESTION]
    with world.care.sessions() as session:
        assert outbox.skipped_sends(session, world.client_id) == []
        moved = jobstore.job_times(session, "appt:")[f"appt:{appointment_id}:120"]
    assert moved == OFFICE_TIME + timedelta(hours=3, minutes=32)  # her 30 minutes, and 2


async def test_a_safety_question_whose_time_out_was_given_up_holds_nothing_back(
    world: World,
) -> None:
    """When her safety check's time-out failed for ten minutes, the bot gave up on it (her
    worker got an urgent alert then) and left the question waiting: no alert is still to
    come, so check-ins go out again instead of being held back for good."""
    await asked_if_anna_may_be_alerted(world)
    with world.care.sessions.begin() as session:  # what giving up leaves (`_NO_TIMEOUT`)
        session.execute(
            update(DialogueSession)
            .where(DialogueSession.client_id == world.client_id)
            .values(timeout_at=None)
        )
    asked: list[datetime] = []

    def wait(until: datetime) -> bool:
        asked.append(until)
        return True

    assert await world.service.start_flow(world.client_id, "checkin", defer=wait)
    assert asked == [], "nothing holds the check-in back, so there is nothing to wait for"
    assert world.to_client()[-1].text == "Hoi! Hoe gaat het vandaag?"


async def test_a_scheduled_message_still_replaces_a_question_whose_silence_alerts_nobody(
    world: World,
) -> None:
    """Her unanswered check-in question ("how are you?") only notes her silence: an
    appointment reminder due meanwhile goes out as before, in its place."""
    await enrolled(world)
    add_appointment(world, OFFICE_TIME + timedelta(days=1))
    assert await world.service.start_flow(world.client_id, "checkin")
    assert len(world.to_client()) == 1
    assert await world.service.start_flow(world.client_id, "appointment_reminder")
    assert len(world.to_client()) == 1
    with world.care.sessions() as session:
        assert outbox.skipped_sends(session, world.client_id) == []


@pytest.mark.parametrize(
    ("command", "then"),
    [
        ("help", "Waarmee kan ik je helpen?"),
        ("taal", "In welke taal wil je chatten?"),
        ("checkin", "Hoi! Hoe gaat het vandaag?"),
        ("pauze", "Wil je even pauze?"),
        ("stop", "Wil je stoppen met deze app?"),
    ],
)
async def test_a_safety_question_she_leaves_for_a_command_still_alerts_anna(
    world: World, command: str, then: str
) -> None:
    """Asked "shall I alert Anna?", she types a command and then goes quiet in what it asks.
    Her worker is still alerted when the question's 30 minutes are up (before, the command's
    flow took the question's place and the alert was lost), and she is asked nothing more:
    that question is not hers to see now."""
    await asked_if_anna_may_be_alerted(world)
    world.clock.advance(timedelta(minutes=5))
    await world.command(command)
    assert world.to_client()[0].text.startswith(then)
    world.clock.advance(timedelta(minutes=24))
    await world.service.fire_timeouts()
    assert her_escalations(world) == []
    world.clock.advance(timedelta(minutes=2))
    await world.service.fire_timeouts()
    assert her_escalations(world) == ["safety_check_no_answer"]
    assert [alert.kind for alert in world.to_worker()] == ["alert"]
    said = " ".join(sent.text for sent in world.to_client())
    assert "seintje" not in said and "Zal ik Anna" not in said, said
    world.clock.advance(timedelta(hours=2))
    await world.service.fire_timeouts()
    assert her_escalations(world) == ["safety_check_no_answer"], "alerted once"


async def test_when_the_command_is_done_the_safety_question_is_asked_again(
    world: World,
) -> None:
    """She switches the language in the middle of the safety check: once that is done, the
    question is asked again in her new language with fresh buttons, keeping its first
    30 minutes; silence then alerts Anna and tells her so, as it always did."""
    question = await asked_if_anna_may_be_alerted(world)
    world.clock.advance(timedelta(minutes=10))
    await world.command("taal")
    await world.press(world.to_client()[-1].button("English"))
    said, again = world.to_client()
    assert said.text == "Okay, we'll chat in English."
    assert again.text == (
        "Back to my question:\n\nI want to be sure you're okay. Do you want me to alert Anna now?"
    )
    labels = [label for row in again.payload["buttons"] for _, label in row]
    assert labels == ["Yes, please", "No, not now", "I'm in danger"]
    assert set(again.button_ids).isdisjoint(question.button_ids), "fresh buttons"
    world.clock.advance(timedelta(minutes=19))
    assert await world.service.fire_timeouts() == 0
    world.clock.advance(timedelta(minutes=2))  # 31 minutes after she was first asked
    assert await world.service.fire_timeouts() == 1
    assert her_escalations(world) == ["safety_check_no_answer"]
    assert [sent.text for sent in world.to_client()] == [
        "I didn't hear back from you, so I have alerted Anna. If you are in danger, call 112."
    ]


async def test_a_paused_girl_who_writes_gets_the_safety_question_back_too(
    world: World,
) -> None:
    """Her pause holds back what the bot would send of itself, not her own conversation:
    paused, she writes something that may mean danger, looks at the help menu, and the
    question comes back when she is done there."""
    await enrolled(world)
    with world.care.sessions.begin() as session:
        session.get_one(Client, world.client_id).status = ClientStatus.PAUSED
    await world.text("ik weet niet waar ik ben")
    world.to_client()
    await world.command("help")
    await world.press(world.to_client()[-1].button("Iets anders"))
    assert world.to_client()[-1].text.startswith("Even terug naar mijn vraag van net:")


async def test_the_question_asked_again_leaves_every_button_shown_before_stale(
    world: World,
) -> None:
    """The question comes back on a turn after all she was asked on the way: a button from
    the help flow, shown before the question came back, stays stale even when that same
    question of the help flow is asked again later."""
    await asked_if_anna_may_be_alerted(world)
    await world.command("help")
    await world.press(world.to_client()[-1].button("Contact met Anna"))
    (contact,) = world.to_client()
    assert contact.text.startswith("Zal ik Anna vragen om contact met je op te nemen?")
    await world.press(contact.button("Nee, toch niet"))
    again = world.to_client()[-1]
    assert again.text.startswith("Even terug naar mijn vraag van net:")
    await world.press(again.button("Nee, nu niet"))
    world.to_client()
    await world.text("ik wil met Anna praten")
    assert world.to_client()[-1].text.startswith("Zal ik Anna vragen om contact")
    await world.press(contact.button("Ja, graag"))  # on the message from before
    assert world.to_client()[-1].text.startswith("Die knop hoort bij een eerder bericht.")
    assert her_escalations(world) == []


async def test_the_safety_question_she_left_can_still_be_answered_with_its_buttons(
    world: World,
) -> None:
    """She opened the help menu instead of answering, then taps "No, not now" on the safety
    question after all: that is her answer, and Anna is not alerted."""
    question = await asked_if_anna_may_be_alerted(world)
    await world.command("help")
    world.to_client()
    await world.press(question.button("Nee, nu niet"))
    assert world.to_client()[-1].text.startswith("Oké, ik doe niks")
    world.clock.advance(timedelta(hours=1))
    assert await world.service.fire_timeouts() == 0
    assert her_escalations(world) == [] and world.to_worker() == []


async def test_an_alert_raised_meanwhile_settles_the_safety_question_she_left(
    world: World,
) -> None:
    """From the help menu she asks Anna to contact her: Anna is alerted now, so the safety
    question she left raises nothing more when its 30 minutes are up, and is not asked
    again."""
    await asked_if_anna_may_be_alerted(world)
    await world.command("help")
    await world.press(world.to_client()[-1].button("Contact met Anna"))
    await world.press(world.to_client()[-1].button("Ja, graag"))
    await world.press(world.to_client()[-1].button("Nee, het kan wachten"))
    said = " ".join(sent.text for sent in world.to_client())
    assert "Zal ik Anna nu een seintje geven" not in said
    assert her_escalations(world) == ["help_contact"]
    world.clock.advance(timedelta(hours=1))
    assert await world.service.fire_timeouts() == 0
    assert her_escalations(world) == ["help_contact"]


async def test_the_question_she_went_to_keeps_its_own_time_out(world: World) -> None:
    """She asks for a check-in in the middle of the safety check and answers neither: Anna is
    alerted at the safety question's 30 minutes, and the check-in still times out a day
    after it was asked (not a day after the alert)."""
    await asked_if_anna_may_be_alerted(world)
    world.clock.advance(timedelta(minutes=5))
    await world.command("checkin")
    world.clock.advance(timedelta(minutes=26))
    assert await world.service.fire_timeouts() == 1
    assert her_escalations(world) == ["safety_check_no_answer"]
    world.clock.advance(timedelta(days=1, minutes=-27))  # a minute before her day is up
    assert await world.service.fire_timeouts() == 0
    world.clock.advance(timedelta(minutes=2))
    assert await world.service.fire_timeouts() == 1, "the check-in's own day is up"


async def test_her_duress_word_settles_the_safety_question_she_left(world: World) -> None:
    """In the help menu, away from the safety check, she has to send the duress word: the
    silent alarm reaches Anna, and nothing of the safety check follows, for her or for Anna."""
    await asked_if_anna_may_be_alerted(world)
    with world.care.sessions.begin() as session:
        her = session.get_one(Client, world.client_id)
        org = session.get_one(Organisation, her.org_id)
        directory.set_duress_word(session, world.care.keyring, org, "paraplu", "test")
    await world.command("help")
    world.to_client()
    await world.text("paraplu")
    assert [sent.text for sent in world.to_client()] == ["Oké, top! 👍"]
    world.clock.advance(timedelta(hours=1))
    assert await world.service.fire_timeouts() == 0
    assert her_escalations(world) == ["duress"]
    await world.text("hoi")
    said = " ".join(sent.text for sent in world.to_client())
    assert "Zal ik Anna" not in said, said


async def test_a_safety_question_open_when_she_links_a_new_phone_still_alerts_anna(
    world: World,
) -> None:
    """She is asked "shall I alert Anna?" and then links a new phone with a new code: the
    introduction starts there, and the question's 30 minutes of silence still alert Anna."""
    await asked_if_anna_may_be_alerted(world)
    with world.care.sessions.begin() as session:
        her = session.get_one(Client, world.client_id)
        code = directory.reissue_client_code(session, world.care.vault, her)
    await world.command("start", code, chat_id=CLIENT_CHAT + 1)
    assert world.to_client()[0].text == "Hoi! 👋 Fijn dat je er bent."
    world.clock.advance(timedelta(minutes=31))
    await world.service.fire_timeouts()
    assert her_escalations(world) == ["safety_check_no_answer"]


async def test_after_a_wipe_the_safety_question_is_not_put_back_on_her_screen(
    world: World,
) -> None:
    """She wipes the chat in the middle of the safety check (someone may be looking): the
    question does not come back after the wipe, and Anna is still alerted when its 30
    minutes are up, without a word to her."""
    await asked_if_anna_may_be_alerted(world)
    await world.command("wissen")
    await world.press(world.to_client()[-1].button("Ja, alles wissen"))
    assert [sent.text for sent in world.to_client() if sent.kind != "delete"] == ["👍"]
    world.clock.advance(timedelta(minutes=31))
    await world.service.fire_timeouts()
    assert her_escalations(world) == ["safety_check_no_answer"]
    assert world.to_client() == []


async def test_after_her_duress_word_nothing_she_was_asked_follows_up_on_her_screen(
    world: World,
) -> None:
    """She is in the safety check ("shall I alert Anna?", 30 minutes to answer) when she has
    to send the duress word: whoever reads along sees an ordinary reply, and after it neither
    the question's time-out ("I have alerted Anna") nor the question asked again."""
    await enrolled(world)
    with world.care.sessions.begin() as session:
        her = session.get_one(Client, world.client_id)
        org = session.get_one(Organisation, her.org_id)
        directory.set_duress_word(session, world.care.keyring, org, "paraplu", "test")
    assert await world.service.start_flow(world.client_id, "safety_check")
    world.to_client()
    await world.text("paraplu")
    assert [sent.text for sent in world.to_client()] == ["Oké, top! 👍"]
    assert her_escalations(world) == ["duress"]
    assert ["STIL ALARM" in alert.text for alert in world.to_worker()] == [True]
    world.clock.advance(timedelta(hours=2))
    assert await world.service.fire_timeouts() == 0
    assert world.pending() == [] and her_escalations(world) == ["duress"]
    await world.text("hoi")
    said = " ".join(sent.text for sent in world.to_client())
    assert "seintje" not in said and "Anna" not in said, said


def break_time_outs(monkeypatch: pytest.MonkeyPatch) -> None:
    """What follows an unanswered question fails (a fault in the engine or the content)."""
    real = dialogues.resume

    def resume(state: Any, given: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(given, dialogues.TimeoutInput):
            raise RuntimeError("a fault after the question")
        return real(state, given, *args, **kwargs)

    monkeypatch.setattr(dialogues, "resume", resume)


async def test_a_time_out_that_keeps_failing_is_given_up_and_her_worker_alerted(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Her safety check waited 30 minutes, and what follows fails. The job tries again every
    minute; after ten minutes of failing her worker gets an urgent alert instead (once),
    she is told nothing, and the job stops trying. Her next answer goes on from the
    question."""
    await enrolled(world)
    assert await world.service.start_flow(world.client_id, "safety_check")
    question = world.to_client()[-1]
    world.pending()
    break_time_outs(monkeypatch)
    world.clock.advance(timedelta(minutes=31))
    assert await world.service.fire_timeouts() == 0
    world.clock.advance(timedelta(minutes=8))
    assert await world.service.fire_timeouts() == 0
    assert world.pending() == [] and her_escalations(world) == []
    world.clock.advance(timedelta(minutes=1))
    assert await world.service.fire_timeouts() == 1
    assert her_escalations(world) == ["timeout_failed"]
    assert world.to_client() == []
    alerts = world.to_worker()
    assert [a.kind for a in alerts] == ["alert"]
    assert "daarna liep de app vast. Kijk even hoe het met haar gaat" in alerts[0].text
    with world.care.sessions() as session:
        severity = session.scalars(select(Escalation.severity)).one()
    assert severity == Severity.HIGH
    world.clock.advance(timedelta(hours=2))
    assert await world.service.fire_timeouts() == 0
    assert world.pending() == [] and her_escalations(world) == ["timeout_failed"]
    monkeypatch.undo()
    await world.press(question.button("Nee, nu niet"))
    assert world.to_client(), "her answer is taken up where she left off"


async def test_a_time_out_that_fails_for_a_moment_goes_through_as_usual(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    await enrolled(world)
    assert await world.service.start_flow(world.client_id, "safety_check")
    world.pending()
    break_time_outs(monkeypatch)
    world.clock.advance(timedelta(minutes=31))
    assert await world.service.fire_timeouts() == 0
    monkeypatch.undo()
    world.clock.advance(timedelta(minutes=5))
    assert await world.service.fire_timeouts() == 1
    assert her_escalations(world) == ["safety_check_no_answer"]


@pytest.mark.parametrize(
    ("her_hours", "held_until"),
    [(None, (8, 0)), ("23:00-07:30", None), ("21:00-06:45", (6, 45))],
)
async def test_what_a_time_out_tells_her_waits_for_the_end_of_her_quiet_hours(
    world: World, her_hours: str | None, held_until: tuple[int, int] | None
) -> None:
    """She went silent in the evening and the time-out comes at 22:16 her time: her worker is
    alerted at once, but her phone stays silent until her quiet hours (the organisation's
    22:00-08:00 unless she chose her own) are over."""
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    amsterdam = ZoneInfo("Europe/Amsterdam")
    await enrolled(world)
    with world.care.sessions.begin() as session:
        her = session.get_one(Client, world.client_id)
        her.quiet_hours = her_hours
    world.clock.set(datetime(2026, 3, 3, 21, 45, tzinfo=amsterdam))  # type: ignore[attr-defined]
    assert await world.service.start_flow(world.client_id, "safety_check")
    world.pending()
    world.clock.advance(timedelta(minutes=31))
    assert await world.service.fire_timeouts() == 1
    with world.care.sessions() as session:
        rows = session.scalars(
            select(OutboxMessage).where(
                OutboxMessage.status == OutboxStatus.PENDING, OutboxMessage.id.not_in(world.seen)
            )
        ).all()
        wait = {row.recipient_kind: row.not_before for row in rows}
    assert len(rows) == 2, "one message to her, one alert to her worker"

    def at_once(moment: datetime) -> bool:  # (an unheld row waits for nothing: written now)
        return abs(moment - datetime.now(UTC)) < timedelta(minutes=1)

    assert at_once(wait[RecipientKind.WORKER]), "her worker is told at once"
    if held_until is None:
        assert at_once(wait[RecipientKind.CLIENT])
    else:
        expected = datetime(2026, 3, 4, *held_until, tzinfo=amsterdam)
        assert wait[RecipientKind.CLIENT] == expected


def test_quiet_hours_end_in_her_time_zone_across_midnight_and_clock_changes() -> None:
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from care.settings import TimeWindow

    amsterdam = ZoneInfo("Europe/Amsterdam")
    night = TimeWindow.parse("22:00-08:00")
    at = datetime(2026, 3, 28, 23, 30, tzinfo=amsterdam)  # the night clocks go forward
    assert night.ends_after(at, amsterdam) == datetime(2026, 3, 29, 6, 0, tzinfo=UTC)
    early = datetime(2026, 3, 29, 7, 59, tzinfo=amsterdam)
    assert night.ends_after(early, amsterdam) == datetime(2026, 3, 29, 8, 0, tzinfo=amsterdam)
    assert night.ends_after(datetime(2026, 3, 29, 8, 0, tzinfo=amsterdam), amsterdam) is None
    assert night.ends_after(datetime(2026, 3, 29, 21, 59, tzinfo=amsterdam), amsterdam) is None
    siesta = TimeWindow.parse("13:00-15:00")
    assert siesta.ends_after(datetime(2026, 7, 1, 14, 0, tzinfo=amsterdam), amsterdam) == (
        datetime(2026, 7, 1, 15, 0, tzinfo=amsterdam)
    )
    with pytest.raises(ValueError, match="22:00-08:00"):
        TimeWindow.parse("22:00")
    with pytest.raises(ValueError, match="HH:MM"):
        TimeWindow.parse("22-08")


async def test_a_question_she_answered_does_not_time_out(world: World) -> None:
    await enrolled(world)
    assert await world.service.start_flow(world.client_id, "safety_check")
    world.clock.advance(timedelta(minutes=10))
    await world.press(world.to_client()[-1].button("Nee, nu niet"))
    world.pending()
    world.clock.advance(timedelta(hours=1))
    assert await world.service.fire_timeouts() == 0
    assert world.pending() == [] and her_escalations(world) == []


async def test_an_answer_moves_the_time_out_to_the_next_question(world: World) -> None:
    """A bad mood in a check-in: the question about contact waits an hour, then she is asked
    whether she feels safe (that question waits a day, and then the flow ends quietly)."""
    await enrolled(world)
    await world.command("checkin")
    world.clock.advance(timedelta(hours=5))
    await world.press(world.to_client()[-1].button("Niet zo goed"))
    assert world.to_client()[-1].text == "Wil je dat Anna contact met je opneemt?"
    world.clock.advance(timedelta(minutes=61))
    assert await world.service.fire_timeouts() == 1
    assert [sent.text for sent in world.to_client()] == [
        "Nog één vraag: voel je je veilig op dit moment?"
    ]
    world.clock.advance(timedelta(days=1, minutes=1))
    assert await world.service.fire_timeouts() == 1
    assert world.pending() == [], "the check-in ends without a word"
    assert her_escalations(world) == []


async def test_the_background_jobs_look_for_time_outs_every_minute(world: World) -> None:
    """`aftercare run` and `aftercare chat` run the time-outs beside the reminders."""
    await enrolled(world)
    assert await world.service.start_flow(world.client_id, "safety_check")
    world.pending()
    world.clock.advance(timedelta(minutes=31))
    parts = Parts(
        world.care.settings,
        world.care,
        world.clock,
        world.service.flows,
        world.service.nlu,
        world.service.desk,
        world.service,
    )
    background = Background(parts, auto_delete_every=3600, timeouts_every=0.05)
    await background.start()
    try:
        for _ in range(100):
            if her_escalations(world):
                break
            await asyncio.sleep(0.05)
    finally:
        await background.stop()
    assert her_escalations(world) == ["safety_check_no_answer"]


async def test_nothing_goes_on_for_her_after_stop(world: World) -> None:
    await enrolled(world)
    assert await world.service.start_flow(world.client_id, "safety_check")
    with world.care.sessions.begin() as session:
        client = session.get(Client, world.client_id)
        assert client is not None
        client.status = ClientStatus.ENDED
    world.pending()
    world.clock.advance(timedelta(hours=1))
    assert await world.service.fire_timeouts() == 0
    assert world.pending() == [] and her_escalations(world) == []
    world.clock.advance(timedelta(hours=1))
    assert await world.service.fire_timeouts() == 0, "looked at once, then no more"


async def test_after_stop_her_own_check_in_promises_no_next_time(world: World) -> None:
    await enrolled(world)
    await world.command("stop")
    await world.press(world.to_client()[-1].button("Ja, stoppen"))
    await world.command("checkin")
    await world.press(world.to_client()[-1].button("Goed"))
    await world.press(world.to_client()[-1].button("Ja"))
    assert world.to_client()[-1].text == "Goed om te horen. Pas goed op jezelf! 👋"
    assert world.client().status is ClientStatus.ENDED, "asking for a check-in is no restart"


class _ServerNlu:
    """The NLU as when Rasa answers: her text is read before the turn, never inside it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.asked = 0

    async def understand(self, text: str, lang: str) -> Any:
        self.asked += 1
        return await self.inner.understand(text, lang)

    def reads_here(self) -> bool:
        return False

    def understand_now(self, text: str, lang: str) -> Any:
        raise AssertionError("a turn must not wait for a server inside its transaction")


class _HereNlu(_ServerNlu):
    """The embedded NLU: her text is read inside her turn, with her row locked."""

    async def understand(self, text: str, lang: str) -> Any:
        raise AssertionError("the embedded NLU reads her text in her turn")

    def reads_here(self) -> bool:
        return True

    def understand_now(self, text: str, lang: str) -> Any:
        self.asked += 1
        return self.inner.understand_now(text, lang)


@pytest.mark.parametrize("reader", [_ServerNlu, _HereNlu])
async def test_her_words_reach_her_worker_whoever_reads_them(
    care_ctx: Care, reader: type[_ServerNlu]
) -> None:
    """Read before her turn (a server) or in it (embedded): the same crisis, the same alert,
    and a duress word still wins over what the NLU read."""
    from tests.bot.world import shared_nlu

    nlu = reader(shared_nlu())
    world = await enrolled(make_world(care_ctx, nlu=nlu))
    await world.text("ik wil niet meer leven")
    assert nlu.asked == 1
    alerts = world.to_worker()
    assert [a.kind for a in alerts] == ["alert"] and "Kritiek" in alerts[0].text
    assert any("113" in sent.text for sent in world.to_client())
    with care_ctx.sessions.begin() as session:
        client = session.get(Client, world.client_id)
        assert client is not None
        org = client.org_id
        directory.set_duress_word(
            session, care_ctx.keyring, session.get_one(Organisation, org), "paraplu", "test"
        )
    await world.text("Paraplu")
    assert [sent.text for sent in world.to_client()] == ["Oké, top! 👍"]
    alerts = world.to_worker()
    assert len(alerts) == 1 and "STIL ALARM" in alerts[0].text


async def test_her_reply_waits_behind_a_message_still_open_for_her(world: World) -> None:
    """The sender of this process takes her turn's reply in the turn itself, unless a message
    is still open for her (the first look of her turn reads that with her locked row): then
    the reply waits for the sender's claim, behind it. Her new state is saved either way."""
    await enrolled(world)
    sender = OutboxSender(world.care, FakeChannel(), options=SenderOptions(poll_seconds=30))
    await sender.start()
    world.service.set_handoff(sender)
    try:
        with world.care.sessions.begin() as session:
            her = session.get(Client, world.client_id)
            assert her is not None
            later = datetime.now(UTC) + timedelta(hours=1)
            text = {"type": "text", "text": "tot straks"}
            older = outbox.enqueue(
                session, world.care.vault, her, text, kind="reminder", not_before=later
            ).id
        await world.command("checkin")
        with world.care.sessions() as session:
            rows = session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
            replies = [r for r in rows if r.id > older and r.recipient_id == world.client_id]
        assert replies, "she was answered"
        assert all(r.claimed_by is None for r in replies), "left to the claim, behind it"
        question = world.to_client()[-1]
        with world.care.sessions.begin() as session:  # all sent: nothing is open for her now
            session.execute(update(OutboxMessage).values(status=OutboxStatus.SENT))
        await world.press(question.button("Goed"))
        with world.care.sessions() as session:
            taken = session.scalars(
                select(OutboxMessage).where(OutboxMessage.id > replies[-1].id)
            ).all()
        assert taken and taken[0].claimed_by == sender.name, "nothing open: taken at once"
        assert taken[0].status is OutboxStatus.SENDING
    finally:
        await sender.stop(flush=False)
    world.service.set_handoff(None)
    safety = world.to_client()[-1]
    assert "veilig" in safety.text.lower(), "her state went on to the next question"
    await world.press(safety.button("Ja"))
    assert "goed om te horen" in world.to_client()[-1].text.lower()
