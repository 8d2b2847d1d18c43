"""`Nlu`: the safety lexicon first, then the configured backend, with a fallback that never fails.

    understand(text, lang)
      1. safety lexicon (all configured languages)      -> SafetyVerdict
      2. backend (embedded, or Rasa with embedded as     -> NluResult
         fallback when Rasa is down, slow or refuses)
      3. a classifier that leans towards a danger intent
         without the lexicon noticing                    -> SafetyVerdict "high" (ask her)

Nothing here raises for any text; logs carry event names, languages and ids, never her text.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from nlu.config import NluConfig
from nlu.embedded import EmbeddedBackend
from nlu.errors import BackendError, NluError
from nlu.rasa_backend import RasaBackend
from nlu.results import (
    DANGER_INTENTS,
    NO_DANGER,
    NluResult,
    SafetyVerdict,
    Understanding,
)
from nlu.safety import SafetyCheck

logger = logging.getLogger(__name__)

#: No lexicon match and the classifier did not settle on a danger intent, but gives one at
#: least this confidence: its doubt becomes a "high" verdict, so she is asked rather than left
#: in silence. Chosen with `aftercare nlu evaluate` (danger recall against false alarms).
DOUBTFUL_DANGER_FLOOR = 0.20
#: The `matched` id of a verdict that came from the classifier, not from a lexicon entry.
CLASSIFIER_MATCH = "classifier"


class Backend(Protocol):
    """What every classifier backend offers."""

    name: str

    async def start(self) -> None:
        """Get ready (connect, check versions); may raise BackendError."""

    async def parse(self, text: str, lang: str) -> NluResult:
        """Classify one message; may raise BackendError."""

    async def aclose(self) -> None:
        """Release connections."""


class Nlu:
    """Understands a girl's message: safety verdict plus intent. Built by `build_nlu`."""

    def __init__(
        self,
        safety: SafetyCheck,
        embedded: EmbeddedBackend,
        backend: Backend | None = None,
        *,
        languages: tuple[str, ...] = ("nl", "en"),
        retry_after_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._safety = safety
        self._embedded = embedded
        self._backend = backend
        self._languages = languages
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._started = False
        self._down_since: float | None = None

    @property
    def backend_name(self) -> str:
        """The configured backend ("embedded" or "rasa")."""
        return self._backend.name if self._backend else self._embedded.name

    @property
    def degraded(self) -> bool:
        """True while the configured backend is down and the embedded fallback answers."""
        return self._down_since is not None

    async def start(self) -> None:
        """Check the remote backend (Rasa's `/version`); on failure, start in fallback mode."""
        self._started = True
        if self._backend is None:
            return
        try:
            await self._backend.start()
        except Exception:  # BackendUnavailable, or anything else: start on the fallback
            self._mark_down()

    async def understand(self, text: str, lang: str) -> Understanding:
        """Safety lexicon first, then the backend; never raises, whatever the text."""
        if not self._started:
            await self.start()
        text = text if isinstance(text, str) else ""
        lang = lang if lang in self._languages else self._languages[0]
        safety = self._check_safety(text, lang)
        result, backend = await self._classify(text, lang)
        return self._understanding(safety, result, backend)

    def reads_here(self) -> bool:
        """True when no server is to be asked now (the embedded backend, or Rasa while it is
        down and not yet due for another try): then `understand_now` gives the same reading
        without waiting for anything."""
        return self._backend is None or not self._should_try_backend()

    def understand_now(self, text: str, lang: str) -> Understanding:
        """`understand` by the embedded backend alone, on the caller's thread (a tenth of a
        millisecond; it may run on several threads at once). For when `reads_here()`: the
        caller can then read her text inside her turn's transaction. Never raises."""
        text = text if isinstance(text, str) else ""
        lang = lang if lang in self._languages else self._languages[0]
        safety = self._check_safety(text, lang)
        return self._understanding(safety, *self._embedded_reading(text, lang))

    async def aclose(self) -> None:
        """Close the backend's connections."""
        if self._backend is not None:
            await self._backend.aclose()

    async def _classify(self, text: str, lang: str) -> tuple[NluResult, str]:
        if self._backend is not None and self._should_try_backend():
            try:
                result = await self._backend.parse(text, lang)
            except BackendError:
                self._mark_down()
            except Exception:  # a bug in an adapter must not cost her the message either
                logger.exception("nlu.backend_failed", extra={"backend": self._backend.name})
                self._mark_down()
            else:
                if self._down_since is not None:
                    self._down_since = None
                    logger.info("nlu.backend_recovered", extra={"backend": self._backend.name})
                return result, self._backend.name
        return self._embedded_reading(text, lang)

    def _embedded_reading(self, text: str, lang: str) -> tuple[NluResult, str]:
        try:
            return self._embedded.parse_now(text, lang), self._embedded.name
        except (NluError, ValueError, MemoryError):
            logger.exception("nlu.embedded_failed", extra={"lang": lang})
            return NluResult.out_of_scope(0.0), self._embedded.name

    def _check_safety(self, text: str, lang: str) -> SafetyVerdict:
        try:
            return self._safety.check(text, lang)
        except Exception:  # a bug must not cost her the message; the classifier still runs
            logger.exception("nlu.safety_check_failed", extra={"lang": lang})
            return NO_DANGER

    @staticmethod
    def _understanding(safety: SafetyVerdict, result: NluResult, backend: str) -> Understanding:
        if safety.severity is None:
            safety = _doubtful_danger(result)
        return Understanding(safety, result, backend)

    def _should_try_backend(self) -> bool:
        if self._down_since is None:
            return True
        return self._clock() - self._down_since >= self._retry_after_s

    def _mark_down(self) -> None:
        if self._down_since is None and self._backend is not None:
            logger.warning(
                "nlu.backend_unavailable_fallback", extra={"backend": self._backend.name}
            )
        self._down_since = self._clock()


def _doubtful_danger(result: NluResult) -> SafetyVerdict:
    if result.intent in DANGER_INTENTS:
        return NO_DANGER  # the classifier is sure: the flows route on the intent itself
    for score in result.ranking:
        if score.name in DANGER_INTENTS and score.confidence >= DOUBTFUL_DANGER_FLOOR:
            return SafetyVerdict("high", score.name, CLASSIFIER_MATCH)
    return NO_DANGER


def build_nlu(config: NluConfig) -> Nlu:
    """Build the NLU from its config: load the lexicons, load or train the embedded models and,
    for `backend="rasa"`, prepare the Rasa client (checked on `start()` or the first message).
    Raises NluError when the data or the lexicon cannot be read: a deployment error to fix.
    """
    languages = tuple(config.languages) or ("nl",)
    safety = SafetyCheck.load(languages)
    embedded = EmbeddedBackend.load(languages, config.cache_dir, config.confidence_threshold)
    backend: Backend | None = None
    if config.backend == "rasa":
        backend = RasaBackend(
            config.rasa_urls(),
            config.rasa_token,
            config.rasa_timeout_s,
            config.confidence_threshold,
            languages[0],
        )
    return Nlu(safety, embedded, backend, languages=languages, retry_after_s=config.rasa_retry_s)
