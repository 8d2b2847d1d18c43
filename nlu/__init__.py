"""Language understanding for the aftercare companion.

The public API: `build_nlu(NluConfig) -> Nlu` and `await nlu.understand(text, lang)`, which
returns an `Understanding` (a `SafetyVerdict` from the safety lexicon, and an `NluResult` from
the configured backend). `defined_intents()` lists the intents of the training data.
This package imports nothing else of the project.
"""

from __future__ import annotations

from nlu.config import NluConfig
from nlu.data import defined_intents
from nlu.errors import (
    BackendError,
    BackendUnavailable,
    NluError,
    RasaEnvironmentError,
    SafetyLexiconError,
    TrainingDataError,
    UnknownLanguageError,
)
from nlu.results import (
    DANGER_INTENTS,
    OUT_OF_SCOPE,
    Entity,
    IntentScore,
    NluResult,
    SafetyVerdict,
    Understanding,
)
from nlu.service import Nlu, build_nlu

__all__ = [
    "DANGER_INTENTS",
    "OUT_OF_SCOPE",
    "BackendError",
    "BackendUnavailable",
    "Entity",
    "IntentScore",
    "Nlu",
    "NluConfig",
    "NluError",
    "NluResult",
    "RasaEnvironmentError",
    "SafetyLexiconError",
    "SafetyVerdict",
    "TrainingDataError",
    "Understanding",
    "UnknownLanguageError",
    "build_nlu",
    "defined_intents",
]
