"""The tables. SQLAlchemy owns every table of the application here.

Free text (her answers, notes, places, outgoing message texts, dialogue session state) is
stored only as ciphertext (`*_enc` columns), encrypted with the data key of the person it is
about (see `care.vault`). Telegram chat ids and one-time codes are stored encrypted and found
through a blind index (`*_index`). All times are UTC.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    Unicode,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back as an aware UTC datetime."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where an aware UTC time is needed")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [m.value for m in members],
    )


class Base(DeclarativeBase):
    """Declarative base with named constraints (needed for SQLite batch migrations)."""

    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime()}


class WorkerRole(enum.StrEnum):
    """What a worker may do."""

    WORKER = "worker"
    COORDINATOR = "coordinator"
    ADMIN = "admin"


class ClientStatus(enum.StrEnum):
    """Where a client is in her time with the bot."""

    INVITED = "invited"
    ACTIVE = "active"
    PAUSED = "paused"
    ENDED = "ended"


class CodeKind(enum.StrEnum):
    """Who a one-time code links."""

    WORKER = "worker"
    CLIENT = "client"


class AppointmentStatus(enum.StrEnum):
    """The state of an appointment."""

    PLANNED = "planned"
    CONFIRMED = "confirmed"
    CANT_COME = "cant_come"
    CANCELLED = "cancelled"


class CheckInStatus(enum.StrEnum):
    """The state of one check-in."""

    SCHEDULED = "scheduled"
    SENT = "sent"
    ANSWERED = "answered"
    MISSED = "missed"
    SKIPPED = "skipped"


class Severity(enum.StrEnum):
    """How urgent an escalation is."""

    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class EscalationStatus(enum.StrEnum):
    """The state of an escalation."""

    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class RecipientKind(enum.StrEnum):
    """Who an outbox message goes to."""

    CLIENT = "client"
    WORKER = "worker"


class OutboxStatus(enum.StrEnum):
    """The state of an outbox message."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    CANCELLED = "cancelled"


class OutboxPriority(enum.IntEnum):
    """Lower goes first: critical escalations, then replies, then notices, then reminders."""

    CRITICAL = 0
    REPLY = 10
    NOTICE = 20
    REMINDER = 30


class Organisation(Base):
    """A care provider."""

    __tablename__ = "organisations"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    phone: Mapped[str | None] = mapped_column(String(32))
    duress_index: Mapped[str | None] = mapped_column(String(64))
    oncall_worker_id: Mapped[int | None] = mapped_column(
        ForeignKey("workers.id", use_alter=True, ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DataKey(Base):
    """A person's data key, wrapped by a master key. Erasing it (`care.vault.Vault.erase`)
    erases her data; the row stays, so that its id is never another key's."""

    __tablename__ = "data_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    master_key_id: Mapped[str] = mapped_column(String(40), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Worker(Base):
    """An aftercare worker, coordinator/on-call or admin of one organisation."""

    __tablename__ = "workers"
    __table_args__ = (UniqueConstraint("org_id", "name", name="uq_workers_org_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), index=True)
    name: Mapped[str] = mapped_column(String(80))
    role: Mapped[WorkerRole] = mapped_column(_enum(WorkerRole, "worker_role"))
    language: Mapped[str] = mapped_column(String(8), default="nl")
    chat_index: Mapped[str | None] = mapped_column(String(64), unique=True)
    chat_id_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    data_key_id: Mapped[int | None] = mapped_column(ForeignKey("data_keys.id", ondelete="SET NULL"))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    organisation: Mapped[Organisation] = relationship(foreign_keys=[org_id])


class Client(Base):
    """A girl in aftercare, known only by a pseudonymous alias."""

    __tablename__ = "clients"
    __table_args__ = (UniqueConstraint("org_id", "alias", name="uq_clients_org_alias"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), index=True)
    alias: Mapped[str] = mapped_column(String(40))
    language: Mapped[str] = mapped_column(String(8))
    timezone: Mapped[str] = mapped_column(String(64))
    status: Mapped[ClientStatus] = mapped_column(
        _enum(ClientStatus, "client_status"), default=ClientStatus.INVITED
    )
    assigned_worker_id: Mapped[int] = mapped_column(ForeignKey("workers.id"), index=True)
    backup_worker_id: Mapped[int | None] = mapped_column(
        ForeignKey("workers.id", ondelete="SET NULL")
    )
    chat_index: Mapped[str | None] = mapped_column(String(64), unique=True)
    chat_id_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    data_key_id: Mapped[int | None] = mapped_column(ForeignKey("data_keys.id", ondelete="SET NULL"))
    # Check-in schedule: weekdays ("mon,thu"), local time, quiet hours ("22:00-08:00").
    checkin_days: Mapped[str] = mapped_column(String(32), default="mon,thu")
    checkin_time: Mapped[str] = mapped_column(String(5), default="16:00")
    quiet_hours: Mapped[str | None] = mapped_column(String(11))
    auto_delete_hours: Mapped[int | None] = mapped_column(Integer)
    unreachable: Mapped[bool] = mapped_column(Boolean, default=False)
    missed_checkins: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    enrolled_at: Mapped[datetime | None] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column()

    organisation: Mapped[Organisation] = relationship(foreign_keys=[org_id])
    assigned_worker: Mapped[Worker] = relationship(foreign_keys=[assigned_worker_id])
    backup_worker: Mapped[Worker | None] = relationship(foreign_keys=[backup_worker_id])


class OneTimeCode(Base):
    """A single-use, expiring code that links a worker's or client's Telegram."""

    __tablename__ = "one_time_codes"

    id: Mapped[int] = mapped_column(primary_key=True)
    code_index: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[CodeKind] = mapped_column(_enum(CodeKind, "code_kind"))
    worker_id: Mapped[int | None] = mapped_column(ForeignKey("workers.id", ondelete="CASCADE"))
    client_id: Mapped[int | None] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column()


class Appointment(Base):
    """An appointment between a client and a worker."""

    __tablename__ = "appointments"

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    worker_id: Mapped[int] = mapped_column(ForeignKey("workers.id"))
    starts_at: Mapped[datetime] = mapped_column(index=True)
    place_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    status: Mapped[AppointmentStatus] = mapped_column(
        _enum(AppointmentStatus, "appointment_status"), default=AppointmentStatus.PLANNED
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class CheckIn(Base):
    """One check-in: when it was due, whether and how she answered."""

    __tablename__ = "checkins"

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    due_at: Mapped[datetime] = mapped_column()
    sent_at: Mapped[datetime | None] = mapped_column()
    answered_at: Mapped[datetime | None] = mapped_column()
    status: Mapped[CheckInStatus] = mapped_column(
        _enum(CheckInStatus, "checkin_status"), default=CheckInStatus.SCHEDULED
    )
    mood: Mapped[str | None] = mapped_column(String(16))
    feels_safe: Mapped[bool | None] = mapped_column(Boolean)
    answer_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    skip_reason: Mapped[str | None] = mapped_column(String(40))


class Escalation(Base):
    """A signal from a girl that a worker must see and answer."""

    __tablename__ = "escalations"

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    worker_id: Mapped[int] = mapped_column(ForeignKey("workers.id"), index=True)
    severity: Mapped[Severity] = mapped_column(_enum(Severity, "severity"))
    reason: Mapped[str] = mapped_column(String(40))
    status: Mapped[EscalationStatus] = mapped_column(
        _enum(EscalationStatus, "escalation_status"), default=EscalationStatus.OPEN, index=True
    )
    detail_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    acknowledged_at: Mapped[datetime | None] = mapped_column()
    acknowledged_by: Mapped[int | None] = mapped_column(ForeignKey("workers.id"))
    resolved_at: Mapped[datetime | None] = mapped_column()
    resolved_by: Mapped[int | None] = mapped_column(ForeignKey("workers.id"))
    # The next step (re-notify, backup, on-call) and how many were taken.
    next_step_at: Mapped[datetime | None] = mapped_column()
    step: Mapped[int] = mapped_column(Integer, default=0)


class DialogueSession(Base):
    """The dialogue a client is in; its state (JSON) is encrypted, it holds her answers."""

    __tablename__ = "dialogue_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int] = mapped_column(
        ForeignKey("clients.id", ondelete="CASCADE"), unique=True
    )
    flow: Mapped[str] = mapped_column(String(64))
    flow_version: Mapped[int | None] = mapped_column(Integer)
    state_enc: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    timeout_at: Mapped[datetime | None] = mapped_column(index=True)
    """When the question she has not answered times out (its node's `timeout_minutes`), or
    the alert of a question she left for another flow is due, whichever comes first; None
    while nothing waits for her, or what waits never times out."""


class OutboxMessage(Base):
    """A message that must reach a person, written in the transaction that decided it."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "status", "priority", "not_before", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    recipient_kind: Mapped[RecipientKind] = mapped_column(_enum(RecipientKind, "recipient_kind"))
    recipient_id: Mapped[int] = mapped_column(Integer)
    client_id: Mapped[int | None] = mapped_column(
        ForeignKey("clients.id", ondelete="CASCADE"), index=True
    )
    data_key_id: Mapped[int | None] = mapped_column(ForeignKey("data_keys.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(24))
    priority: Mapped[int] = mapped_column(Integer, default=OutboxPriority.REPLY)
    payload_enc: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[OutboxStatus] = mapped_column(
        _enum(OutboxStatus, "outbox_status"), default=OutboxStatus.PENDING
    )
    dedupe_key: Mapped[str | None] = mapped_column(String(80), unique=True)
    escalation_id: Mapped[int | None] = mapped_column(
        ForeignKey("escalations.id", ondelete="SET NULL")
    )
    not_before: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column()
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None] = mapped_column()
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column()
    channel_message_id: Mapped[int | None] = mapped_column(BigInteger)


class ChatMessage(Base):
    """A message id visible in her chat (hers or the bot's), kept so that wipe can delete it."""

    __tablename__ = "chat_messages"
    __table_args__ = (
        UniqueConstraint("client_id", "message_id", name="uq_chat_messages_client_message"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    message_id: Mapped[int] = mapped_column(BigInteger)
    from_bot: Mapped[bool] = mapped_column(Boolean)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column()


class ProcessedUpdate(Base):
    """A channel update already handled, so that a redelivery is processed once."""

    __tablename__ = "processed_updates"

    update_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    processed_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class AuditEntry(Base):
    """An append-only, hash-chained record of who read or changed a client's data."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    client_alias: Mapped[str | None] = mapped_column(String(40))
    responsible_worker_id: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str | None] = mapped_column(String(200))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class FlowVersion(Base):
    """An immutable published version of one dialogue flow."""

    __tablename__ = "flow_versions"
    __table_args__ = (UniqueConstraint("flow", "number", name="uq_flow_versions_flow_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    flow: Mapped[str] = mapped_column(String(64), index=True)
    number: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64))
    spec_version: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(Text)
    publisher: Mapped[str] = mapped_column(String(80))
    published_at: Mapped[datetime] = mapped_column(default=utcnow)
    note: Mapped[str | None] = mapped_column(String(500))
    is_active: Mapped[bool] = mapped_column(Boolean, default=False)


# --- Reminders and the outbox sender --------------------------------------------------------

# The outbox sender claims only the oldest unsent row of each recipient (order per chat); this
# index makes that look-up cheap when thousands of rows are due at once.
Index(
    "ix_outbox_recipient",
    OutboxMessage.recipient_kind,
    OutboxMessage.recipient_id,
    OutboxMessage.status,
)


class SchedulerLock(Base):
    """A lease on running the scheduler (SQLite; PostgreSQL uses an advisory lock).

    The holder renews `expires_at` with a heartbeat; another process may take the lease
    over only after it expired.
    """

    __tablename__ = "scheduler_locks"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    holder: Mapped[str] = mapped_column(String(80))
    acquired_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()


class SkippedSend(Base):
    """A reminder, check-in or message that was not sent, and why; her worker can see these."""

    __tablename__ = "skipped_sends"

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(String(32))
    due_at: Mapped[datetime | None] = mapped_column()
    ref: Mapped[str | None] = mapped_column(String(80))
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)


# The job table of APScheduler's SQLAlchemyJobStore, declared here so that migrations own it
# and reminders can write a job in the same transaction as the appointment it belongs to.
scheduler_jobs = Table(
    "scheduler_jobs",
    Base.metadata,
    Column("id", Unicode(191), primary_key=True),
    Column("next_run_time", Float(25), index=True),
    Column("job_state", LargeBinary, nullable=False),
)
