"""Service texts: her language, or Dutch when there is no text in hers."""

from __future__ import annotations

from care.texts import pick

TEXTS = {"greet": {"nl": "Hoi {name}!", "en": "Hi {name}!"}, "only_dutch": {"nl": "Doei"}}


def test_a_text_comes_in_her_language_filled_in() -> None:
    assert pick(TEXTS, "greet", "en", name="Sam") == "Hi Sam!"


def test_without_a_text_in_her_language_she_gets_dutch() -> None:
    assert pick(TEXTS, "only_dutch", "en") == "Doei"
    assert pick(TEXTS, "greet", "tr", name="Sam") == "Hoi Sam!"
