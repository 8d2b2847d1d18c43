"""Danger recall on messages the lexicon and the classifier were never tuned on."""

from __future__ import annotations

import pytest

from nlu import Nlu
from nlu.evaluate import check_holdout, load_holdout


@pytest.mark.parametrize("lang", ["nl", "en"])
def test_the_holdout_set_is_balanced(lang: str) -> None:
    danger, harmless = load_holdout(lang)
    categories = {category for _text, category in danger}
    assert categories == {"danger_now", "self_harm", "exploiter_contact", "feel_unsafe"}
    assert len(danger) >= 30 and len(harmless) >= 10


@pytest.mark.parametrize("lang", ["nl", "en"])
async def test_held_out_danger_is_caught(embedded_nlu: Nlu, lang: str) -> None:
    result = await check_holdout(embedded_nlu, lang)
    # Measured 29/30 (nl) and 30/30 (en); the floor leaves room for retraining noise only.
    assert result.recall >= 0.9, result.missed
