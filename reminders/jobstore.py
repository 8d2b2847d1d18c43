"""Write scheduler jobs in the caller's transaction.

APScheduler's SQLAlchemyJobStore reads the `scheduler_jobs` table (declared in `care.models`).
Writing a job here, through the same session as the appointment it belongs to, means an
appointment and its reminders are committed (or rolled back) together. The running scheduler
sees new rows the next time it wakes (the watchdog wakes it every few minutes; `Reminders.nudge`
wakes it at once in the scheduling process).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from apscheduler.triggers.base import BaseTrigger
from sqlalchemy import delete, event, insert, select
from sqlalchemy.orm import Session

from care.models import scheduler_jobs

EXECUTOR = "default"


def put_job(
    session: Session,
    job_id: str,
    func: str,
    args: Sequence[Any],
    trigger: BaseTrigger,
    *,
    next_run_time: datetime | None,
    misfire_grace_time: int | None,
    coalesce: bool,
) -> None:
    """Add or replace (`replace_existing`) a job; `func` is a 'module:function' reference."""
    state = {
        "version": 1,
        "id": job_id,
        "func": func,
        "trigger": trigger,
        "executor": EXECUTOR,
        "args": tuple(args),
        "kwargs": {},
        "name": job_id,
        "misfire_grace_time": misfire_grace_time,
        "coalesce": coalesce,
        "max_instances": 1,
        "next_run_time": next_run_time,
    }
    session.execute(delete(scheduler_jobs).where(scheduler_jobs.c.id == job_id))
    if next_run_time is None:
        return  # nothing left to run: a job without a next run time is removed
    session.execute(
        insert(scheduler_jobs).values(
            id=job_id,
            next_run_time=next_run_time.timestamp(),
            job_state=pickle.dumps(state, pickle.HIGHEST_PROTOCOL),
        )
    )


def remove_jobs(session: Session, job_ids: Sequence[str]) -> None:
    """Remove jobs (missing ones are fine)."""
    if job_ids:
        session.execute(delete(scheduler_jobs).where(scheduler_jobs.c.id.in_(list(job_ids))))


def remove_prefix(session: Session, prefix: str) -> None:
    """Remove every job whose id starts with `prefix` (e.g. 'appt:12:')."""
    session.execute(delete(scheduler_jobs).where(scheduler_jobs.c.id.startswith(prefix)))


def job_times(session: Session, prefix: str = "") -> dict[str, datetime]:
    """Job ids (starting with `prefix`) and their next run time, UTC."""

    rows = session.execute(
        select(scheduler_jobs.c.id, scheduler_jobs.c.next_run_time).where(
            scheduler_jobs.c.id.startswith(prefix)
        )
    )
    return {
        row.id: datetime.fromtimestamp(row.next_run_time, UTC)
        for row in rows
        if row.next_run_time is not None
    }


_waker: Callable[[], None] | None = None


def set_waker(waker: Callable[[], None] | None) -> None:
    """What wakes the scheduler of this process (set while it schedules)."""
    global _waker
    _waker = waker


def wake_after_commit(session: Session) -> None:
    """Wake this process's scheduler once the caller's transaction has committed."""

    def wake(_session: Session) -> None:
        if _waker is not None:
            _waker()

    event.listen(session, "after_commit", wake, once=True)
