"""The `rasa` backend: a real Rasa 3.6 server (`rasa run --enable-api`), one per language.

It calls `POST /model/parse?token=...` with a short time-out and checks `GET /version` on start.
Every failure (refused, time-out, 401/5xx, a body that is not a parse result) becomes
`BackendUnavailable`; `Nlu` then falls back to the embedded classifier. The token travels in
the query string because that is how Rasa's token auth works, so a log filter scrubs it from
httpx's request log lines.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import httpx

from nlu.embedded import MAX_CHARS, decide, has_words
from nlu.errors import BackendUnavailable
from nlu.results import Entity, IntentScore, NluResult

logger = logging.getLogger(__name__)
#: The Rasa release the pipeline and the environment were made for.
SUPPORTED_VERSION = "3.6"
_TOKEN_IN_URL = re.compile(r"(token=)[^&\s\"']+")


class _ScrubTokens(logging.Filter):
    """Replace `token=...` in httpx's log lines so the auth token never reaches a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(
                _TOKEN_IN_URL.sub(r"\1***", str(arg)) if "token=" in str(arg) else arg
                for arg in args
            )
        return True


_SCRUBBER = _ScrubTokens()
for _name in ("httpx", "httpcore"):
    if _SCRUBBER not in logging.getLogger(_name).filters:
        logging.getLogger(_name).addFilter(_SCRUBBER)


class RasaBackend:
    """Parses through Rasa servers, one base URL per language."""

    name = "rasa"

    def __init__(
        self,
        urls: Mapping[str, str],
        token: str | None,
        timeout_s: float,
        threshold: float,
        default_lang: str,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._urls = dict(urls)
        self._token = token
        self._threshold = threshold
        self._default_lang = default_lang
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s), transport=transport, trust_env=False
        )

    def url_for(self, lang: str) -> str | None:
        """The server for `lang`; a language without one uses the default language's."""
        return self._urls.get(lang) or self._urls.get(self._default_lang)

    async def start(self) -> None:
        """Check `/version` of every server; raise BackendUnavailable if one does not answer."""
        for lang in self._urls:
            version = await self.version(lang)
            if not version.startswith(SUPPORTED_VERSION + "."):
                logger.warning(
                    "nlu.rasa_version_unexpected", extra={"lang": lang, "version": version}
                )
            else:
                logger.info("nlu.rasa_ready", extra={"lang": lang, "version": version})

    async def version(self, lang: str) -> str:
        """The Rasa version the server for `lang` reports."""
        body = await self._request("GET", lang, "/version", None)
        version = body.get("version")
        if not isinstance(version, str):
            raise BackendUnavailable(f"The Rasa server for '{lang}' sent no version.")
        return version

    async def parse(self, text: str, lang: str) -> NluResult:
        """Ask the server for `lang`; the same threshold and length cap as the embedded backend."""
        if not has_words(text):
            return NluResult.out_of_scope()
        body = await self._request("POST", lang, "/model/parse", {"text": text[:MAX_CHARS]})
        return replace(decide(_ranking(body), self._threshold), entities=_entities(body))

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._client.aclose()

    async def _request(
        self, method: str, lang: str, path: str, payload: dict[str, str] | None
    ) -> dict[str, Any]:
        base = self.url_for(lang)
        if base is None:
            raise BackendUnavailable(f"No Rasa server is configured for language '{lang}'.")
        params = {"token": self._token} if self._token and path != "/version" else None
        try:
            response = await self._client.request(method, base + path, params=params, json=payload)
        except httpx.TimeoutException:
            raise BackendUnavailable(
                f"The Rasa server for '{lang}' did not answer in time."
            ) from None
        except httpx.HTTPError as error:
            raise BackendUnavailable(
                f"The Rasa server for '{lang}' could not be reached ({type(error).__name__})."
            ) from None
        if response.status_code in (401, 403):
            raise BackendUnavailable(f"The Rasa server for '{lang}' refused our token.")
        if response.status_code != 200:
            raise BackendUnavailable(
                f"The Rasa server for '{lang}' answered with HTTP {response.status_code}."
            )
        try:
            body = response.json()
        except ValueError:
            raise BackendUnavailable(f"The Rasa server for '{lang}' sent no JSON.") from None
        if not isinstance(body, dict):
            raise BackendUnavailable(f"The Rasa server for '{lang}' sent an unexpected answer.")
        return body


def _ranking(body: Mapping[str, Any]) -> tuple[IntentScore, ...]:
    raw = body.get("intent_ranking")
    if not isinstance(raw, list) or not raw:
        intent = body.get("intent")
        raw = [intent] if isinstance(intent, dict) else []
    scores: list[IntentScore] = []
    for item in raw:
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            try:
                scores.append(IntentScore(item["name"], float(item.get("confidence", 0.0))))
            except (TypeError, ValueError):
                continue
    if not scores and "intent" not in body:
        raise BackendUnavailable("The Rasa server sent a parse result without an intent.")
    return tuple(sorted(scores, key=lambda score: -score.confidence))


def _entities(body: Mapping[str, Any]) -> tuple[Entity, ...]:
    found: list[Entity] = []
    for item in body.get("entities") or ():
        try:
            entity, value = str(item["entity"]), str(item["value"])
            found.append(Entity(entity, value, int(item["start"]), int(item["end"])))
        except (KeyError, TypeError, ValueError):
            continue
    return tuple(found)
