"""The Rasa adapter against a mock transport: request shape, result mapping, failures."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from nlu import BackendUnavailable
from nlu.rasa_backend import RasaBackend

PARSED = {
    "text": "hoi",
    "intent": {"name": "greeting", "confidence": 0.91},
    "intent_ranking": [
        {"name": "thanks", "confidence": 0.05},
        {"name": "greeting", "confidence": 0.91},
    ],
    "entities": [{"entity": "date", "value": "morgen", "start": 4, "end": 10, "extractor": "x"}],
}


def backend_with(handler: httpx.MockTransport, threshold: float = 0.3) -> RasaBackend:
    urls = {"nl": "http://rasa-nl:5005", "en": "http://rasa-en:5006"}
    return RasaBackend(urls, "s3cret", 1.0, threshold, "nl", transport=handler)


async def test_parse_sends_text_and_token_and_maps_the_result() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=PARSED)

    backend = backend_with(httpx.MockTransport(handle))
    result = await backend.parse("hoi morgen", "en")
    await backend.aclose()
    assert seen[0].url.host == "rasa-en" and seen[0].url.path == "/model/parse"
    assert seen[0].url.params["token"] == "s3cret"
    assert json.loads(seen[0].content) == {"text": "hoi morgen"}
    assert (result.intent, result.confidence) == ("greeting", 0.91)
    assert [s.name for s in result.ranking] == ["greeting", "thanks"]
    assert result.entities[0].value == "morgen" and result.entities[0].end == 10


async def test_a_language_without_server_uses_the_default_server() -> None:
    hosts: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return httpx.Response(200, json=PARSED)

    backend = backend_with(httpx.MockTransport(handle))
    await backend.parse("bonjour", "fr")
    await backend.aclose()
    assert hosts == ["rasa-nl"]


async def test_low_confidence_from_rasa_is_out_of_scope() -> None:
    backend = backend_with(httpx.MockTransport(lambda r: httpx.Response(200, json=PARSED)), 0.95)
    assert (await backend.parse("hoi", "nl")).intent == "out_of_scope"
    await backend.aclose()


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(401, json={"message": "unauthorized"}),
        httpx.Response(500, text="boom"),
        httpx.Response(200, text="<html>not json</html>"),
        httpx.Response(200, json=["not", "a", "dict"]),
        httpx.Response(200, json={"text": "hoi"}),
    ],
)
async def test_bad_answers_become_backend_unavailable(response: httpx.Response) -> None:
    backend = backend_with(httpx.MockTransport(lambda r: response))
    with pytest.raises(BackendUnavailable):
        await backend.parse("hoi", "nl")
    await backend.aclose()


async def test_refused_and_slow_servers_become_backend_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    for handler in (refuse, slow):
        backend = backend_with(httpx.MockTransport(handler))
        with pytest.raises(BackendUnavailable):
            await backend.parse("hoi", "nl")
        await backend.aclose()


async def test_start_checks_version_of_every_server() -> None:
    paths: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        paths.append(f"{request.url.host}{request.url.path}")
        return httpx.Response(200, json={"version": "3.6.21"})

    backend = backend_with(httpx.MockTransport(handle))
    await backend.start()
    await backend.aclose()
    assert sorted(paths) == ["rasa-en/version", "rasa-nl/version"]


async def test_the_token_never_reaches_the_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="httpx")  # the CLI quietens httpx; we want its lines
    backend = backend_with(httpx.MockTransport(lambda r: httpx.Response(200, json=PARSED)))
    await backend.parse("hoi", "nl")
    await backend.aclose()
    assert "s3cret" not in caplog.text
    assert "token=***" in caplog.text  # httpx did log the request line, scrubbed


async def test_empty_text_is_not_sent_and_long_text_is_capped() -> None:
    sent: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content)["text"])
        return httpx.Response(200, json=PARSED)

    backend = backend_with(httpx.MockTransport(handle))
    assert (await backend.parse("  \u200b ", "nl")).intent == "out_of_scope"
    await backend.parse("a" * 10_000, "nl")
    await backend.aclose()
    assert [len(text) for text in sent] == [1_000]
