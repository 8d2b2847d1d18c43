"""Appointments and their reminders.

Creating, moving or cancelling an appointment writes, moves or removes its reminder jobs in the
same transaction (`reminders.jobstore`). A reminder job (`appt:<id>:<offset minutes>`) starts
the `appointment_reminder` flow for her through the conversation service; she can confirm, say
she can't come or ask a question, and the flow tells her worker about the last two.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from apscheduler.triggers.date import DateTrigger
from sqlalchemy.orm import Session

from care import audit
from care.context import Care
from care.errors import DecryptionError
from care.models import (
    Appointment,
    AppointmentStatus,
    Client,
    ClientStatus,
    OutboxPriority,
    Worker,
)
from care.outbox import record_skip
from care.workers import format_when
from reminders import jobstore
from reminders.conversation import FlowStarter
from reminders.errors import InvalidSchedule
from reminders.timing import (
    PlannedReminder,
    appointment_reminder_decision,
    appointment_reminders,
    parse_window,
)

log = logging.getLogger("reminders.appointments")

JOB_FUNC = "reminders.jobs:appointment_reminder"
FLOW = "appointment_reminder"
KIND = "appointment_reminder"
_OPEN = (AppointmentStatus.PLANNED, AppointmentStatus.CONFIRMED)


def job_id(appointment_id: int, offset_minutes: int) -> str:
    """The id of one reminder job of an appointment."""
    return f"appt:{appointment_id}:{offset_minutes}"


def schedule_reminders(
    session: Session, care: Care, appointment: Appointment, client: Client, now: datetime
) -> list[PlannedReminder]:
    """(Re)write the reminder jobs of an appointment; returns what was planned."""
    jobstore.remove_prefix(session, f"appt:{appointment.id}:")
    if appointment.status not in _OPEN:
        return []
    settings = care.settings.reminders
    plans = appointment_reminders(
        appointment.starts_at,
        settings.appointment_offsets_hours,
        ZoneInfo(client.timezone),
        parse_window(client.quiet_hours, settings.quiet_hours),
        now,
    )
    for plan in plans:
        if plan.run_at is not None:
            _put_job(
                session, appointment.id, plan.offset_minutes, plan.run_at, appointment.starts_at
            )
    jobstore.wake_after_commit(session)
    return plans


def _put_job(
    session: Session, appointment_id: int, offset_minutes: int, at: datetime, starts_at: datetime
) -> None:
    """Write one reminder job, to run at `at`."""
    jobstore.put_job(
        session,
        job_id(appointment_id, offset_minutes),
        JOB_FUNC,
        (appointment_id, offset_minutes),
        DateTrigger(run_date=at, timezone=UTC),
        next_run_time=at,
        # Useful until the appointment begins; the job itself checks the rest.
        misfire_grace_time=int((starts_at - at).total_seconds()),
        coalesce=True,
    )


def _check_time(starts_at: datetime, now: datetime) -> None:
    if starts_at.tzinfo is None:
        raise InvalidSchedule("the appointment time needs a time zone")
    if starts_at <= now:
        raise InvalidSchedule("the appointment time has passed; give a time in the future")


def create_appointment(
    session: Session,
    care: Care,
    client: Client,
    worker: Worker,
    starts_at: datetime,
    place: str | None,
    *,
    now: datetime | None = None,
) -> Appointment:
    """Create an appointment and its reminder jobs in the caller's transaction."""
    now = now or datetime.now(UTC)
    _check_time(starts_at, now)
    appointment = Appointment(
        client_id=client.id,
        worker_id=worker.id,
        starts_at=starts_at.astimezone(UTC),
        place_enc=care.vault.encrypt(session, client.data_key_id, place) if place else None,
        status=AppointmentStatus.PLANNED,
    )
    session.add(appointment)
    session.flush()
    schedule_reminders(session, care, appointment, client, now)
    audit.record(
        session,
        f"worker:{worker.id}",
        "appointment.create",
        client_alias=client.alias,
        responsible_worker_id=client.assigned_worker_id,
        detail=f"appointment:{appointment.id}",
    )
    return appointment


def move_appointment(
    session: Session,
    care: Care,
    appointment: Appointment,
    starts_at: datetime,
    place: str | None = None,
    *,
    actor: str = "worker",
    now: datetime | None = None,
) -> Appointment:
    """Move an appointment (and optionally its place); its reminders move with it."""
    now = now or datetime.now(UTC)
    _check_time(starts_at, now)
    client = session.get(Client, appointment.client_id)
    if client is None:
        raise InvalidSchedule("the client of this appointment no longer exists")
    appointment.starts_at = starts_at.astimezone(UTC)
    if place is not None:
        appointment.place_enc = care.vault.encrypt(session, client.data_key_id, place)
    appointment.status = AppointmentStatus.PLANNED
    session.flush()
    schedule_reminders(session, care, appointment, client, now)
    audit.record(
        session,
        actor,
        "appointment.move",
        client_alias=client.alias,
        responsible_worker_id=client.assigned_worker_id,
        detail=f"appointment:{appointment.id}",
    )
    return appointment


def cancel_appointment(
    session: Session, care: Care, appointment: Appointment, *, actor: str = "worker"
) -> None:
    """Cancel an appointment and remove its reminders."""
    appointment.status = AppointmentStatus.CANCELLED
    jobstore.remove_prefix(session, f"appt:{appointment.id}:")
    client = session.get(Client, appointment.client_id)
    audit.record(
        session,
        actor,
        "appointment.cancel",
        client_alias=client.alias if client else None,
        responsible_worker_id=client.assigned_worker_id if client else None,
        detail=f"appointment:{appointment.id}",
    )


@dataclass(frozen=True)
class _Due:
    client_id: int
    starts_at: datetime
    context: dict[str, str]


def _prepare(care: Care, appointment_id: int, offset_minutes: int, now: datetime) -> _Due | None:
    """Decide in one transaction; record a skip when the reminder must not go out."""
    settings = care.settings.reminders
    with care.sessions() as session, session.begin():
        appointment = session.get(Appointment, appointment_id)
        if appointment is None or appointment.status not in _OPEN:
            return None
        client = session.get(Client, appointment.client_id)
        if client is None:
            return None
        zone = ZoneInfo(client.timezone)
        reason = appointment_reminder_decision(
            now,
            appointment.starts_at,
            offset_minutes,
            settings.appointment_offsets_hours,
            zone,
            parse_window(client.quiet_hours, settings.quiet_hours),
        )
        if reason is None and client.unreachable:
            reason = "unreachable"
        elif reason is None and client.status is not ClientStatus.ACTIVE:
            reason = client.status.value
        due = appointment.starts_at - timedelta(minutes=offset_minutes)
        ref = job_id(appointment.id, offset_minutes)
        if reason is not None:
            record_skip(session, client.id, KIND, reason, due_at=due, ref=ref, at=now)
            log.info(
                "reminder.skipped appointment=%d offset=%d reason=%s",
                appointment.id,
                offset_minutes,
                reason,
            )
            return None
        context = {
            "appointment_time": format_when(appointment.starts_at, client.timezone, client.language)
        }
        if appointment.place_enc is not None:
            try:
                context["appointment_place"] = care.vault.decrypt(
                    session, client.data_key_id, appointment.place_enc
                )
            except DecryptionError:
                return None
        return _Due(client.id, appointment.starts_at, context)


DEFER_MARGIN = timedelta(minutes=2)
"""How long after the safety question's time-out a reminder held back by it runs again (the
time-outs are looked at every minute)."""


def _defer(
    care: Care, appointment_id: int, offset_minutes: int, at: datetime, starts_at: datetime
) -> None:
    """Run this reminder's job again at `at` (the job that runs now is done)."""
    with care.sessions() as session, session.begin():
        _put_job(session, appointment_id, offset_minutes, at, starts_at)
        jobstore.wake_after_commit(session)


async def send_reminder(
    care: Care,
    conversation: FlowStarter,
    appointment_id: int,
    offset_minutes: int,
    now: datetime,
) -> bool:
    """The body of a reminder job: start her reminder flow once, if it is still useful."""
    due = await asyncio.to_thread(_prepare, care, appointment_id, offset_minutes, now)
    if due is None:
        return False
    starts_at = due.starts_at
    waits: list[datetime] = []

    def wait_for_safety_question(until: datetime) -> bool:
        """A safety question waits for her answer until `until`, and the reminder would take
        its place (and the alert it promises): it comes once the question is settled, unless
        that is too close to the appointment (then her worker sees why it was not sent)."""
        later = max(until, now) + DEFER_MARGIN
        if later >= starts_at:
            return False
        waits.append(later)
        return True

    started = await conversation.start_flow(
        due.client_id,
        FLOW,
        context=due.context,
        priority=OutboxPriority.REMINDER,
        dedupe_key=job_id(appointment_id, offset_minutes),
        expires_at=due.starts_at,
        defer=wait_for_safety_question,
    )
    if waits:
        (later,) = waits
        await asyncio.to_thread(_defer, care, appointment_id, offset_minutes, later, starts_at)
        log.info(
            "reminder.deferred appointment=%d offset=%d minutes=%d",
            appointment_id,
            offset_minutes,
            int((later - now).total_seconds() // 60),
        )
        return False
    log.info(
        "reminder.run appointment=%d offset=%d started=%s", appointment_id, offset_minutes, started
    )
    return started
