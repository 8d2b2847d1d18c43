"""Text normalisation: what the lexicon and the classifier both read."""

from __future__ import annotations

import pytest

from nlu.text import clean, skeleton, within_one_edit, words


def test_clean_folds_case_accents_and_invisible_characters() -> None:
    assert clean("Ik Wil DÓÓD\u200b\u200d") == "ik wil dood"
    assert clean("don\u2019t") == "dont"
    assert clean("\u202eik ben bang\u202c") == "ik ben bang"


def test_skeleton_collapses_repeated_letters() -> None:
    assert skeleton("heeeeelp") == skeleton("help") == "help"
    assert skeleton("doooood") == skeleton("dood")


def test_words_skip_emoji_and_punctuation_but_keep_other_scripts() -> None:
    assert words("hoi!! 😭 ik ben бля 你好") == ["hoi", "ik", "ben", "бля", "你好"]


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("gevonden", "gevonden", True),
        ("gevonden", "gevnden", True),  # deletion
        ("gevonden", "gevondden", True),  # insertion
        ("gevonden", "gevomden", True),  # substitution
        ("gevonden", "gevodnen", True),  # swap
        ("gevonden", "gvndn", False),
        ("leven", "lezen", True),
        ("abc", "abcde", False),
    ],
)
def test_within_one_edit(a: str, b: str, expected: bool) -> None:
    assert within_one_edit(a, b) is expected
    assert within_one_edit(b, a) is expected
