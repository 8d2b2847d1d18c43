"""The dialogue engine: pure and deterministic.

`start(flow, context, lang)` and `resume(session, input, flows, context)` return a `Step`: the
new `Session` and the events for the host to apply. No I/O, no clock, no randomness, no
Telegram; the same session, input, flows and context always give the same step.

Buttons: each choice id is `<tag>.<button id>`, where the tag is a short hash of the flow, node
and turn the question was asked on. A button from an old message or another flow (or a forged
one) therefore does not match the waiting question and gets a gentle re-ask, never a crash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dialogues.errors import FlowLoopError, SessionError, UnknownFlowError
from dialogues.events import (
    Choice,
    EndFlow,
    Escalate,
    Event,
    NotifyWorker,
    Say,
    SetField,
    SetLanguage,
    SetStatus,
    Wipe,
)
from dialogues.flow import Flow, FlowSource
from dialogues.inputs import ChoiceInput, CommandInput, Input, TextInput, TimeoutInput
from dialogues.spec import (
    LANGUAGES,
    AskNode,
    BranchNode,
    Button,
    EndNode,
    EscalateNode,
    JumpNode,
    LanguageNode,
    NotifyNode,
    SayNode,
    SetNode,
    StatusNode,
    TriggersSpec,
    WipeNode,
)

Context = Mapping[str, str | bool]
"""Placeholder values (already formatted in her language and time zone) and flags such as
`office_hours`, filled by the host."""

MAX_STEPS = 200
"""Steps one call may run without waiting for her; more means a loop the linter should catch."""

SESSION_FORMAT = 1

MAX_SAVED_TEXT = 40
"""A free-text answer saved as a field (an alias) is cut to this many characters."""


@dataclass(frozen=True)
class Session:
    """Where she is in a conversation. `node` is the question waiting for her answer, or None
    when the flow has ended. `version` and `content_hash` pin the flow version it runs on."""

    flow: str
    version: int
    content_hash: str
    lang: str
    node: str | None
    turn: int = 0

    @property
    def waiting(self) -> bool:
        """True while a question waits for her answer."""
        return self.node is not None

    def to_json(self) -> str:
        """A compact JSON text (no message text in it, ever)."""
        data = {"format": SESSION_FORMAT, **self.__dict__}
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Session:
        """The session `to_json` wrote; `SessionError` for anything else."""
        try:
            data: Any = json.loads(text)
            if data.pop("format") != SESSION_FORMAT:
                raise SessionError("session written in another format")
            session = cls(**data)
        except (ValueError, TypeError, KeyError, AttributeError):
            raise SessionError("stored session is not readable") from None
        texts = (session.flow, session.content_hash, session.lang)
        numbers = (session.version, session.turn)
        if not (
            all(isinstance(value, str) for value in texts)
            and all(isinstance(value, int) and not isinstance(value, bool) for value in numbers)
            and isinstance(session.node, str | None)
        ):
            raise SessionError("stored session has fields of the wrong type")
        return session


@dataclass(frozen=True)
class Step:
    """The result of `start` or `resume`: the new session and the events, in order.
    `interrupted`: a trigger (a command, a danger, an intent) started another flow while a
    question waited for her; that question was left unanswered."""

    session: Session
    events: tuple[Event, ...]
    interrupted: bool = False


def start(
    flow: Flow,
    context: Context,
    lang: str,
    *,
    flows: FlowSource | None = None,
    node: str | None = None,
    turn: int = 0,
) -> Step:
    """Start `flow` (at its start, or at `node`) and run it up to its first question or end.

    `flows` is needed only when the flow jumps to another flow. Pass the previous session's
    `turn` when one flow follows another, so that old buttons stay stale.
    """
    events: list[Event] = []
    session = _run(flow, node or flow.spec.start, _language(lang), turn, context, flows, events)
    return Step(session, tuple(events))


def resume(session: Session, input: Input, flows: FlowSource, context: Context) -> Step:
    """Feed her input to the session: a trigger may start another flow; otherwise the waiting
    question takes the answer (or re-asks gently) and the flow runs on to its next question."""
    triggers = flows.triggers()
    flow, waiting = _waiting(session, flows)

    target = _trigger(session, input, triggers, waiting)
    if target is not None:
        flow_id, node = target
        step = start(
            flows.active(flow_id), context, session.lang, flows=flows, node=node, turn=session.turn
        )
        return Step(step.session, step.events, interrupted=waiting is not None)

    if flow is None or waiting is None or session.node is None:
        return _idle(session, input, triggers, flows, context)

    events: list[Event] = []
    if isinstance(input, TimeoutInput):
        if waiting.timeout is None:
            return Step(session, ())
        new = _run(flow, waiting.timeout, session.lang, session.turn, context, flows, events)
        return Step(new, tuple(events))

    button = _chosen(session, flow, waiting, input, context)
    if button is not None:
        if isinstance(waiting, AskNode) and waiting.save_as and button.value is not None:
            events.append(SetField(waiting.save_as, button.value))
        target_node = button.next or waiting.next
    elif isinstance(waiting, AskNode) and isinstance(input, TextInput):
        routed = [waiting.intents[i] for i in _meanings(input) if i in waiting.intents]
        target_node = routed[0] if routed else None
        if target_node is None and waiting.otherwise and input.text.strip():
            target_node = waiting.otherwise
            if waiting.save_text_as:
                answer = " ".join(input.text.split())[:MAX_SAVED_TEXT]
                events.append(SetField(waiting.save_text_as, answer))
    else:
        target_node = None
    if target_node is None:
        return Step(session, (_reask(session, flow, waiting, input, triggers, context),))
    new = _run(flow, target_node, session.lang, session.turn, context, flows, events)
    return Step(new, tuple(events))


def timeout_minutes(session: Session, flows: FlowSource) -> int | None:
    """How long the question waiting for her waits before its `timeout` (None: it never times
    out, or nothing waits)."""
    _, waiting = _waiting(session, flows)
    if waiting is None or waiting.timeout is None:
        return None
    return waiting.timeout_minutes


def timeout_alerts(session: Session, flows: FlowSource) -> bool:
    """True when the question waiting for her, left unanswered, ends in an alert to her
    worker: its `timeout` path reaches an escalate or notify node, through any nodes and
    branches and through the time-outs of the questions it asks on the way (the safety
    check's "shall I alert your worker?" alerts after 30 minutes of silence). Such a
    question must not be dropped for another flow: the alert it promised would be lost."""
    flow, waiting = _waiting(session, flows)
    if flow is None or waiting is None or waiting.timeout is None or not waiting.timeout_minutes:
        return False
    todo: list[tuple[Flow, str]] = [(flow, waiting.timeout)]
    seen: set[tuple[str, str]] = set()
    while todo:
        current, node_id = todo.pop()
        if (current.id, node_id) in seen:
            continue
        seen.add((current.id, node_id))
        node = current.node(node_id)
        follow: list[str | None]
        if isinstance(node, EscalateNode | NotifyNode):
            return True
        if isinstance(node, AskNode) or (isinstance(node, SayNode) and node.buttons):
            follow = [node.timeout] if node.timeout_minutes else []  # she is asked again
        elif isinstance(node, BranchNode):
            follow = [node.then, node.else_]
        elif isinstance(node, JumpNode):
            if node.flow is not None and node.flow != current.id:
                current = flows.active(node.flow)
            follow = [node.node or current.spec.start]
        elif isinstance(node, EndNode):
            follow = []
        else:
            follow = [node.next]
        todo += [(current, target) for target in follow if target is not None]
    return False


def silence_alerts(session: Session, flows: FlowSource, context: Context) -> tuple[Event, ...]:
    """The alerts to her worker (escalate and notify events) that the question `session`
    waits on raises when she never answers it: its time-out path, through the time-outs of
    any questions asked on the way (as `timeout_alerts` walks it), up to the first alert.
    Nothing else of the path: for a question she left for another flow, her worker gets the
    alert it promised and she is asked nothing."""
    current = session
    seen: set[tuple[str, str | None]] = set()
    while current.waiting and (current.flow, current.node) not in seen:
        seen.add((current.flow, current.node))
        step = resume(current, TimeoutInput(), flows, context)
        alerts = tuple(e for e in step.events if isinstance(e, Escalate | NotifyWorker))
        if alerts:
            return alerts
        current = step.session
    return ()


def ask_again(session: Session, flows: FlowSource, context: Context, lead: str) -> Step:
    """Ask the question `session` waits on once more, after `lead` ("Back to my question:"),
    with fresh buttons: a turn after the session's, so give it her latest turn (the buttons
    of every earlier message are then stale)."""
    flow, waiting = _waiting(session, flows)
    if flow is None or waiting is None or session.node is None:
        raise SessionError("no question waits in this session")
    lang = _flow_language(flow, session.lang)
    again = dataclasses.replace(session, turn=session.turn + 1)
    text = lead + "\n\n" + _text(waiting.text, lang, context)
    choices = _choices(flow, session.node, again.turn, waiting, lang, context)
    return Step(again, (Say(text, choices),))


def takes_choice(session: Session, input: Input, flows: FlowSource) -> bool:
    """True when `input` is a button of the question `session` waits on (pressed on the
    message that asked it)."""
    if not isinstance(input, ChoiceInput):
        return False
    flow, waiting = _waiting(session, flows)
    if flow is None or waiting is None or session.node is None:
        return False
    return any(
        input.choice_id == choice_id(flow.id, session.node, session.turn, button.id)
        for button in waiting.buttons
    )


def choice_id(flow: str, node: str, turn: int, button: str) -> str:
    """The callback data of a button: `<tag>.<button id>`, at most 23 characters."""
    tag = hashlib.sha256(f"{flow}:{node}:{turn}".encode()).hexdigest()[:6]
    return f"{tag}.{button}"


def _language(lang: str) -> str:
    return lang if lang in LANGUAGES else LANGUAGES[0]


def _current_flow(session: Session, flows: FlowSource) -> Flow | None:
    if session.node is None:
        return None
    flow = flows.get(session.flow, session.version)
    if flow.content_hash != session.content_hash:
        raise SessionError(
            f"flow {session.flow} v{session.version} changed under a running session"
        )
    return flow


def _waiting(session: Session, flows: FlowSource) -> tuple[Flow | None, SayNode | AskNode | None]:
    """Her flow, and the question in it that waits for her (None when nothing waits)."""
    flow = _current_flow(session, flows)
    node = flow.node(session.node) if flow is not None and session.node else None
    return flow, node if isinstance(node, SayNode | AskNode) else None


def _trigger(
    session: Session, input: Input, triggers: TriggersSpec, waiting: SayNode | AskNode | None
) -> tuple[str, str | None] | None:
    """The (flow, node) a global trigger starts for this input, if any."""
    running = session.flow if waiting is not None else None
    if isinstance(input, CommandInput):
        flow = triggers.commands.get(input.name.lower().lstrip("/"))
        return (flow, None) if flow else None
    if not isinstance(input, TextInput):
        return None
    if input.safety is not None:
        for safety in triggers.safety:
            category_fits = safety.category in (None, input.safety_category)
            if safety.severity == input.safety and category_fits:
                # Already in that flow, or (for `high` only) the waiting question has its own
                # path for this danger, which escalates: let the question hear her out.
                if safety.flow == running:
                    return None
                category = input.safety_category
                if input.safety == "high" and waiting and category and _handles(waiting, category):
                    return None
                return (safety.flow, safety.node)
    for trigger in triggers.intents:
        if trigger.intent != input.intent or input.confidence < trigger.min_confidence:
            continue
        if waiting is not None:
            handled = _handles(waiting, trigger.intent)
            if trigger.when == "idle" or trigger.flow == running:
                return None
            if trigger.when == "unless_handled" and handled:
                return None
        return (trigger.flow, trigger.node)
    return None


def _handles(node: SayNode | AskNode, intent: str) -> bool:
    if any(button.intent == intent for button in node.buttons):
        return True
    return isinstance(node, AskNode) and intent in node.intents


def _chosen(
    session: Session, flow: Flow, node: SayNode | AskNode, input: Input, context: Context
) -> Button | None:
    """The button her input picks: a valid choice id, the button's intent, or its label typed."""
    assert session.node is not None
    if isinstance(input, ChoiceInput):
        for button in node.buttons:
            if input.choice_id == choice_id(flow.id, session.node, session.turn, button.id):
                return button
        return None
    if not isinstance(input, TextInput):
        return None
    for meaning in _meanings(input):
        for button in node.buttons:
            if button.intent == meaning:
                return button
    typed = _simplify(input.text)
    lang = _flow_language(flow, session.lang)
    for button in node.buttons:
        if typed and typed == _simplify(_text(button.label, lang, context)):
            return button
    return None


def _meanings(input: TextInput) -> list[str]:
    """What her text means, most specific first: the NLU intent, then the danger category the
    safety lexicon found (so a question with a path for that danger hears it)."""
    return [m for m in (input.intent, input.safety_category) if m]


def _simplify(text: str) -> str:
    return re.sub(r"[^\w]+", " ", text.casefold()).strip()


def _idle(
    session: Session, input: Input, triggers: TriggersSpec, flows: FlowSource, context: Context
) -> Step:
    """Input while no question waits: an old button, an unknown command or text."""
    if isinstance(input, TimeoutInput):
        return Step(session, ())
    events: list[Event] = []
    node = None
    if isinstance(input, ChoiceInput):
        events.append(Say(_text(triggers.texts.stale_choice, session.lang, context)))
        node = triggers.stale_choice_node
    fallback = flows.active(triggers.not_understood)
    step = start(fallback, context, session.lang, flows=flows, node=node, turn=session.turn)
    return Step(step.session, (*events, *step.events))


def _reask(
    session: Session,
    flow: Flow,
    node: SayNode | AskNode,
    input: Input,
    triggers: TriggersSpec,
    context: Context,
) -> Say:
    """A gentle re-ask: why, then the same question with the same buttons."""
    lang = _flow_language(flow, session.lang)
    if isinstance(input, ChoiceInput):
        why = triggers.texts.stale_choice
    else:
        why = node.reask or triggers.texts.reask
    assert session.node is not None
    text = _text(why, lang, context) + "\n\n" + _text(node.text, lang, context)
    return Say(text, _choices(flow, session.node, session.turn, node, lang, context))


def _flow_language(flow: Flow, lang: str) -> str:
    return lang if lang in flow.spec.languages else flow.spec.languages[0]


def _choices(
    flow: Flow, node_id: str, turn: int, node: SayNode | AskNode, lang: str, context: Context
) -> tuple[Choice, ...]:
    return tuple(
        Choice(choice_id(flow.id, node_id, turn, b.id), _text(b.label, lang, context))
        for b in node.buttons
    )


class _Filler(string.Formatter):
    def get_value(self, key: int | str, args: Any, kwargs: Any) -> Any:
        value = kwargs.get(key, "")
        return "" if isinstance(value, bool) else value


_FILLER = _Filler()


def _text(text: Mapping[str, str], lang: str, context: Context) -> str:
    """The text in `lang` (else the first given), placeholders filled; an empty placeholder
    leaves no stray space before punctuation."""
    template = text.get(lang) or next(iter(text.values()))
    filled = _FILLER.vformat(template, (), context)  # only the placeholders used are read
    return re.sub(r"[ \t]+([,.!?])", r"\1", filled).strip()


def _run(
    flow: Flow,
    node_id: str,
    lang: str,
    turn: int,
    context: Context,
    flows: FlowSource | None,
    events: list[Event],
) -> Session:
    """Run nodes from `node_id`, appending events, until a question waits or the flow ends."""
    for _ in range(MAX_STEPS):
        node = flow.node(node_id)
        nxt: str | None = None
        flow_lang = _flow_language(flow, lang)
        if isinstance(node, SayNode | AskNode):
            if isinstance(node, AskNode) or node.buttons:
                turn += 1
                choices = _choices(flow, node_id, turn, node, flow_lang, context)
                events.append(Say(_text(node.text, flow_lang, context), choices))
                return Session(flow.id, flow.version, flow.content_hash, lang, node_id, turn)
            events.append(Say(_text(node.text, flow_lang, context)))
            nxt = node.next
        elif isinstance(node, SetNode):
            events += [SetField(name, value) for name, value in node.fields.items()]
            nxt = node.next
        elif isinstance(node, EscalateNode):
            events.append(Escalate(node.severity, node.reason))
            nxt = node.next
        elif isinstance(node, NotifyNode):
            events.append(NotifyWorker(node.reason))
            nxt = node.next
        elif isinstance(node, BranchNode):
            nxt = node.then if context.get(node.flag) is True else node.else_
        elif isinstance(node, JumpNode):
            if node.flow is not None and node.flow != flow.id:
                if flows is None:
                    raise UnknownFlowError(f"flow {flow.id} jumps to {node.flow} without a source")
                flow = flows.active(node.flow)
            nxt = node.node or flow.spec.start
        elif isinstance(node, WipeNode):
            events.append(Wipe())
            nxt = node.next
        elif isinstance(node, LanguageNode):
            lang = node.lang
            events.append(SetLanguage(lang))
            nxt = node.next
        elif isinstance(node, StatusNode):
            events.append(SetStatus(node.status))
            nxt = node.next
        if isinstance(node, EndNode) or nxt is None:
            events.append(EndFlow(flow.id))
            return Session(flow.id, flow.version, flow.content_hash, lang, None, turn)
        node_id = nxt
    raise FlowLoopError(f"flow {flow.id} ran {MAX_STEPS} steps without asking anything")
