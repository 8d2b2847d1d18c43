"""Published dialogue versions: publish, history, diff, rollback, and the `FlowStore` the
conversation service runs flows from.

Every published version is immutable (number, content hash, spec_version, source, publisher,
time, note); exactly one version per flow is active. The triggers file is published alongside
the flows under the id `triggers`. Publishing validates all content first and never stores
invalid content; unchanged flows create nothing. A running conversation keeps the version its
session names (`FlowStore.get`); new conversations use the active one (`FlowStore.active`).
"""

from __future__ import annotations

import difflib
import logging
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from care import audit
from care.errors import InvalidInput, NotFound
from care.models import FlowVersion, utcnow
from dialogues import (
    CONTENT_DIR,
    ContentError,
    Finding,
    Flow,
    Library,
    LoadedFlow,
    UnknownFlowError,
    load_flow_text,
    load_library,
    load_triggers_text,
    validate_dir,
)
from dialogues.spec import TriggersSpec
from dialogues.validate import lint

log = logging.getLogger(__name__)

TRIGGERS_ID = "triggers"
"""The `flow` column value under which the triggers file is published."""


class ContentRejected(InvalidInput):
    """Content with errors: nothing was published or rolled back. `findings` says why."""

    def __init__(self, findings: Sequence[Finding]) -> None:
        self.findings = tuple(findings)
        lines = "\n".join(finding.format() for finding in self.findings)
        super().__init__(f"Nothing was changed; fix these first:\n{lines}")


def publish(
    session: Session,
    flows_dir: Path = CONTENT_DIR,
    publisher: str = "unknown",
    note: str | None = None,
    *,
    known_intents: frozenset[str] | None = None,
    now: datetime | None = None,
) -> list[FlowVersion]:
    """Validate all content in `flows_dir`, then store each changed flow (and the triggers) as
    a new active version. Returns the new versions (none when nothing changed). Runs in the
    caller's transaction; `ContentRejected` when there is any error."""
    report = validate_dir(flows_dir, known_intents=known_intents)
    if not report.ok or report.triggers is None:
        raise ContentRejected(report.errors)
    items = [
        (flow_id, loaded.content_hash, loaded.spec.spec_version, loaded.text)
        for flow_id, loaded in sorted(report.flows.items())
    ]
    triggers = report.triggers
    items.append((TRIGGERS_ID, triggers.content_hash, triggers.spec.spec_version, triggers.text))
    moment = now or utcnow()
    created: list[FlowVersion] = []
    for flow_id, content_hash, spec_version, source in items:
        active = _active(session, flow_id)
        if active is not None and active.content_hash == content_hash:
            continue
        latest = session.scalar(
            select(func.max(FlowVersion.number)).where(FlowVersion.flow == flow_id)
        )
        _deactivate(session, flow_id)
        version = FlowVersion(
            flow=flow_id,
            number=(latest or 0) + 1,
            content_hash=content_hash,
            spec_version=spec_version,
            source=source,
            publisher=publisher[:80],
            published_at=moment,
            note=note[:500] if note else None,
            is_active=True,
        )
        session.add(version)
        session.flush()
        audit.record(
            session, f"editor:{publisher}"[:80], "dialogues.publish", detail=_label(version)
        )
        log.info("flow_versions.published flow=%s number=%s", flow_id, version.number)
        created.append(version)
    return created


def history(session: Session, flow: str) -> list[FlowVersion]:
    """Every published version of `flow`, oldest first; `NotFound` when there is none."""
    versions = list(
        session.scalars(
            select(FlowVersion).where(FlowVersion.flow == flow).order_by(FlowVersion.number)
        )
    )
    if not versions:
        raise NotFound(f"No published versions of flow '{flow}'.")
    return versions


def diff(session: Session, flow: str, a: int, b: int) -> str:
    """A unified diff from version `a` to version `b` of `flow` (empty when they are equal)."""
    old, new = _version(session, flow, a), _version(session, flow, b)
    lines = difflib.unified_diff(
        old.source.splitlines(keepends=True),
        new.source.splitlines(keepends=True),
        fromfile=f"{flow} v{a}",
        tofile=f"{flow} v{b}",
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def rollback(session: Session, flow: str, number: int, *, actor: str = "unknown") -> FlowVersion:
    """Make version `number` of `flow` active again, for new conversations. Refused
    (`ContentRejected`) when the other active flows would then jump into nothing."""
    target = _version(session, flow, number)
    _check_active_set(session, replacing=target)
    _deactivate(session, flow)
    target.is_active = True
    session.flush()
    audit.record(session, f"editor:{actor}"[:80], "dialogues.rollback", detail=_label(target))
    log.info("flow_versions.rolled_back flow=%s number=%s", flow, number)
    return target


def _label(version: FlowVersion) -> str:
    return f"flow={version.flow} number={version.number}"


def _active(session: Session, flow: str) -> FlowVersion | None:
    return session.scalar(
        select(FlowVersion).where(FlowVersion.flow == flow, FlowVersion.is_active.is_(True))
    )


def _deactivate(session: Session, flow: str) -> None:
    session.execute(
        update(FlowVersion)
        .where(FlowVersion.flow == flow, FlowVersion.is_active.is_(True))
        .values(is_active=False)
    )


def _version(session: Session, flow: str, number: int) -> FlowVersion:
    found = session.scalar(
        select(FlowVersion).where(FlowVersion.flow == flow, FlowVersion.number == number)
    )
    if found is None:
        raise NotFound(f"Flow '{flow}' has no published version {number}.")
    return found


def _check_active_set(session: Session, *, replacing: FlowVersion) -> None:
    """Lint the active versions as they would be after `replacing` becomes active."""
    rows = {
        row.flow: row
        for row in session.scalars(select(FlowVersion).where(FlowVersion.is_active.is_(True)))
    }
    rows[replacing.flow] = replacing
    flows: dict[str, LoadedFlow] = {}
    try:
        triggers_row = rows.pop(TRIGGERS_ID, None)
        triggers = (
            load_triggers_text(triggers_row.source, f"{TRIGGERS_ID} v{triggers_row.number}")
            if triggers_row is not None
            else None
        )
        for flow_id, row in rows.items():
            flows[flow_id] = load_flow_text(row.source, f"{flow_id} v{row.number}")
    except ContentError as error:
        raise ContentRejected(error.findings) from None
    errors = [f for f in lint(flows, triggers, required_flows=()) if f.is_error]
    if errors:
        raise ContentRejected(errors)


class FlowStore:
    """The flows the conversation service runs: published versions from the database (cached;
    they never change), or the working copy in `dialogues/content/` for a flow that has never
    been published. Implements `dialogues.FlowSource`.

    Which version of each flow is active is read in one query and reused for
    `refresh_seconds` (a turn asks several times), so a publish or rollback by an editor
    reaches new conversations within that time; 0 reads it every time.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        working_copy: Path = CONTENT_DIR,
        refresh_seconds: float = 1.0,
    ) -> None:
        self._sessions = sessions
        self._working_dir = working_copy
        self._working: Library | None = None
        self._cache: dict[tuple[str, int], Flow] = {}
        self._triggers: dict[int, TriggersSpec] = {}
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self._refresh_seconds = refresh_seconds
        self._active: dict[str, int] = {}
        self._active_read_at: float | None = None

    def active(self, flow_id: str) -> Flow:
        """The active version of `flow_id` (the working copy if none was ever published)."""
        number = self._active_number(flow_id)
        if number is None:
            return self._working_flow(flow_id)
        return self.get(flow_id, number)

    def get(self, flow_id: str, number: int) -> Flow:
        """Version `number` of `flow_id` (0: the working copy); `UnknownFlowError` if absent."""
        if number == 0:
            return self._working_flow(flow_id)
        key = (flow_id, number)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        row = self._row(flow_id, number)
        try:
            loaded = load_flow_text(row.source, f"{flow_id} v{number}")
        except ContentError as error:
            raise UnknownFlowError(f"flow {flow_id} v{number} no longer loads: {error}") from None
        if loaded.content_hash != row.content_hash:
            # The code reads it differently than when it was published (a changed migration).
            log.warning("flow_store.hash_changed flow=%s number=%s", flow_id, number)
        flow = Flow(loaded.spec, row.content_hash, number)
        with self._lock:
            self._cache[key] = flow
        return flow

    def triggers(self) -> TriggersSpec:
        """The active triggers (the working copy's if they were never published)."""
        number = self._active_number(TRIGGERS_ID)
        if number is None:
            self._note_working_copy(TRIGGERS_ID)
            return self._working_library().triggers()
        with self._lock:
            cached = self._triggers.get(number)
        if cached is not None:
            return cached
        row = self._row(TRIGGERS_ID, number)
        try:
            spec = load_triggers_text(row.source, f"{TRIGGERS_ID} v{number}").spec
        except ContentError as error:
            raise UnknownFlowError(f"triggers v{number} no longer load: {error}") from None
        with self._lock:
            self._triggers[number] = spec
        return spec

    def warm(self) -> int:
        """Load the triggers and every active flow now (at start), so that the first turn
        after a start does not wait for it; returns how many flows loaded. A flow that no
        longer loads is logged and left to the turn that needs it."""
        self.triggers()
        with self._lock:
            published = set(self._active)
        ids = (published | set(self._working_library().flows)) - {TRIGGERS_ID}
        loaded = 0
        for flow_id in sorted(ids):
            try:
                self.active(flow_id)
                loaded += 1
            except (UnknownFlowError, ContentError) as error:
                log.warning(
                    "flow_store.warm_failed flow=%s error=%s", flow_id, type(error).__name__
                )
        return loaded

    def _active_number(self, flow_id: str) -> int | None:
        now = time.monotonic()
        with self._lock:
            read_at = self._active_read_at
            if read_at is not None and now - read_at < self._refresh_seconds:
                return self._active.get(flow_id)
        with self._sessions() as session:
            rows = session.execute(
                select(FlowVersion.flow, FlowVersion.number).where(FlowVersion.is_active.is_(True))
            ).all()
        active = {flow: number for flow, number in rows}
        with self._lock:
            self._active, self._active_read_at = active, now
        return active.get(flow_id)

    def _row(self, flow_id: str, number: int) -> FlowVersion:
        with self._sessions() as session:
            row = session.scalar(
                select(FlowVersion).where(FlowVersion.flow == flow_id, FlowVersion.number == number)
            )
            if row is None:
                raise UnknownFlowError(f"no published flow {flow_id} v{number}")
            session.expunge(row)
            return row

    def _working_library(self) -> Library:
        with self._lock:
            if self._working is None:
                self._working = load_library(self._working_dir)
            return self._working

    def _working_flow(self, flow_id: str) -> Flow:
        self._note_working_copy(flow_id)
        return self._working_library().active(flow_id)

    def _note_working_copy(self, flow_id: str) -> None:
        if flow_id not in self._warned:
            self._warned.add(flow_id)
            log.info("flow_store.working_copy flow=%s (never published)", flow_id)


__all__ = [
    "TRIGGERS_ID",
    "ContentRejected",
    "FlowStore",
    "diff",
    "history",
    "publish",
    "rollback",
]
