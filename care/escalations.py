"""Escalations: a girl's signal that her worker must see and answer.

`raise_escalation` writes the escalation row and the alert to her assigned worker in the
caller's transaction, so that one never exists without the other. `act` is what a worker's
button does (acknowledge, resolve, "I will call her"); a press for another organisation's
client or for a resolved escalation is refused with a clear sentence and audited, never
raised as an error (the refusal must be committed with its audit entry).

Room for the next issue: `next_step_at` is set from `settings.escalation` when an escalation
is raised and cleared when it is acknowledged, so re-notification, the backup worker and the
organisation's on-call can be scheduled from it here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from care import audit, outbox
from care.models import (
    Client,
    Escalation,
    EscalationStatus,
    OutboxMessage,
    OutboxPriority,
    OutboxStatus,
    Severity,
    Worker,
)
from care.settings import Settings
from care.texts import pick
from care.vault import Vault

SILENT_REASONS: frozenset[str] = frozenset({"duress"})
"""Reasons she must never be told about (her phone may be watched)."""

URGENT: frozenset[Severity] = frozenset({Severity.CRITICAL, Severity.HIGH})

_REASONS: dict[str, dict[str, str]] = {
    "crisis_danger": {"nl": "zegt dat ze nu in gevaar is", "en": "says she is in danger now"},
    "crisis_self_harm": {
        "nl": "schrijft over zichzelf iets aandoen",
        "en": "writes about harming herself",
    },
    "crisis_not_safe_place": {
        "nl": "is niet op een veilige plek",
        "en": "is not in a safe place",
    },
    "help_urgent": {"nl": "vraagt dringend om contact", "en": "asks for contact, urgently"},
    "help_contact": {"nl": "vraagt om contact (kan wachten)", "en": "asks for contact (can wait)"},
    "checkin_wants_contact": {
        "nl": "had een slechte dag en wil contact",
        "en": "had a bad day and wants contact",
    },
    "checkin_unsafe": {
        "nl": "voelt zich niet veilig (check-in)",
        "en": "does not feel safe (check-in)",
    },
    "checkin_unsure_safe": {
        "nl": "weet niet of ze veilig is (check-in)",
        "en": "is not sure she is safe (check-in)",
    },
    "safety_check_alert": {
        "nl": "schreef iets wat op gevaar wijst en wil dat je het weet",
        "en": "wrote something that sounds unsafe and wants you to know",
    },
    "safety_check_no_answer": {
        "nl": "schreef iets wat op gevaar wijst en antwoordt niet meer",
        "en": "wrote something that sounds unsafe and stopped answering",
    },
    "timeout_failed": {
        "nl": "antwoordde niet op een vraag van de app, en daarna liep de app vast. "
        "Kijk even hoe het met haar gaat",
        "en": "did not answer a question from the app, and then the app got stuck. "
        "Please check on her",
    },
    "duress": {
        "nl": "STIL ALARM: ze stuurde het noodwoord. Reageer niet via de bot; "
        "ze is misschien niet alleen.",
        "en": "SILENT ALARM: she sent the duress word. Do not answer through the bot; "
        "she may not be alone.",
    },
}

_SEVERITY: dict[Severity, dict[str, str]] = {
    Severity.CRITICAL: {"nl": "🔴 Kritiek", "en": "🔴 Critical"},
    Severity.HIGH: {"nl": "🟠 Hoog", "en": "🟠 High"},
    Severity.NORMAL: {"nl": "🟡 Normaal", "en": "🟡 Normal"},
    Severity.LOW: {"nl": "⚪ Laag", "en": "⚪ Low"},
}

_TEXTS: dict[str, dict[str, str]] = {
    "alert": {
        "nl": "{severity} — {alias}\n{reason}\nOm {time}. Escalatie #{id}.",
        "en": "{severity} — {alias}\n{reason}\nAt {time}. Escalation #{id}.",
    },
    "btn_ack": {"nl": "Gezien", "en": "Acknowledge"},
    "btn_call": {"nl": "Ik bel haar", "en": "I will call her"},
    "btn_resolve": {"nl": "Afgehandeld", "en": "Resolve"},
    "acknowledged": {
        "nl": "Escalatie #{id} ({alias}) staat op jouw naam als gezien.",
        "en": "Escalation #{id} ({alias}) is acknowledged by you.",
    },
    "already_acknowledged": {
        "nl": "Escalatie #{id} ({alias}) was al gezien door {by}.",
        "en": "Escalation #{id} ({alias}) was already acknowledged by {by}.",
    },
    "calling": {
        "nl": "Escalatie #{id} ({alias}): gezien. Ik heb haar laten weten dat je belt.",
        "en": "Escalation #{id} ({alias}): acknowledged. I told her that you will call.",
    },
    "calling_silent": {
        "nl": "Escalatie #{id} ({alias}): gezien. Ik heb haar niets gestuurd (stil alarm).",
        "en": "Escalation #{id} ({alias}): acknowledged. I sent her nothing (silent alarm).",
    },
    "resolved": {
        "nl": "Escalatie #{id} ({alias}) is afgehandeld.",
        "en": "Escalation #{id} ({alias}) is resolved.",
    },
    "refused_resolved": {
        "nl": "Escalatie #{id} is al afgehandeld; er verandert niets.",
        "en": "Escalation #{id} is already resolved; nothing changes.",
    },
    "refused_foreign": {
        "nl": "Dit kan ik niet doen: deze knop hoort niet bij een cliënt van jouw organisatie.",
        "en": "I cannot do that: this button does not belong to a client of your organisation.",
    },
    "seen_by": {"nl": "👀 Gezien door {name}", "en": "👀 Acknowledged by {name}"},
    "resolved_by": {"nl": "✅ Afgehandeld door {name}", "en": "✅ Resolved by {name}"},
    "client_seen": {
        "nl": "{worker_name} heeft je bericht gezien.",
        "en": "{worker_name} has seen your message.",
    },
    "client_call": {
        "nl": "{worker_name} belt je zo.",
        "en": "{worker_name} will call you soon.",
    },
}


def _t(key: str, lang: str, **values: Any) -> str:
    return pick(_TEXTS, key, lang, **values)


def first_name(worker: Worker) -> str:
    """How a girl is told about her worker: the first word of the worker's name."""
    return worker.name.split()[0] if worker.name.split() else worker.name


def reason_text(reason: str, lang: str) -> str:
    """A sentence for a worker that says why an escalation was raised."""
    known = _REASONS.get(reason)
    if known is None:
        return reason.replace("_", " ")
    return known.get(lang) or known["nl"]


def severity_text(severity: Severity, lang: str) -> str:
    """The severity as a worker reads it."""
    return _SEVERITY[severity].get(lang) or _SEVERITY[severity]["nl"]


def local_time(moment: datetime, settings: Settings) -> str:
    """A time for a worker: day-month hour:minute in the organisation's time zone."""
    return moment.astimezone(ZoneInfo(settings.timezone)).strftime("%d-%m %H:%M")


class Action(enum.StrEnum):
    """What a worker's button on an alert does; the value goes into the callback data."""

    ACKNOWLEDGE = "ack"
    RESOLVE = "res"
    CALL = "call"


CALLBACK_PREFIX = "esc"


def callback_data(action: Action, escalation_id: int) -> str:
    """The short callback data of an alert button, e.g. `esc:ack:12`."""
    return f"{CALLBACK_PREFIX}:{action.value}:{escalation_id}"


def parse_callback(data: str) -> tuple[Action, int] | None:
    """The action and escalation id of alert callback data, or None when it is not one."""
    parts = data.split(":")
    if len(parts) != 3 or parts[0] != CALLBACK_PREFIX or not parts[2].isdigit():
        return None
    try:
        action = Action(parts[1])
    except ValueError:
        return None
    return action, int(parts[2])


def alert_buttons(escalation: Escalation, lang: str) -> list[list[list[str]]]:
    """The alert's inline buttons as payload rows: acknowledge / I will call her / resolve.

    Once acknowledged, the acknowledge button is left out.
    """
    first = [[callback_data(Action.CALL, escalation.id), _t("btn_call", lang)]]
    if escalation.acknowledged_at is None:
        first.insert(0, [callback_data(Action.ACKNOWLEDGE, escalation.id), _t("btn_ack", lang)])
    return [first, [[callback_data(Action.RESOLVE, escalation.id), _t("btn_resolve", lang)]]]


def alert_text(escalation: Escalation, client: Client, lang: str, settings: Settings) -> str:
    """The alert a worker reads: how urgent, who (alias), why, when."""
    return _t(
        "alert",
        lang,
        severity=severity_text(escalation.severity, lang),
        alias=client.alias,
        reason=reason_text(escalation.reason, lang),
        time=local_time(escalation.created_at, settings),
        id=escalation.id,
    )


def raise_escalation(
    session: Session,
    vault: Vault,
    settings: Settings,
    client: Client,
    severity: Severity,
    reason: str,
    *,
    now: datetime,
) -> Escalation:
    """Create an escalation and the alert to her assigned worker, in the caller's transaction."""
    worker = session.get(Worker, client.assigned_worker_id)
    if worker is None:  # the foreign key makes this impossible; keep the message clear anyway
        raise LookupError(f"client {client.id} has no assigned worker")
    minutes = settings.escalation.acknowledge_within_minutes.get(severity.value, 60)
    escalation = Escalation(
        client_id=client.id,
        worker_id=worker.id,
        severity=severity,
        reason=reason[:40],
        status=EscalationStatus.OPEN,
        created_at=now,
        next_step_at=now + timedelta(minutes=minutes),
        step=0,
    )
    session.add(escalation)
    session.flush()
    payload = {
        "type": "text",
        "text": alert_text(escalation, client, worker.language, settings),
        "buttons": alert_buttons(escalation, worker.language),
    }
    outbox.enqueue(
        session,
        vault,
        worker,
        payload,
        kind="alert",
        priority=OutboxPriority.CRITICAL if severity in URGENT else OutboxPriority.NOTICE,
        escalation_id=escalation.id,
        client_id=client.id,
    )
    audit.record(
        session,
        "system",
        "escalation.raise",
        client_alias=client.alias,
        responsible_worker_id=worker.id,
        detail=f"escalation:{escalation.id} severity:{severity.value} reason:{escalation.reason}",
    )
    return escalation


@dataclass(frozen=True)
class Outcome:
    """What a worker's button did: whether it changed anything and what to tell the worker."""

    done: bool
    message: str
    escalation_id: int | None = None


def act(
    session: Session,
    vault: Vault,
    worker: Worker,
    escalation_id: int,
    action: Action,
    *,
    now: datetime,
    settings: Settings,
) -> Outcome:
    """Acknowledge, resolve or "I will call her" for one escalation, as this worker.

    Refused (nothing changes; audited) when the escalation is unknown, belongs to a client of
    another organisation, or is already resolved.
    """
    lang = worker.language
    actor = f"worker:{worker.id}"
    escalation = session.get(Escalation, escalation_id, with_for_update=True)
    client = session.get(Client, escalation.client_id) if escalation is not None else None
    if escalation is None or client is None or client.org_id != worker.org_id:
        audit.record(
            session,
            actor,
            "escalation.refused",
            detail=f"escalation:{escalation_id} action:{action.value} reason:foreign",
        )
        return Outcome(False, _t("refused_foreign", lang))
    if escalation.status is EscalationStatus.RESOLVED:
        audit.record(
            session,
            actor,
            "escalation.refused",
            client_alias=client.alias,
            responsible_worker_id=escalation.worker_id,
            detail=f"escalation:{escalation.id} action:{action.value} reason:resolved",
        )
        return Outcome(False, _t("refused_resolved", lang, id=escalation.id), escalation.id)

    values = {"id": escalation.id, "alias": client.alias}
    silent = escalation.reason in SILENT_REASONS
    if action is Action.RESOLVE:
        if escalation.acknowledged_at is None:
            escalation.acknowledged_at, escalation.acknowledged_by = now, worker.id
        escalation.status = EscalationStatus.RESOLVED
        escalation.resolved_at, escalation.resolved_by = now, worker.id
        escalation.next_step_at = None
        _audit(session, actor, "escalation.resolve", client, escalation)
        _update_alerts(session, vault, settings, escalation, client, worker)
        return Outcome(True, _t("resolved", lang, **values), escalation.id)

    already = escalation.status is EscalationStatus.ACKNOWLEDGED
    if not already:
        escalation.status = EscalationStatus.ACKNOWLEDGED
        escalation.acknowledged_at, escalation.acknowledged_by = now, worker.id
        escalation.next_step_at = None
        _audit(session, actor, "escalation.acknowledge", client, escalation)
        _update_alerts(session, vault, settings, escalation, client, worker)
    if action is Action.CALL:
        if not silent:
            _tell_client(session, vault, client, worker, "client_call")
        _audit(session, actor, "escalation.will_call", client, escalation)
        key = "calling_silent" if silent else "calling"
        return Outcome(True, _t(key, lang, **values), escalation.id)
    if already:
        by = session.get(Worker, escalation.acknowledged_by) if escalation.acknowledged_by else None
        return Outcome(
            False,
            _t("already_acknowledged", lang, by=by.name if by else "?", **values),
            escalation.id,
        )
    if not silent:
        _tell_client(session, vault, client, worker, "client_seen")
    return Outcome(True, _t("acknowledged", lang, **values), escalation.id)


def _update_alerts(
    session: Session,
    vault: Vault,
    settings: Settings,
    escalation: Escalation,
    client: Client,
    by: Worker,
) -> None:
    """Show on every alert already sent who took it; resolved alerts lose their buttons."""
    rows = session.scalars(
        select(OutboxMessage).where(
            OutboxMessage.escalation_id == escalation.id,
            OutboxMessage.kind == "alert",
            OutboxMessage.status == OutboxStatus.SENT,
            OutboxMessage.channel_message_id.is_not(None),
        )
    ).all()
    for row in rows:
        recipient = session.get(Worker, row.recipient_id)
        if recipient is None or recipient.chat_id_enc is None:
            continue
        lang = recipient.language
        resolved = escalation.status is EscalationStatus.RESOLVED
        mark = _t("resolved_by" if resolved else "seen_by", lang, name=by.name)
        # Acknowledged by now, so the layout has no acknowledge button: one row of the rest.
        layout = alert_buttons(escalation, lang)
        buttons = [] if resolved else [button for line in layout for button in line]
        payload: dict[str, Any] = {
            "type": "edit",
            "message_id": row.channel_message_id,
            "text": alert_text(escalation, client, lang, settings) + "\n" + mark,
            "buttons": [buttons] if buttons else [],
        }
        outbox.enqueue(
            session,
            vault,
            recipient,
            payload,
            kind="alert_edit",
            priority=OutboxPriority.NOTICE,
            escalation_id=escalation.id,
            client_id=client.id,
        )


def _audit(
    session: Session, actor: str, action: str, client: Client, escalation: Escalation
) -> None:
    audit.record(
        session,
        actor,
        action,
        client_alias=client.alias,
        responsible_worker_id=escalation.worker_id,
        detail=f"escalation:{escalation.id}",
    )


def _tell_client(session: Session, vault: Vault, client: Client, worker: Worker, key: str) -> None:
    """Tell her the truth about what happens next, when she can be reached."""
    if client.chat_id_enc is None or client.unreachable or client.data_key_id is None:
        return
    text = _t(key, client.language, worker_name=first_name(worker))
    outbox.enqueue(
        session, vault, client, {"type": "text", "text": text}, kind="reply", client_id=client.id
    )


def open_for_org(session: Session, org_id: int, limit: int = 20) -> list[tuple[Escalation, Client]]:
    """Escalations not yet resolved for clients of one organisation, most urgent first."""
    order = {Severity.CRITICAL: 0, Severity.HIGH: 1, Severity.NORMAL: 2, Severity.LOW: 3}
    rows = session.execute(
        select(Escalation, Client)
        .join(Client, Escalation.client_id == Client.id)
        .where(Client.org_id == org_id, Escalation.status != EscalationStatus.RESOLVED)
        .order_by(Escalation.created_at.desc())
        .limit(200)
    ).all()
    found = [(e, c) for e, c in rows]
    found.sort(key=lambda pair: (order[pair[0].severity], -pair[0].id))
    return found[:limit]
