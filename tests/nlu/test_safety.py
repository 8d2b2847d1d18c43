"""The safety lexicon: danger signals are never missed; negations are handled where safe."""

from __future__ import annotations

from pathlib import Path

import pytest

from nlu import SafetyLexiconError
from nlu.results import DANGER_INTENTS
from nlu.safety import SafetyCheck, SafetyLexicon


@pytest.fixture(scope="module")
def nl() -> SafetyLexicon:
    return SafetyLexicon.load("nl")


@pytest.fixture(scope="module")
def en() -> SafetyLexicon:
    return SafetyLexicon.load("en")


DUTCH_DANGER = [
    # (text, severity, category)
    ("hij heeft me gevonden", "critical", "exploiter_contact"),
    ("Hij staat voor de deur!!", "critical", "danger_now"),
    ("nu staat ie voor mijn deur", "critical", "danger_now"),
    ("ze staan voor de deur", "critical", "danger_now"),
    ("hij slaat me", "critical", "danger_now"),
    ("bel 112", "critical", "danger_now"),
    ("ze houden me vast", "critical", "danger_now"),
    ("ik wil dood", "critical", "self_harm"),
    ("kwil dood", "critical", "self_harm"),
    ("k wil gewoon dood", "critical", "self_harm"),
    ("ik wil niet meer leven", "critical", "self_harm"),
    ("ik wil er niet meer zijn", "critical", "self_harm"),
    ("ik doe mezelf pijn", "critical", "self_harm"),
    ("ik doe mzelf pijn", "critical", "self_harm"),
    ("ik heb mezelf gesneden", "critical", "self_harm"),
    ("ik denk aan zelfmoord", "critical", "self_harm"),
    ("ik moet weer werken voor hem", "critical", "exploiter_contact"),
    ("ze dwingen me", "critical", "exploiter_contact"),
    ("hij dwingt mij", "critical", "exploiter_contact"),
    ("hij dreigt", "high", "exploiter_contact"),
    ("hij dreigt mijn familie iets aan te doen", "high", "exploiter_contact"),
    ("mn loverboy appt weer", "high", "exploiter_contact"),
    ("hij belt me weer", "high", "exploiter_contact"),
    ("ik ben bang", "high", "feel_unsafe"),
    ("ik voel me niet veilig", "high", "feel_unsafe"),
    ("ik word gevolgd", "high", "feel_unsafe"),
    ("ik zie het niet meer zitten", "high", "self_harm"),
    ("zelfmoord", "high", "self_harm"),
    ("hij wil me vermoorden", "critical", "danger_now"),
    ("hij heeft me verkracht", "critical", "danger_now"),
    ("ik moet seks hebben met mannen voor geld", "critical", "exploiter_contact"),
    ("ze verkopen me", "critical", "exploiter_contact"),
    ("ik wil me van kant maken", "critical", "self_harm"),
    ("ik ga mezelf wat aandoen", "critical", "self_harm"),
    ("hij weet waar ik ben", "high", "feel_unsafe"),
    ("hij komt me halen", "high", "danger_now"),
    ("ik kan niet meer", "high", "self_harm"),
    ("ik kan het echt niet meer!!", "high", "self_harm"),
]

ENGLISH_DANGER = [
    ("he found me", "critical", "exploiter_contact"),
    ("He's at the door", "critical", "danger_now"),
    ("they're outside my door", "critical", "danger_now"),
    ("he has a knife", "critical", "danger_now"),
    ("call the police", "critical", "danger_now"),
    ("i want to die", "critical", "self_harm"),
    ("wanna die", "critical", "self_harm"),
    ("i don't want to live anymore", "critical", "self_harm"),
    ("im going to kill myself", "critical", "self_harm"),
    ("kms", "critical", "self_harm"),
    ("i'm hurting myself", "critical", "self_harm"),
    ("i cut myself again", "critical", "self_harm"),
    ("i have to work for him again", "critical", "exploiter_contact"),
    ("they're forcing me", "critical", "exploiter_contact"),
    ("he threatens to hurt my family", "high", "exploiter_contact"),
    ("he's texting me again", "high", "exploiter_contact"),
    ("i'm scared", "high", "feel_unsafe"),
    ("i don't feel safe", "high", "feel_unsafe"),
    ("someone is following me", "high", "feel_unsafe"),
    ("suicide", "high", "self_harm"),
    ("he's going to kill me", "critical", "danger_now"),
    ("he raped me", "critical", "danger_now"),
    ("they're selling me", "critical", "exploiter_contact"),
    ("he makes me have sex with guys", "critical", "exploiter_contact"),
    ("i'm gonna end it", "critical", "self_harm"),
    ("he knows where i am", "high", "feel_unsafe"),
    ("i'm being blackmailed", "high", "exploiter_contact"),
    ("i can't do this anymore", "high", "self_harm"),
]


@pytest.mark.parametrize(("text", "severity", "category"), DUTCH_DANGER)
def test_dutch_danger_is_recognised(
    nl: SafetyLexicon, text: str, severity: str, category: str
) -> None:
    verdict = nl.check(text)
    assert (verdict.severity, verdict.category) == (severity, category)
    assert verdict.matched is not None and verdict.matched.startswith("nl.")


@pytest.mark.parametrize(("text", "severity", "category"), ENGLISH_DANGER)
def test_english_danger_is_recognised(
    en: SafetyLexicon, text: str, severity: str, category: str
) -> None:
    verdict = en.check(text)
    assert (verdict.severity, verdict.category) == (severity, category)
    assert verdict.matched is not None and verdict.matched.startswith("en.")


@pytest.mark.parametrize(
    "text",
    [
        "ik ben niet bang",
        "ik ben nie bang meer",
        "ik ben niet meer bang",
        "ik wil niet dood",
        "hij heeft me niet gevonden",
        "hij is hier niet",
        "ik voel me veilig",
        "ik wil niet meer leren",  # "leren" is no typo of "leven"
        "de pakketbezorger staat voor de deur",
        "hoi, hoe gaat het?",
        "ik heb morgen een afspraak",
        "ik kan niet meer wachten op de zomer",  # "ik kan niet meer" must end its clause
        "ik wil niet meer naar die school",
        "ik ben niet verkracht",
    ],
)
def test_dutch_harmless_or_negated_is_not_danger(nl: SafetyLexicon, text: str) -> None:
    assert nl.check(text).severity is None


@pytest.mark.parametrize(
    "text",
    [
        "i'm not scared",
        "i am not scared anymore",
        "i don't want to die",
        "he hasn't found me",
        "he is not here",
        "i feel safe",
        "the mailman is at the door",
        "see you tomorrow",
        "he's not outside",
        "i'm not going to end it",
    ],
)
def test_english_harmless_or_negated_is_not_danger(en: SafetyLexicon, text: str) -> None:
    assert en.check(text).severity is None


def test_negation_in_the_phrase_itself_is_still_danger(nl: SafetyLexicon) -> None:
    # "niet" belongs to the danger phrase: this is self-harm, not a negated "ik wil leven".
    assert nl.check("ik wil echt niet meer leven").severity == "critical"


def test_a_negation_does_not_reach_into_the_next_clause(nl: SafetyLexicon) -> None:
    verdict = nl.check("ik ben niet bang, maar hij heeft me gevonden")
    assert verdict.matched == "nl.exploiter_contact.found_me"
    assert nl.check("ik ben niet moe maar ik ben bang").severity == "high"


def test_a_mention_of_suicide_is_high_even_when_negated(nl: SafetyLexicon) -> None:
    # Not safe to dismiss: she is asked, not ignored.
    verdict = nl.check("ik denk niet aan zelfmoord hoor")
    assert (verdict.severity, verdict.category) == ("high", "self_harm")


@pytest.mark.parametrize(
    "text",
    [
        "IK WIL DOOD",
        "ik wil dooooood",
        "ik wil dóód",
        "ik\u200b wil\u200d dood",
        "hij heeft me gevnden",  # a typo in a long word
        "hij heeft me gevondne",
        "ik moet weer wreken voor hem",
    ],
)
def test_case_accents_repeats_invisibles_and_typos_do_not_hide_danger(
    nl: SafetyLexicon, text: str
) -> None:
    assert nl.check(text).severity == "critical"


def test_short_words_get_no_typo_tolerance(nl: SafetyLexicon) -> None:
    # "bang" has four letters: "bank" is not read as "bang".
    assert nl.check("ik ben bank").severity is None


def test_the_most_severe_match_wins(nl: SafetyLexicon) -> None:
    verdict = nl.check("ik ben bang, hij staat voor de deur")
    assert (verdict.severity, verdict.category) == ("critical", "danger_now")


def test_the_check_looks_in_every_language() -> None:
    check = SafetyCheck.load(["nl", "en"])
    verdict = check.check("he found me", "nl")
    assert verdict.matched == "en.exploiter_contact.found_me"


def test_the_verdict_names_an_entry_never_the_text(nl: SafetyLexicon) -> None:
    text = "ik wil dood"
    verdict = nl.check(text)
    assert verdict.matched is not None and text not in verdict.matched


@pytest.mark.parametrize("lang", ["nl", "en"])
def test_every_entry_is_well_formed(lang: str) -> None:
    lexicon = SafetyLexicon.load(lang)
    assert {entry.category for entry in lexicon.entries} == set(DANGER_INTENTS)
    for entry in lexicon.entries:
        assert entry.id.startswith(f"{lang}.{entry.category}.")
        assert entry.severity in ("critical", "high")


def test_a_long_message_is_checked_quickly(nl: SafetyLexicon) -> None:
    text = "bla die bla " * 900 + "ik wil dood"
    assert nl.check(text).severity == "critical"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("entries: [", "not valid YAML"),
        ("negations: []\n", "'entries:' list"),
        ("entries:\n- id: x\n  category: boredom\n  severity: high\n  phrases: [a]\n", "category"),
        ("entries:\n- id: x\n  category: self_harm\n  severity: low\n  phrases: [a]\n", "severity"),
        ("entries:\n- id: x\n  category: self_harm\n  severity: high\n  phrases: []\n", "phrases"),
    ],
)
def test_broken_lexicon_files_are_refused(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "nl.yml").write_text(content)
    with pytest.raises(SafetyLexiconError, match=message):
        SafetyLexicon.load("nl", tmp_path)
