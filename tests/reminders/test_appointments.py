"""Appointments and their reminder jobs, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from care.context import Care
from care.models import Appointment, Client, ClientStatus, OutboxPriority, Worker
from care.outbox import skipped_sends
from reminders import jobstore
from reminders.appointments import (
    cancel_appointment,
    create_appointment,
    move_appointment,
    send_reminder,
)
from reminders.errors import InvalidSchedule
from tests.reminders.helpers import FakeConversation, People, make_people

AMS = ZoneInfo("Europe/Amsterdam")
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=AMS)
STARTS = datetime(2026, 5, 12, 14, 0, tzinfo=AMS)


@pytest.fixture
def people(care_ctx: Care) -> People:
    return make_people(care_ctx, clients=1)


def book(
    care: Care, people: People, starts: datetime = STARTS, place: str = "Stationsplein 1"
) -> int:
    with care.sessions() as session, session.begin():
        client = session.get(Client, people.client_ids[0])
        worker = session.get(Worker, people.worker_id)
        assert client is not None and worker is not None
        return create_appointment(session, care, client, worker, starts, place, now=NOW).id


def jobs(care: Care) -> dict[str, datetime]:
    with care.sessions() as session:
        return jobstore.job_times(session, "appt:")


def test_creating_an_appointment_schedules_its_reminders(care_ctx: Care, people: People) -> None:
    appointment_id = book(care_ctx, people)
    assert jobs(care_ctx) == {
        f"appt:{appointment_id}:1440": STARTS - timedelta(hours=24),
        f"appt:{appointment_id}:120": STARTS - timedelta(hours=2),
    }


def test_moving_and_cancelling_move_and_remove_the_reminders(
    care_ctx: Care, people: People
) -> None:
    appointment_id = book(care_ctx, people)
    later = STARTS + timedelta(days=2)
    with care_ctx.sessions() as session, session.begin():
        appointment = session.get(Appointment, appointment_id)
        assert appointment is not None
        move_appointment(session, care_ctx, appointment, later, now=NOW)
    assert sorted(jobs(care_ctx).values()) == [
        later - timedelta(hours=24),
        later - timedelta(hours=2),
    ]
    with care_ctx.sessions() as session, session.begin():
        appointment = session.get(Appointment, appointment_id)
        assert appointment is not None
        cancel_appointment(session, care_ctx, appointment)
    assert jobs(care_ctx) == {}


def test_a_rolled_back_appointment_leaves_no_reminders(care_ctx: Care, people: People) -> None:
    with pytest.raises(RuntimeError), care_ctx.sessions() as session, session.begin():
        client = session.get(Client, people.client_ids[0])
        worker = session.get(Worker, people.worker_id)
        assert client is not None and worker is not None
        create_appointment(session, care_ctx, client, worker, STARTS, None, now=NOW)
        raise RuntimeError("the worker's command failed after this")
    assert jobs(care_ctx) == {}


def test_an_appointment_in_the_past_is_refused(care_ctx: Care, people: People) -> None:
    with pytest.raises(InvalidSchedule, match="has passed"):
        book(care_ctx, people, starts=NOW - timedelta(hours=1))


async def test_a_due_reminder_starts_her_reminder_flow_once(care_ctx: Care, people: People) -> None:
    appointment_id = book(care_ctx, people)
    conversation = FakeConversation()
    at = STARTS - timedelta(hours=2)
    assert await send_reminder(care_ctx, conversation, appointment_id, 120, at)
    assert not await send_reminder(care_ctx, conversation, appointment_id, 120, at)  # run twice
    (call,) = conversation.calls
    assert call["flow"] == "appointment_reminder"
    assert call["dedupe_key"] == f"appt:{appointment_id}:120"
    assert call["priority"] is OutboxPriority.REMINDER
    assert call["expires_at"] == STARTS
    assert call["context"] == {
        "appointment_time": "dinsdag 12 mei om 14:00",
        "appointment_place": "Stationsplein 1",
    }


async def test_a_reminder_due_while_a_safety_question_is_open_comes_after_it(
    care_ctx: Care, people: People
) -> None:
    """Her safety check waits for an answer until 14:30 (its silence would alert her worker):
    the 12:00 reminder starts nothing and its job moves to 14:32, when it goes out. Too
    close to the appointment to wait, it is left to `start_flow`, which holds it back."""
    appointment_id = book(care_ctx, people)
    her = people.client_ids[0]
    conversation = FakeConversation()
    at = STARTS - timedelta(hours=2)
    conversation.held_until[her] = at + timedelta(minutes=30)
    assert not await send_reminder(care_ctx, conversation, appointment_id, 120, at)
    assert conversation.calls == []
    assert jobs(care_ctx)[f"appt:{appointment_id}:120"] == at + timedelta(minutes=32)
    del conversation.held_until[her]
    later = at + timedelta(minutes=32)
    assert await send_reminder(care_ctx, conversation, appointment_id, 120, later)
    assert [call["dedupe_key"] for call in conversation.calls] == [f"appt:{appointment_id}:120"]
    with care_ctx.sessions() as session:
        assert skipped_sends(session, her) == []
    # Ten minutes before it begins, a question open until after the start cannot be waited for.
    conversation.held_until[her] = STARTS + timedelta(minutes=20)
    assert await send_reminder(
        care_ctx, conversation, appointment_id, 60, STARTS - timedelta(minutes=10)
    )
    assert len(conversation.calls) == 2


async def test_no_reminder_after_the_appointment_began_and_the_skip_is_visible(
    care_ctx: Care, people: People
) -> None:
    appointment_id = book(care_ctx, people)
    conversation = FakeConversation()
    assert not await send_reminder(
        care_ctx, conversation, appointment_id, 120, STARTS + timedelta(minutes=1)
    )
    assert conversation.calls == []
    with care_ctx.sessions() as session:
        skips = skipped_sends(session, people.client_ids[0])
    assert [(s.kind, s.reason, s.ref) for s in skips] == [
        ("appointment_reminder", "too_late", f"appt:{appointment_id}:120")
    ]


async def test_a_paused_client_gets_no_reminder(care_ctx: Care, people: People) -> None:
    appointment_id = book(care_ctx, people)
    with care_ctx.sessions() as session, session.begin():
        client = session.get(Client, people.client_ids[0])
        assert client is not None
        client.status = ClientStatus.PAUSED
    conversation = FakeConversation()
    assert not await send_reminder(
        care_ctx, conversation, appointment_id, 120, STARTS - timedelta(hours=2)
    )
    assert conversation.calls == []
    with care_ctx.sessions() as session:
        assert [s.reason for s in skipped_sends(session, people.client_ids[0])] == ["paused"]


async def test_a_cancelled_appointment_sends_nothing(care_ctx: Care, people: People) -> None:
    appointment_id = book(care_ctx, people)
    with care_ctx.sessions() as session, session.begin():
        appointment = session.get(Appointment, appointment_id)
        assert appointment is not None
        cancel_appointment(session, care_ctx, appointment)
    conversation = FakeConversation()
    assert not await send_reminder(
        care_ctx, conversation, appointment_id, 120, STARTS - timedelta(hours=2)
    )
    assert conversation.calls == []


def test_times_are_stored_in_utc(care_ctx: Care, people: People) -> None:
    appointment_id = book(care_ctx, people)
    with care_ctx.sessions() as session:
        appointment = session.get(Appointment, appointment_id)
        assert appointment is not None
        assert appointment.starts_at == STARTS.astimezone(UTC)
