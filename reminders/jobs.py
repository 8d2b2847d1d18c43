"""The functions scheduler jobs call. They carry only ids; the running `Reminders` gives them
storage, the conversation service and the clock."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from reminders import appointments, checkins, jobstore

if TYPE_CHECKING:
    from reminders.runtime import Reminders

log = logging.getLogger("reminders.jobs")

_current: Reminders | None = None


def install(runtime: Reminders | None) -> None:
    """Make `runtime` the one the jobs of this process use (None: none)."""
    global _current
    _current = runtime
    jobstore.set_waker(runtime.nudge if runtime is not None else None)


def nudge() -> None:
    """Wake the scheduler of this process, if it runs here (after a job was written)."""
    if _current is not None:
        _current.nudge()


def _runtime(job: str) -> Reminders | None:
    if _current is None:
        log.error("job.no_runtime job=%s", job)
    return _current


async def appointment_reminder(appointment_id: int, offset_minutes: int) -> None:
    """Job `appt:<id>:<offset>`: remind her of an appointment."""
    runtime = _runtime("appointment_reminder")
    if runtime is not None:
        await appointments.send_reminder(
            runtime.care, runtime.conversation, appointment_id, offset_minutes, runtime.clock.now()
        )


async def checkin(client_id: int) -> None:
    """Job `checkin:<client id>`: her check-in."""
    runtime = _runtime("checkin")
    if runtime is not None:
        await checkins.run_checkin(
            runtime.care, runtime.conversation, client_id, runtime.clock.now()
        )


async def watchdog() -> None:
    """Job `watchdog`: settle unanswered check-ins, give new clients their check-in job."""
    runtime = _runtime("watchdog")
    if runtime is None:
        return
    now = runtime.clock.now()
    await asyncio.to_thread(checkins.evaluate_all, runtime.care, now)
    made = await asyncio.to_thread(checkins.ensure_jobs, runtime.care, now)
    if made:
        log.info("watchdog.checkin_jobs_added count=%d", made)
