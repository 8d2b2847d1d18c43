"""`Nlu.understand`: safety first, the backend second, fallback when Rasa fails, and recovery."""

from __future__ import annotations

import logging

import httpx
import pytest

from nlu import BackendUnavailable, Nlu, NluConfig, NluResult, build_nlu
from nlu.embedded import EmbeddedBackend
from nlu.rasa_backend import RasaBackend
from nlu.results import IntentScore
from nlu.safety import SafetyCheck
from nlu.service import CLASSIFIER_MATCH

SECRET_TEXT = "mijn geheime zin met hij heeft me gevonden"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FlakyRasa:
    """A backend that answers `greeting` while `up`, else raises like an unreachable Rasa."""

    name = "rasa"

    def __init__(self) -> None:
        self.up = True
        self.calls = 0

    async def start(self) -> None:
        if not self.up:
            raise BackendUnavailable("down")

    async def parse(self, text: str, lang: str) -> NluResult:
        self.calls += 1
        if not self.up:
            raise BackendUnavailable("The Rasa server could not be reached.")
        return NluResult("greeting", 0.99, (IntentScore("greeting", 0.99),))

    async def aclose(self) -> None:
        return None


@pytest.fixture(scope="module")
def parts(nlu_config: NluConfig) -> tuple[SafetyCheck, EmbeddedBackend]:
    safety = SafetyCheck.load(nlu_config.languages)
    embedded = EmbeddedBackend.load(
        nlu_config.languages, nlu_config.cache_dir, nlu_config.confidence_threshold
    )
    return safety, embedded


def make(parts: tuple[SafetyCheck, EmbeddedBackend], backend: FlakyRasa, clock: FakeClock) -> Nlu:
    safety, embedded = parts
    return Nlu(safety, embedded, backend, retry_after_s=30, clock=clock)


async def test_understand_gives_safety_and_intent(embedded_nlu: Nlu) -> None:
    found = await embedded_nlu.understand("hij staat voor de deur", "nl")
    assert found.safety.severity == "critical" and found.safety.category == "danger_now"
    assert found.backend == "embedded"
    assert (await embedded_nlu.understand("dankjewel!", "nl")).result.intent == "thanks"
    assert (await embedded_nlu.understand("thank you so much", "en")).result.intent == "thanks"


async def test_safety_does_not_depend_on_the_classifier(
    parts: tuple[SafetyCheck, EmbeddedBackend],
) -> None:
    rasa = FlakyRasa()  # says "greeting" to everything, confidently
    found = await make(parts, rasa, FakeClock()).understand("ik wil dood", "nl")
    assert found.result.intent == "greeting"
    assert found.safety.severity == "critical" and found.safety.category == "self_harm"


async def test_rasa_down_falls_back_logs_once_and_recovers(
    parts: tuple[SafetyCheck, EmbeddedBackend], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    rasa, clock = FlakyRasa(), FakeClock()
    nlu = make(parts, rasa, clock)
    assert (await nlu.understand("hoi", "nl")).backend == "rasa"

    rasa.up = False
    first = await nlu.understand(SECRET_TEXT, "nl")
    second = await nlu.understand("dankjewel", "nl")
    assert first.backend == second.backend == "embedded"
    assert first.safety.matched == "nl.exploiter_contact.found_me"  # the lexicon still runs
    assert second.result.intent == "thanks"
    assert nlu.degraded
    assert rasa.calls == 2  # no new attempt before the retry interval: no waiting on a dead server
    warnings = [r for r in caplog.records if r.getMessage() == "nlu.backend_unavailable_fallback"]
    assert len(warnings) == 1

    clock.now += 31
    rasa.up = True
    assert (await nlu.understand("hoi", "nl")).backend == "rasa"
    assert not nlu.degraded
    assert any(r.getMessage() == "nlu.backend_recovered" for r in caplog.records)
    assert "geheime" not in caplog.text


async def test_rasa_down_at_start_begins_on_the_fallback(
    parts: tuple[SafetyCheck, EmbeddedBackend],
) -> None:
    rasa = FlakyRasa()
    rasa.up = False
    nlu = make(parts, rasa, FakeClock())
    await nlu.start()
    assert nlu.degraded
    assert (await nlu.understand("dankjewel", "nl")).result.intent == "thanks"


async def test_a_broken_adapter_does_not_lose_the_message(
    parts: tuple[SafetyCheck, EmbeddedBackend],
) -> None:
    class Broken(FlakyRasa):
        async def parse(self, text: str, lang: str) -> NluResult:
            raise KeyError("bug")

    found = await make(parts, Broken(), FakeClock()).understand("dankjewel", "nl")
    assert (found.backend, found.result.intent) == ("embedded", "thanks")


async def test_a_slow_real_adapter_falls_back(nlu_config: NluConfig) -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    safety = SafetyCheck.load(nlu_config.languages)
    embedded = EmbeddedBackend.load(
        nlu_config.languages, nlu_config.cache_dir, nlu_config.confidence_threshold
    )
    rasa = RasaBackend({"nl": "http://rasa:5005"}, "t", 0.2, 0.3, "nl", httpx.MockTransport(slow))
    nlu = Nlu(safety, embedded, rasa)
    found = await nlu.understand("dankjewel", "nl")
    await nlu.aclose()
    assert (found.backend, found.result.intent) == ("embedded", "thanks")


async def test_classifier_doubt_about_danger_asks_her(
    parts: tuple[SafetyCheck, EmbeddedBackend],
) -> None:
    class Doubtful(FlakyRasa):
        async def parse(self, text: str, lang: str) -> NluResult:
            ranking = (IntentScore("mood_bad", 0.4), IntentScore("feel_unsafe", 0.35))
            return NluResult("mood_bad", 0.4, ranking)

    found = await make(parts, Doubtful(), FakeClock()).understand("het voelt raar", "nl")
    assert found.safety.severity == "high"
    assert found.safety.category == "feel_unsafe"
    assert found.safety.matched == CLASSIFIER_MATCH


async def test_an_unconfigured_language_gets_a_result(embedded_nlu: Nlu) -> None:
    found = await embedded_nlu.understand("bonjour, merci beaucoup", "fr")
    assert found.result.intent  # answered with the default language's model


def test_build_nlu_with_rasa_prepares_the_fallback(nlu_config: NluConfig) -> None:
    nlu = build_nlu(
        NluConfig(backend="rasa", cache_dir=nlu_config.cache_dir, rasa_token="t", rasa_url="x")
    )
    assert nlu.backend_name == "rasa"


async def test_it_reads_here_only_while_no_server_is_to_be_asked(
    parts: tuple[SafetyCheck, EmbeddedBackend], embedded_nlu: Nlu
) -> None:
    """`understand_now` (in her turn, on its thread) is for when no server is to be asked:
    the embedded backend, or Rasa while it is down and not yet due for another try."""
    assert embedded_nlu.reads_here()
    for text, lang in [("hij staat voor de deur", "nl"), ("thank you so much", "en"), ("", "xx")]:
        assert embedded_nlu.understand_now(text, lang) == await embedded_nlu.understand(text, lang)

    rasa, clock = FlakyRasa(), FakeClock()
    nlu = make(parts, rasa, clock)
    assert not nlu.reads_here()  # Rasa is to be asked, before the turn
    rasa.up = False
    await nlu.understand("hoi", "nl")
    assert nlu.reads_here()  # down: the fallback reads it in the turn, no wait on a dead server
    now = nlu.understand_now("ik wil dood", "nl")
    assert (now.backend, now.safety.category) == ("embedded", "self_harm")
    assert rasa.calls == 0  # found down at start; nothing asked it since
    clock.now += 31
    assert not nlu.reads_here()  # due for another try
