"""The Rasa backend against a real Rasa 3.6.21 server (the `rasa` lane of `make test`).

The module trains an NLU-only model on nlu/data (cached by data hash under ~/.cache/aftercare,
so a second run skips training), starts `rasa run --enable-api` on a free port and stops it at
the end. A missing Rasa environment is an error, not a skip: `make rasa` creates it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nlu import BackendUnavailable, NluConfig, build_nlu
from nlu.rasa_backend import RasaBackend
from nlu.rasa_env import RasaServer, train_model

pytestmark = pytest.mark.rasa


@pytest.fixture(scope="module")
def rasa_model(model_cache: Path) -> Path:
    return train_model("nl", model_cache)


@pytest.fixture(scope="module")
def server(rasa_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RasaServer]:
    log = tmp_path_factory.mktemp("rasa") / "server.log"
    running = RasaServer(rasa_model, None, secrets.token_urlsafe(16), log_file=log)
    running.start()
    yield running
    running.stop()


def backend(server: RasaServer, token: str | None) -> RasaBackend:
    return RasaBackend({"nl": server.url}, token, 5.0, 0.2, "nl")


async def test_version_is_checked_and_parse_returns_a_typed_result(server: RasaServer) -> None:
    rasa = backend(server, server.token)
    await rasa.start()
    assert (await rasa.version("nl")).startswith("3.6.")
    result = await rasa.parse("dankjewel voor je hulp", "nl")
    thanks = await rasa.parse("wanneer is mijn afspraak", "nl")
    await rasa.aclose()
    assert result.intent == "thanks" and 0.0 < result.confidence <= 1.0
    assert thanks.intent == "appointment_question"
    confidences = [score.confidence for score in result.ranking]
    assert confidences == sorted(confidences, reverse=True) and len(confidences) > 1


async def test_parse_without_or_with_a_wrong_token_is_refused(server: RasaServer) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(server.url + "/model/parse", json={"text": "hoi"})
    assert response.status_code == 401
    for token in (None, "wrong-token"):
        rasa = backend(server, token)
        with pytest.raises(BackendUnavailable, match="refused"):
            await rasa.parse("hoi", "nl")
        await rasa.aclose()


async def test_nlu_uses_rasa_falls_back_when_it_stops_and_recovers(
    server: RasaServer, model_cache: Path
) -> None:
    config = NluConfig(
        backend="rasa",
        rasa_url=f"nl={server.url}",
        rasa_token=server.token,
        rasa_timeout_s=5.0,
        rasa_retry_s=0.0,
        cache_dir=model_cache,
    )
    nlu = build_nlu(config)
    found = await nlu.understand("hij heeft me gevonden", "nl")
    assert found.backend == "rasa"
    assert found.safety.severity == "critical"

    server.stop()
    down = await nlu.understand("hij heeft me gevonden", "nl")
    assert down.backend == "embedded"
    assert down.safety.severity == "critical"  # the lexicon never depends on Rasa
    assert (await nlu.understand("dankjewel", "nl")).result.intent == "thanks"
    assert nlu.degraded

    server.start()
    back = await nlu.understand("dankjewel", "nl")
    await nlu.aclose()
    assert back.backend == "rasa" and back.result.intent == "thanks"
    assert not nlu.degraded
