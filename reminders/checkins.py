"""Check-ins: her days and local time, in her time zone, never in her quiet hours.

One job per client (`checkin:<client id>`, a cron trigger in her time zone). The job starts the
`checkin` flow and records a `CheckIn`; the conversation service marks it answered. Check-ins
left unanswered are counted; after `missed_checkins_alert_after` in a row her worker gets a
non-urgent notice, because silence can be a warning sign.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from care.context import Care
from care.models import (
    ChatMessage,
    CheckIn,
    CheckInStatus,
    Client,
    ClientStatus,
    OutboxPriority,
    Worker,
    scheduler_jobs,
)
from care.outbox import enqueue, record_skip
from reminders import jobstore
from reminders.conversation import FlowStarter
from reminders.timing import CHECKIN_GRACE, CheckinSchedule, checkin_decision, next_quiet_start

log = logging.getLogger("reminders.checkins")

JOB_FUNC = "reminders.jobs:checkin"
FLOW = "checkin"
KIND = "checkin"
# A check-in not answered within this time counts as missed (also when no next one came).
ANSWER_WINDOW = timedelta(hours=24)

_MISSED_NOTICE = {
    "nl": (
        "{alias} heeft de laatste {n} check-ins niet beantwoord. Dat hoeft niets te betekenen, "
        "maar stilte kan een waarschuwing zijn. Misschien goed om contact op te nemen."
    ),
    "en": (
        "{alias} has not answered the last {n} check-ins. It may mean nothing, but silence "
        "can be a warning sign. It may be good to get in touch."
    ),
}


def job_id(client_id: int) -> str:
    """The id of a client's check-in job."""
    return f"checkin:{client_id}"


def schedule_of(care: Care, client: Client) -> CheckinSchedule:
    """Her check-in schedule (raises InvalidSchedule when her settings cannot be used)."""
    return CheckinSchedule.of(
        client.checkin_days,
        client.checkin_time,
        client.timezone,
        client.quiet_hours,
        care.settings.reminders.quiet_hours,
    )


def schedule_checkins(session: Session, care: Care, client: Client, now: datetime) -> None:
    """Write (or remove, for an ended client) her check-in job in the caller's transaction."""
    if client.status is ClientStatus.ENDED or client.data_key_id is None:
        jobstore.remove_jobs(session, [job_id(client.id)])
        return
    schedule = schedule_of(care, client)
    trigger = schedule.trigger()
    jobstore.put_job(
        session,
        job_id(client.id),
        JOB_FUNC,
        (client.id,),
        trigger,
        next_run_time=trigger.get_next_fire_time(None, now),
        misfire_grace_time=int(CHECKIN_GRACE.total_seconds()),
        coalesce=True,  # a day of downtime gives one check-in, not several
    )
    jobstore.wake_after_commit(session)


def set_checkin_schedule(
    session: Session,
    care: Care,
    client: Client,
    *,
    days: str | None = None,
    at: str | None = None,
    quiet_hours: str | None = None,
    now: datetime | None = None,
) -> CheckinSchedule:
    """Change her days, time or quiet hours (checked first), and move her job with them."""
    candidate = CheckinSchedule.of(
        days or client.checkin_days,
        at or client.checkin_time,
        client.timezone,
        quiet_hours if quiet_hours is not None else client.quiet_hours,
        care.settings.reminders.quiet_hours,
    )
    client.checkin_days = ",".join(candidate.days)
    client.checkin_time = f"{candidate.at:%H:%M}"
    if quiet_hours is not None:
        client.quiet_hours = quiet_hours or None
    schedule_checkins(session, care, client, now or datetime.now(UTC))
    return candidate


def ensure_jobs(care: Care, now: datetime) -> int:
    """Give every active client without a check-in job one; remove jobs of ended clients."""
    made = 0
    with care.sessions() as session, session.begin():
        has_job = exists().where(
            scheduler_jobs.c.id == ("checkin:" + Client.id.cast(scheduler_jobs.c.id.type))
        )
        missing = session.scalars(
            select(Client).where(Client.status == ClientStatus.ACTIVE, ~has_job)
        ).all()
        for client in missing:
            try:
                schedule_checkins(session, care, client, now)
                made += 1
            except Exception as exc:  # one bad schedule must not stop the others
                log.warning(
                    "checkin.unschedulable client=%d error=%s", client.id, type(exc).__name__
                )
        ended = session.scalars(select(Client.id).where(Client.status == ClientStatus.ENDED))
        jobstore.remove_jobs(session, [job_id(i) for i in ended])
    return made


def _answered(session: Session, checkin: CheckIn, until: datetime) -> bool:
    if checkin.answered_at is not None:
        return True
    since = checkin.sent_at or checkin.due_at
    return bool(
        session.scalars(
            select(ChatMessage.id).where(
                ChatMessage.client_id == checkin.client_id,
                ChatMessage.from_bot.is_(False),
                ChatMessage.at > since,
                ChatMessage.at <= until,
            )
        ).first()
    )


def evaluate(
    session: Session, care: Care, client: Client, now: datetime, before: datetime | None = None
) -> None:
    """Settle her sent check-ins as answered or missed; notify her worker after N missed.

    `before`: settle those due before this moment (a new check-in is due then); otherwise
    those whose answer window has passed.
    """
    stmt = select(CheckIn).where(
        CheckIn.client_id == client.id, CheckIn.status == CheckInStatus.SENT
    )
    stmt = stmt.where(CheckIn.due_at < (before if before is not None else now - ANSWER_WINDOW))
    alert_after = care.settings.reminders.missed_checkins_alert_after
    for checkin in session.scalars(stmt.order_by(CheckIn.due_at)):
        if _answered(session, checkin, now):
            checkin.status = CheckInStatus.ANSWERED
            checkin.answered_at = checkin.answered_at or now
            client.missed_checkins = 0
            continue
        checkin.status = CheckInStatus.MISSED
        client.missed_checkins += 1
        log.info("checkin.missed client=%d in_a_row=%d", client.id, client.missed_checkins)
        if client.missed_checkins == alert_after:
            _notify_missed(session, care, client, checkin.id)


def _notify_missed(session: Session, care: Care, client: Client, checkin_id: int) -> None:
    worker = session.get(Worker, client.assigned_worker_id)
    if worker is None:
        return
    text = _MISSED_NOTICE.get(worker.language, _MISSED_NOTICE["nl"])
    enqueue(
        session,
        care.vault,
        worker,
        {"type": "text", "text": text.format(alias=client.alias, n=client.missed_checkins)},
        kind="notice_missed_checkins",
        priority=OutboxPriority.NOTICE,
        dedupe_key=f"missed:{client.id}:{checkin_id}",
        client_id=client.id,
    )
    log.info("checkin.worker_notified client=%d", client.id)


def evaluate_all(care: Care, now: datetime) -> None:
    """The watchdog's part: settle check-ins whose answer window has passed."""
    with care.sessions() as session, session.begin():
        ids = session.scalars(
            select(CheckIn.client_id)
            .where(CheckIn.status == CheckInStatus.SENT, CheckIn.due_at <= now - ANSWER_WINDOW)
            .distinct()
        ).all()
    for client_id in ids:
        with care.sessions() as session, session.begin():
            client = session.get(Client, client_id, with_for_update=True)
            if client is not None:
                evaluate(session, care, client, now)


def _prepare(care: Care, client_id: int, now: datetime) -> tuple[datetime, datetime, str] | None:
    """Decide whether her check-in goes out now; returns (due, expires, her day) or None."""
    with care.sessions() as session, session.begin():
        client = session.get(Client, client_id, with_for_update=True)
        if client is None or client.status is ClientStatus.ENDED:
            jobstore.remove_jobs(session, [job_id(client_id)])
            return None
        schedule = schedule_of(care, client)
        due, reason = checkin_decision(now, schedule)
        evaluate(session, care, client, now, before=due)
        if reason is None and client.unreachable:
            reason = "unreachable"
        elif reason is None and client.status is not ClientStatus.ACTIVE:
            reason = client.status.value
        if due is None:
            return None
        if reason is not None:
            record_skip(session, client.id, KIND, reason, due_at=due, ref=job_id(client.id), at=now)
            log.info("checkin.skipped client=%d reason=%s", client.id, reason)
            return None
        day = f"{schedule.local_day(due):%Y-%m-%d}"
        return due, next_quiet_start(now, schedule.zone, schedule.quiet), day


def _record_sent(care: Care, client_id: int, due: datetime, now: datetime) -> None:
    with care.sessions() as session, session.begin():
        session.add(
            CheckIn(client_id=client_id, due_at=due, sent_at=now, status=CheckInStatus.SENT)
        )


async def run_checkin(care: Care, conversation: FlowStarter, client_id: int, now: datetime) -> bool:
    """The body of a check-in job: one check-in for her local day, unless it must be skipped."""
    decided = await asyncio.to_thread(_prepare, care, client_id, now)
    if decided is None:
        return False
    due, expires, day = decided
    started = await conversation.start_flow(
        client_id,
        FLOW,
        priority=OutboxPriority.REMINDER,
        dedupe_key=f"checkin:{client_id}:{day}",
        expires_at=expires,
    )
    if started:
        await asyncio.to_thread(_record_sent, care, client_id, due, now)
    log.info("checkin.run client=%d started=%s", client_id, started)
    return started
