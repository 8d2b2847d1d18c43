"""Benchmark: scheduler start-up with 10,000 clients and 50,000 scheduled jobs.

10,000 active clients each get a check-in job and two appointments with two reminders each
(10,000 + 40,000 jobs). A fresh process then starts the reminders runtime (lock, job check,
APScheduler with the SQLAlchemy job store) and reports how long that took and its peak RSS;
the same process against an empty database is the baseline of this run.

    .venv/bin/python bench/scale.py [--clients 10000] [--database-url URL]

Targets: start under 5 s, peak RSS under 300 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert, select

from care.context import Care
from care.crypto import keyring_from_set, new_key_set
from care.db import make_engine, make_sessionmaker, upgrade
from care.models import (
    Appointment,
    AppointmentStatus,
    Client,
    ClientStatus,
    Organisation,
    Worker,
    WorkerRole,
)
from care.settings import DEFAULT_CONFIG, load_settings
from care.vault import Vault
from reminders.appointments import schedule_reminders
from reminders.checkins import schedule_checkins
from reminders.runtime import Reminders
from tests.reminders.helpers import FakeConversation


def _care(url: str) -> Care:
    settings = load_settings(DEFAULT_CONFIG, environ={})
    keyring = keyring_from_set(new_key_set(), "bench keys")
    engine = make_engine(url)
    return Care(settings, engine, make_sessionmaker(engine), keyring, Vault(keyring))


def populate(url: str, clients: int) -> int:
    """Create the clients, appointments and jobs; returns the number of jobs."""
    care = _care(url)
    now = datetime.now(UTC)
    with care.sessions() as session, session.begin():
        key = care.vault.new_key(session)
        org = Organisation(name="Bench org")
        session.add(org)
        session.flush()
        worker = Worker(org_id=org.id, name="Sam", role=WorkerRole.WORKER, data_key_id=key.id)
        session.add(worker)
        session.flush()
        days = ("mon,thu", "tue,fri", "wed,sat", "mon,wed,fri")
        session.execute(
            insert(Client),
            [
                {
                    "org_id": org.id,
                    "alias": f"roos-{i}",
                    "language": "nl",
                    "timezone": "Europe/Amsterdam",
                    "status": ClientStatus.ACTIVE,
                    "assigned_worker_id": worker.id,
                    "data_key_id": key.id,
                    "checkin_days": days[i % 4],
                    "checkin_time": f"{9 + i % 10:02d}:{(i * 7) % 60:02d}",
                }
                for i in range(clients)
            ],
        )
        rows = session.scalars(select(Client)).all()
        for i, client in enumerate(rows):
            schedule_checkins(session, care, client, now)
            for k in (1, 2):
                appointment = Appointment(
                    client_id=client.id,
                    worker_id=worker.id,
                    starts_at=now + timedelta(days=3 * k, minutes=i % 600),
                    status=AppointmentStatus.PLANNED,
                )
                session.add(appointment)
                session.flush()
                schedule_reminders(session, care, appointment, client, now)
    care.close()
    return clients * 5


async def _start(url: str) -> float:
    care = _care(url)
    runtime = Reminders(care, FakeConversation())
    began = time.perf_counter()
    assert await runtime.start()
    took = time.perf_counter() - began
    await asyncio.sleep(2)  # let the scheduler take its first look at the job table
    await runtime.stop()
    care.close()
    return took


def child(url: str) -> None:
    """Start the runtime in this (fresh) process; print seconds and peak RSS in MB."""
    took = asyncio.run(_start(url))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{took:.3f} {peak_mb:.1f}")


def measure(url: str) -> tuple[float, float]:
    """Run `child` in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", url],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ},
    ).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    """Populate, then measure against the empty baseline."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--database-url", default=None, help="default: fresh SQLite files")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        empty = f"sqlite:///{tmp}/empty.db"
        full = args.database_url or f"sqlite:///{tmp}/full.db"
        upgrade(empty)
        upgrade(full)
        began = time.perf_counter()
        jobs = populate(full, args.clients)
        print(f"set-up: {args.clients} clients, {jobs} jobs in {time.perf_counter() - began:.1f} s")
        base_s, base_mb = measure(empty)
        full_s, full_mb = measure(full)
        print(
            f"start-up: {full_s:.2f} s with {jobs} jobs (target < 5 s); empty: {base_s:.2f} s; "
            f"ratio {full_s / base_s:.1f}x"
        )
        print(
            f"peak RSS: {full_mb:.0f} MB with {jobs} jobs (target < 300 MB); empty: "
            f"{base_mb:.0f} MB; ratio {full_mb / base_mb:.2f}x"
        )


if __name__ == "__main__":
    main()
