"""The dialogue format at the current `spec_version`: pydantic models of flow and triggers files.

A flow file::

    spec_version: 3
    flow: checkin
    title: Check-in
    languages: [nl, en]
    start: ask_mood
    nodes:
      ask_mood:
        kind: ask
        text: {nl: "Hoe gaat het?", en: "How are you?"}
        save_as: mood
        buttons:
          - {id: good, label: {nl: Goed, en: Good}, next: glad}
        intents: {mood_bad: bad_day}
        otherwise: not_sure

Node kinds: say, ask, set, escalate, notify, branch, jump, wipe, language, status, end.
Older files are migrated to this shape by `dialogues.migrations` before these models see them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

CURRENT_SPEC_VERSION = 3
"""The `spec_version` this code writes and runs; older files are migrated, newer ones refused."""

LANGUAGES: tuple[str, ...] = ("nl", "en")
"""Languages the bot speaks; `nl` is the default."""

PLACEHOLDERS: frozenset[str] = frozenset(
    {"alias", "worker_name", "appointment_time", "appointment_place", "org_name", "org_phone"}
)
"""Named placeholders a text may use, filled by the host from the client's context."""

FLAGS: frozenset[str] = frozenset({"office_hours", "has_alias", "has_appointment", "stopped"})
"""Context flags a `branch` node may test; the host sets them as booleans."""

SEVERITIES = ("critical", "high", "normal", "low")
"""Escalation severities, most urgent first."""

REQUIRED_FLOWS: frozenset[str] = frozenset(
    {
        "onboarding",
        "checkin",
        "appointment_reminder",
        "help",
        "crisis",
        "safety_check",
        "pause",
        "stop",
        "wipe",
        "language",
        "fallback",
    }
)
"""Flow ids the rest of the system starts by name; bundled content must have all of them."""

Id = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
ButtonId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_]{0,15}$")]
Code = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,47}$")]
Lang = Literal["nl", "en"]
Text = dict[str, Annotated[str, StringConstraints(min_length=1, max_length=1000)]]
"""A text per language: `{nl: ..., en: ...}`."""
Label = dict[str, Annotated[str, StringConstraints(min_length=1, max_length=40)]]
"""A button label per language; short, so it fits on a phone."""


MAX_TIMEOUT_MINUTES = 7 * 24 * 60
"""The longest a question may wait for her before its `timeout` (a week)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Button(_Model):
    """A button under a question. Its `id` goes into the callback data, never its label.

    `value` is what the question's `save_as` field gets when she picks it (no value: nothing
    is saved); `intent` lets a typed answer with that NLU intent count as this button.
    """

    id: ButtonId
    label: Label
    next: Id | None = None
    value: Code | None = None
    intent: Code | None = None


class _Waiting(_Model):
    text: Text
    buttons: tuple[Button, ...] = ()
    timeout: Id | None = None
    """Where the flow goes when she does not answer within `timeout_minutes`."""
    timeout_minutes: Annotated[int, Field(ge=1, le=MAX_TIMEOUT_MINUTES)] | None = None
    """How long the question waits for her; without it, `timeout` never happens."""
    reask: Text | None = None


class SayNode(_Waiting):
    """Say something; with buttons it waits for one of them, otherwise it goes on to `next`."""

    kind: Literal["say"]
    next: Id | None = None


class AskNode(_Waiting):
    """Ask a question: buttons and/or free text routed by NLU intent, else `otherwise`."""

    kind: Literal["ask"]
    intents: dict[Code, Id] = Field(default_factory=dict)
    otherwise: Id | None = None
    next: Id | None = None
    save_as: Code | None = None
    save_text_as: Code | None = None
    """Save a free-text answer that went to `otherwise` (e.g. her alias); the host stores it
    encrypted and never logs it."""


class SetNode(_Model):
    """Save fields about her (for example `mood`), then go on."""

    kind: Literal["set"]
    fields: dict[Code, str | bool | int]
    next: Id | None = None


class EscalateNode(_Model):
    """Raise an escalation to her worker with a severity and a reason code, then go on."""

    kind: Literal["escalate"]
    severity: Literal["critical", "high", "normal", "low"]
    reason: Code
    next: Id | None = None


class NotifyNode(_Model):
    """Send her worker a non-urgent notice (for example: she cannot come), then go on."""

    kind: Literal["notify"]
    reason: Code
    next: Id | None = None


class BranchNode(_Model):
    """Go one way or the other on a context flag such as `office_hours`."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)

    kind: Literal["branch"]
    flag: Code
    then: Id
    else_: Id = Field(alias="else")


class JumpNode(_Model):
    """Go to another node of this flow, or to another flow (at its start or a named node)."""

    kind: Literal["jump"]
    node: Id | None = None
    flow: Id | None = None


class WipeNode(_Model):
    """Ask the host to wipe her data and the visible chat, then go on."""

    kind: Literal["wipe"]
    next: Id | None = None


class LanguageNode(_Model):
    """Switch the language the bot speaks with her, then go on."""

    kind: Literal["language"]
    lang: Lang
    next: Id | None = None


class StatusNode(_Model):
    """Pause, stop or re-activate the bot's own messages to her, then go on."""

    kind: Literal["status"]
    status: Literal["paused", "active", "stopped"]
    next: Id | None = None


class EndNode(_Model):
    """The end of the flow."""

    kind: Literal["end"]


Node = Annotated[
    SayNode
    | AskNode
    | SetNode
    | EscalateNode
    | NotifyNode
    | BranchNode
    | JumpNode
    | WipeNode
    | LanguageNode
    | StatusNode
    | EndNode,
    Field(discriminator="kind"),
]
NODE_KINDS = (
    "say",
    "ask",
    "set",
    "escalate",
    "notify",
    "branch",
    "jump",
    "wipe",
    "language",
    "status",
    "end",
)
WaitingNode = SayNode | AskNode


class FlowSpec(_Model):
    """One flow file."""

    spec_version: int
    flow: Id
    title: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    description: str | None = None
    discreet: bool = True
    """Texts avoid words that reveal what the chat is about (the linter checks). Only the
    crisis flow turns this off, because it must name the services that can help."""
    languages: tuple[Lang, ...] = Field(min_length=1)
    start: Id
    nodes: dict[Id, Node] = Field(min_length=1)


class IntentTrigger(_Model):
    """A global intent that starts a flow.

    `when` says when it may interrupt: `always` (even if the current question has an answer
    for this intent), `unless_handled` (unless the current question routes this intent
    itself), or `idle` (only when no question is waiting, e.g. a greeting).
    """

    intent: Code
    flow: Id
    node: Id | None = None
    min_confidence: float = Field(default=0.5, ge=0.0, le=1.0)
    when: Literal["always", "unless_handled", "idle"] = "unless_handled"


class SafetyTrigger(_Model):
    """A safety-lexicon verdict that interrupts the running flow; always wins."""

    severity: Literal["critical", "high"]
    category: Code | None = None
    flow: Id
    node: Id | None = None


class EngineTexts(_Model):
    """What the engine itself says when a button is stale or an answer does not fit."""

    stale_choice: Text
    reask: Text


class TriggersSpec(_Model):
    """The triggers file: commands, intents and safety verdicts that start flows anywhere."""

    spec_version: int
    commands: dict[Code, Id]
    intents: tuple[IntentTrigger, ...] = ()
    safety: tuple[SafetyTrigger, ...]
    not_understood: Id
    stale_choice_node: Id | None = None
    """Where in the `not_understood` flow an old button lands while no question waits (her
    tap was understood, only too late): default its start."""
    texts: EngineTexts


def waits(node: Node) -> bool:
    """True when the engine stops at this node to wait for her answer."""
    return isinstance(node, AskNode) or (isinstance(node, SayNode) and bool(node.buttons))
