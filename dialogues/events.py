"""What the engine asks its host to do: small frozen dataclasses, serialisable to plain dicts.

The engine never sends or stores anything itself; it returns these, in order, and the host
applies them in one transaction (reply, escalation rows, fields, status).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from dialogues.errors import SessionError

EscalationSeverity = Literal["critical", "high", "normal", "low"]
ClientStatus = Literal["paused", "active", "stopped"]


@dataclass(frozen=True)
class Choice:
    """A button: `id` goes into the callback data (never text), `label` is what she sees."""

    id: str
    label: str


@dataclass(frozen=True)
class Say:
    """Send her this text, with these buttons (possibly none)."""

    text: str
    choices: tuple[Choice, ...] = ()


@dataclass(frozen=True)
class Escalate:
    """Open an escalation to her worker."""

    severity: EscalationSeverity
    reason: str


@dataclass(frozen=True)
class NotifyWorker:
    """Send her worker a non-urgent notice (no acknowledgement chain)."""

    reason: str


@dataclass(frozen=True)
class SetField:
    """Save a field about her, such as `mood` or `safe`."""

    name: str
    value: str | bool | int


@dataclass(frozen=True)
class EndFlow:
    """The flow reached its end (not sent when another flow interrupts it)."""

    flow: str


@dataclass(frozen=True)
class Wipe:
    """Erase her data and delete the visible chat."""


@dataclass(frozen=True)
class SetLanguage:
    """Speak this language with her from now on."""

    lang: str


@dataclass(frozen=True)
class SetStatus:
    """Pause, stop or resume the bot's own messages (check-ins, reminders) to her."""

    status: ClientStatus


Event = Say | Escalate | NotifyWorker | SetField | EndFlow | Wipe | SetLanguage | SetStatus

_TYPES: dict[str, type[Any]] = {
    "say": Say,
    "escalate": Escalate,
    "notify_worker": NotifyWorker,
    "set_field": SetField,
    "end_flow": EndFlow,
    "wipe": Wipe,
    "set_language": SetLanguage,
    "set_status": SetStatus,
}
_NAMES = {cls: name for name, cls in _TYPES.items()}


def event_to_dict(event: Event) -> dict[str, Any]:
    """A plain dict with a `type` key, e.g. `{"type": "escalate", "severity": "high", ...}`."""
    data = asdict(event)
    if isinstance(event, Say):
        data["choices"] = [{"id": c.id, "label": c.label} for c in event.choices]
    return {"type": _NAMES[type(event)], **data}


def event_from_dict(data: dict[str, Any]) -> Event:
    """The event that `event_to_dict` made this dict from."""
    try:
        cls = _TYPES[data["type"]]
        values = {f.name: data[f.name] for f in fields(cls)}
        if cls is Say:
            values["choices"] = tuple(Choice(c["id"], c["label"]) for c in values["choices"])
        event: Event = cls(**values)
    except (KeyError, TypeError) as error:
        raise SessionError(f"not an event: missing or unknown {error}") from None
    return event
