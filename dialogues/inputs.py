"""What the host feeds the engine: a button press, a message with its NLU result, a command,
or a time-out. The engine never sees anything else from her."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ChoiceInput:
    """She pressed a button; `choice_id` is the callback data the engine put on it."""

    choice_id: str


@dataclass(frozen=True)
class TextInput:
    """She wrote something. `intent` and `confidence` come from the NLU backend; `safety` and
    `safety_category` from the safety lexicon, which runs first (None when nothing matched)."""

    text: str
    intent: str | None = None
    confidence: float = 0.0
    safety: Literal["critical", "high"] | None = None
    safety_category: str | None = None


@dataclass(frozen=True)
class CommandInput:
    """She sent a command such as `/help`; `name` is without the slash."""

    name: str


@dataclass(frozen=True)
class TimeoutInput:
    """She did not answer the waiting question in time (the host's scheduler decides when)."""


Input = ChoiceInput | TextInput | CommandInput | TimeoutInput
