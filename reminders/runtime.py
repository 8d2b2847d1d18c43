"""`Reminders`: the scheduler of this process, if it holds the scheduler lock.

    reminders = Reminders(care, conversation_service, clock)
    scheduling = await reminders.start()   # False: another process schedules; we only serve
    ...
    await reminders.stop()

A process that does not get the lock says so in a log line and tries again every
`standby_retry_seconds`, so that it takes over when the scheduling process dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from datetime import UTC, datetime
from typing import Any

from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import MetaData

from care.clock import Clock, SystemClock
from care.context import Care
from care.db import make_engine
from care.models import Appointment, scheduler_jobs
from care.outbox import record_skip
from reminders import appointments, checkins, jobs
from reminders.conversation import FlowStarter
from reminders.lock import Lock, scheduler_lock

log = logging.getLogger("reminders.runtime")


def _holder() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(3)}"


class Reminders:
    """Runs APScheduler in this event loop while this process holds the scheduler lock."""

    def __init__(
        self,
        care: Care,
        conversation: FlowStarter,
        clock: Clock | None = None,
        *,
        heartbeat_seconds: float = 10.0,
        standby_retry_seconds: float = 30.0,
        watchdog_minutes: float = 5.0,
    ) -> None:
        self.care = care
        self.conversation = conversation
        self.clock: Clock = clock or SystemClock()
        self.heartbeat_seconds = heartbeat_seconds
        self.standby_retry_seconds = standby_retry_seconds
        self.watchdog_minutes = watchdog_minutes
        self.holder = _holder()
        self._lock: Lock = scheduler_lock(care, self.holder, self.clock)
        self._scheduler: AsyncIOScheduler | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def scheduling(self) -> bool:
        """True while this process runs the scheduler."""
        return self._scheduler is not None

    @property
    def scheduler(self) -> AsyncIOScheduler | None:
        """The APScheduler instance, while scheduling."""
        return self._scheduler

    async def start(self) -> bool:
        """Schedule if the lock is free (True); otherwise stand by and say so (False)."""
        if await asyncio.to_thread(self._lock.acquire):
            await self._begin()
            self._task = asyncio.create_task(self._heartbeat(), name="reminders-heartbeat")
            return True
        log.info(
            "reminders.standby another process runs the scheduler; this process serves "
            "messages and does not schedule"
        )
        self._task = asyncio.create_task(self._standby(), name="reminders-standby")
        return False

    async def stop(self) -> None:
        """Stop scheduling and let go of the lock."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._end()
        await asyncio.to_thread(self._lock.release)

    def nudge(self) -> None:
        """Look at the job table now (a job was just written)."""
        if self._scheduler is not None:
            self._scheduler.wakeup()

    async def _begin(self) -> None:
        jobs.install(self)
        now = self.clock.now()
        made = await asyncio.to_thread(checkins.ensure_jobs, self.care, now)
        # An engine of its own: the job store disposes its engine when the scheduler stops.
        engine = make_engine(self.care.engine.url.render_as_string(hide_password=False))
        store = SQLAlchemyJobStore(
            engine=engine, tablename=scheduler_jobs.name, metadata=MetaData()
        )
        scheduler = AsyncIOScheduler(
            jobstores={"default": store, "local": MemoryJobStore()},
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600},
        )
        scheduler.add_listener(self._on_missed, EVENT_JOB_MISSED)
        scheduler.add_job(
            jobs.watchdog,
            IntervalTrigger(minutes=self.watchdog_minutes, timezone=UTC),
            id="watchdog",
            jobstore="local",
            replace_existing=True,
            coalesce=True,
            misfire_grace_time=None,
        )
        scheduler.start()
        self._scheduler = scheduler
        log.info("reminders.scheduling holder=%s checkin_jobs_added=%d", self.holder, made)

    async def _end(self) -> None:
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.shutdown(wait=False)
            await asyncio.sleep(0)
        jobs.install(None)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            try:
                held = await asyncio.to_thread(self._lock.renew)
            except Exception as exc:
                log.warning("reminders.heartbeat_failed error=%s", type(exc).__name__)
                continue
            if not held:
                log.error("reminders.lock_lost this process stops scheduling")
                await self._end()
                await self._standby()
                return

    async def _standby(self) -> None:
        while True:
            await asyncio.sleep(self.standby_retry_seconds)
            try:
                got = await asyncio.to_thread(self._lock.acquire)
            except Exception as exc:
                log.warning("reminders.lock_check_failed error=%s", type(exc).__name__)
                continue
            if got:
                log.info("reminders.taking_over the scheduling process is gone")
                await self._begin()
                await self._heartbeat()
                return

    def _on_missed(self, event: Any) -> None:
        """A run was later than its grace time: record it as skipped for her worker."""
        if not isinstance(event, JobExecutionEvent):
            return
        try:
            self._record_missed(event.job_id, event.scheduled_run_time)
        except Exception as exc:
            log.warning(
                "reminders.missed_not_recorded job=%s error=%s", event.job_id, type(exc).__name__
            )

    def _record_missed(self, job_id: str, due: datetime) -> None:
        parts = job_id.split(":")
        with self.care.sessions() as session, session.begin():
            if parts[0] == "checkin":
                client_id, kind = int(parts[1]), checkins.KIND
            elif parts[0] == "appt":
                appointment = session.get(Appointment, int(parts[1]))
                if appointment is None:
                    return
                client_id, kind = appointment.client_id, appointments.KIND
            else:
                return
            record_skip(session, client_id, kind, "missed_downtime", due_at=due, ref=job_id)
        log.info("reminders.missed job=%s late_by=%s", job_id, datetime.now(UTC) - due)


__all__ = ["Reminders"]
