"""The typed results every NLU backend returns; plain frozen dataclasses, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["critical", "high"]

OUT_OF_SCOPE = "out_of_scope"
DANGER_INTENTS: frozenset[str] = frozenset(
    {"danger_now", "self_harm", "feel_unsafe", "exploiter_contact"}
)


@dataclass(frozen=True, slots=True)
class IntentScore:
    """One intent with the confidence a backend gives it."""

    name: str
    confidence: float


@dataclass(frozen=True, slots=True)
class Entity:
    """An entity found in the text: its type, its value and the character span it covers."""

    entity: str
    value: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class NluResult:
    """What a classifier made of one message: best intent, its confidence and the full ranking."""

    intent: str
    confidence: float
    ranking: tuple[IntentScore, ...] = ()
    entities: tuple[Entity, ...] = ()

    @classmethod
    def out_of_scope(cls, confidence: float = 1.0) -> NluResult:
        """The result for a message no intent fits (empty, noise, unknown language)."""
        return cls(OUT_OF_SCOPE, confidence, (IntentScore(OUT_OF_SCOPE, confidence),))


@dataclass(frozen=True, slots=True)
class SafetyVerdict:
    """The safety lexicon's verdict: `matched` is the id of a lexicon entry, never her words.

    `severity` "critical" means escalate at once; "high" means ask her whether to alert her
    worker now. `None` everywhere means nothing dangerous was recognised.
    """

    severity: Severity | None = None
    category: str | None = None
    matched: str | None = None

    @property
    def is_danger(self) -> bool:
        """True when the verdict asks for any action."""
        return self.severity is not None


NO_DANGER = SafetyVerdict()


@dataclass(frozen=True, slots=True)
class Understanding:
    """Everything the NLU knows about one message: safety first, then the classifier's result."""

    safety: SafetyVerdict
    result: NluResult
    backend: str
