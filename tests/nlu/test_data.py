"""The training data: every intent the flows use, enough varied examples, valid Rasa YAML."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from nlu import DANGER_INTENTS, TrainingDataError, defined_intents
from nlu.data import available_languages, load_training_data

CONTRACT_INTENTS = frozenset(
    {
        "mood_good", "mood_okay", "mood_bad", "need_help", "talk_to_worker", "feel_unsafe",
        "danger_now", "self_harm", "exploiter_contact", "confirm", "deny",
        "appointment_question", "cant_make_appointment", "stop", "pause", "wipe", "greeting",
        "thanks", "out_of_scope",
    }
)  # fmt: skip
LANGUAGES = ("nl", "en")


def test_both_languages_have_data() -> None:
    assert set(available_languages()) >= set(LANGUAGES)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_contract_intent_is_defined(lang: str) -> None:
    assert defined_intents(lang) == CONTRACT_INTENTS
    assert defined_intents(lang) >= DANGER_INTENTS


def test_defined_intents_without_language_is_the_union() -> None:
    assert defined_intents() == CONTRACT_INTENTS


@pytest.mark.parametrize("lang", LANGUAGES)
def test_at_least_40_examples_per_intent(lang: str) -> None:
    counts = Counter(load_training_data(lang).labels)
    too_few = {intent: n for intent, n in counts.items() if n < 40}
    assert too_few == {}


@pytest.mark.parametrize("lang", LANGUAGES)
def test_no_duplicate_examples(lang: str) -> None:
    texts = Counter(" ".join(t.casefold().split()) for t in load_training_data(lang).texts)
    assert [text for text, n in texts.items() if n > 1] == []


def test_dutch_data_sounds_like_teen_chat() -> None:
    words = " ".join(load_training_data("nl").texts).split()
    for slang in ("ff", "egt", "kzit", "wnr", "mss", "nie"):
        assert slang in words, slang
    assert any(ord(ch) > 0x1F000 for ch in "".join(words)), "some examples carry emoji"


def test_the_digest_changes_with_the_data(tmp_path: Path) -> None:
    folder = tmp_path / "nl"
    folder.mkdir()
    source = folder / "a.yml"
    source.write_text('version: "3.1"\nnlu:\n- intent: greeting\n  examples: |\n    - hoi\n')
    first = load_training_data("nl", tmp_path).digest
    source.write_text('version: "3.1"\nnlu:\n- intent: greeting\n  examples: |\n    - hey\n')
    assert load_training_data("nl", tmp_path).digest != first


def test_entity_annotations_become_plain_text(tmp_path: Path) -> None:
    (tmp_path / "nl").mkdir()
    (tmp_path / "nl" / "a.yml").write_text(
        'version: "3.1"\nnlu:\n- intent: appointment_question\n  examples: |\n'
        "    - is mijn afspraak [morgen](date)\n"
    )
    assert load_training_data("nl", tmp_path).texts == ["is mijn afspraak morgen"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("nlu: [", "not valid YAML"),
        ('version: "3.1"\nintents: []\n', "top-level 'nlu:' list"),
        ('version: "2.0"\nnlu: []\n', 'version: "3.1"'),
        ('version: "3.1"\nnlu:\n- intent: greeting\n  examples: |\n    hoi\n', "'- '"),
    ],
)
def test_broken_files_are_refused_with_the_file_named(
    tmp_path: Path, content: str, message: str
) -> None:
    (tmp_path / "nl").mkdir()
    (tmp_path / "nl" / "broken.yml").write_text(content)
    with pytest.raises(TrainingDataError, match=r"broken\.yml") as raised:
        load_training_data("nl", tmp_path)
    assert message in str(raised.value)
