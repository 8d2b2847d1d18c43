"""`NluConfig`: the settings of the NLU, a small frozen value object with named defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

BackendName = Literal["embedded", "rasa"]

DEFAULT_LANGUAGES: tuple[str, ...] = ("nl", "en")
#: Chosen with `aftercare nlu evaluate`: 0.15-0.20 gave the best macro F1 over the folds for
#: the embedded classifier; Rasa's DIET is flat between 0.15 and 0.45.
DEFAULT_CONFIDENCE_THRESHOLD = 0.20
#: One Rasa server per language (Rasa trains one language per model); see nlu/rasa/README.md.
DEFAULT_RASA_URL = "nl=http://127.0.0.1:5005,en=http://127.0.0.1:5006"


def default_cache_dir() -> Path:
    """Where trained models are cached: $XDG_CACHE_HOME/aftercare/nlu or ~/.cache/aftercare/nlu."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "aftercare" / "nlu"


@dataclass(frozen=True, slots=True)
class NluConfig:
    """How to build the NLU.

    `rasa_url` is either one base URL for every language or a comma-separated list of
    `lang=url` pairs (one Rasa server per language). `rasa_token` is the server's auth token;
    it comes from the environment, never from a file in the repository.
    """

    backend: BackendName = "embedded"
    languages: tuple[str, ...] = DEFAULT_LANGUAGES
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD
    rasa_url: str = DEFAULT_RASA_URL
    rasa_token: str | None = None
    rasa_timeout_s: float = 1.5
    #: After Rasa failed, the embedded fallback answers for this long before Rasa is tried again.
    rasa_retry_s: float = 15.0
    cache_dir: Path = field(default_factory=default_cache_dir)

    @property
    def default_language(self) -> str:
        """The first configured language; used for a language that is not configured."""
        return self.languages[0] if self.languages else "nl"

    def rasa_urls(self) -> dict[str, str]:
        """The Rasa base URL for each configured language."""
        return parse_rasa_urls(self.rasa_url, self.languages)


def parse_rasa_urls(spec: str, languages: tuple[str, ...]) -> dict[str, str]:
    """Turn `rasa_url` ("http://h:5005" or "nl=http://h:5005,en=http://h:5006") into a map."""
    spec = spec.strip()
    if "=" not in spec.split("://", 1)[0] and "," not in spec:
        return {lang: spec.rstrip("/") for lang in languages}
    urls: dict[str, str] = {}
    for part in spec.split(","):
        lang, sep, url = part.strip().partition("=")
        if sep and lang.strip() and url.strip():
            urls[lang.strip()] = url.strip().rstrip("/")
    return urls
