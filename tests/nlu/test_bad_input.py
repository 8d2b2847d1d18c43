"""Bad input never raises: it gets a result, usually out_of_scope."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nlu import Nlu, defined_intents

KNOWN = defined_intents() | {"out_of_scope"}

BAD_INPUTS = [
    "",
    "   \n\t  ",
    "x" * 10_000,
    "ik wil dood " * 900,
    "😭😭😭🙏🏽🙏🏽",
    "?!?!...,,,;;;",
    "hoi привет 你好 مرحبا",
    "\u200b\u200c\u200d\ufeff",
    "\u202eik ben bang\u202c",
    "שלום, אני מפחדת",
    "\x00\x01\x02",
    "\ud800",  # a lone surrogate, as a broken client might send
]


@pytest.mark.parametrize("text", BAD_INPUTS)
@pytest.mark.parametrize("lang", ["nl", "en", "fr", ""])
async def test_bad_input_gets_a_result(embedded_nlu: Nlu, text: str, lang: str) -> None:
    found = await embedded_nlu.understand(text, lang)
    assert found.result.intent in KNOWN
    assert 0.0 <= found.result.confidence <= 1.0


async def test_empty_and_symbol_only_text_is_out_of_scope(embedded_nlu: Nlu) -> None:
    for text in ("", "   ", "\u200b\u200b"):
        found = await embedded_nlu.understand(text, "nl")
        assert found.result.intent == "out_of_scope"
        assert found.safety.severity is None


async def test_danger_in_a_very_long_message_is_still_found(embedded_nlu: Nlu) -> None:
    text = "blabla " * 1400 + "hij heeft me gevonden"
    assert (await embedded_nlu.understand(text, "nl")).safety.severity == "critical"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.one_of(
        st.text(max_size=300),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=2000),
        st.text(alphabet="\u200b\u200d\u202e\u202c\u00ad😭🙏 !?.aeiouAEIOUéëßдж中ا", max_size=80),
    ),
    lang=st.sampled_from(["nl", "en", "de", "", "NL"]),
)
def test_any_text_in_any_language_gets_a_result(embedded_nlu: Nlu, text: str, lang: str) -> None:
    loop = asyncio.new_event_loop()  # not asyncio.run: that would replace the test loop
    try:
        found = loop.run_until_complete(embedded_nlu.understand(text, lang))
    finally:
        loop.close()
    assert found.result.intent in KNOWN
    assert found.safety.severity in (None, "critical", "high")
    assert 0.0 <= found.result.confidence <= 1.0
