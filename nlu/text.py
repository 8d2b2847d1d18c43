"""Text normalisation shared by the safety lexicon and the embedded classifier.

Girls write fast, on a phone, in chat spelling: "HEEEELP", "kwil dood", "ik bn bang 😢". The
lexicon compares a *skeleton* of each word (case folded, accents stripped, zero-width and
control characters removed, every run of a repeated letter collapsed to one), so "doooood",
"Dood" and "dood" are the same word.
"""

from __future__ import annotations

import re
import unicodedata

#: Zero-width and direction-control characters that change nothing a person sees.
_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff]")
_REPEATS = re.compile(r"(.)\1+")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_APOSTROPHES = re.compile("['\u2018\u2019\u02bc`´]")


def clean(text: str) -> str:
    """Case-fold, strip accents and invisible characters; keep words, emoji and punctuation."""
    text = _INVISIBLE.sub("", text)
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = _APOSTROPHES.sub("", text)
    return unicodedata.normalize("NFC", text).casefold()


def skeleton(word: str) -> str:
    """Collapse every run of one repeated character: "heeeelp" -> "help", "dood" -> "dod"."""
    return _REPEATS.sub(r"\1", word)


def words(text: str) -> list[str]:
    """The words of a cleaned text (letters and digits in any script; emoji are not words)."""
    return _WORD.findall(text)


def within_one_edit(a: str, b: str) -> bool:
    """True when `a` becomes `b` by at most one insertion, deletion, substitution or swap."""
    if a == b:
        return True
    la, lb = len(a), len(b)
    if abs(la - lb) > 1:
        return False
    if la > lb:
        a, b, la, lb = b, a, lb, la
    i = 0
    while i < la and a[i] == b[i]:
        i += 1
    if la == lb:
        if a[i + 1 :] == b[i + 1 :]:
            return True  # one substitution
        return i + 1 < la and a[i] == b[i + 1] and a[i + 1] == b[i] and a[i + 2 :] == b[i + 2 :]
    return a[i:] == b[i + 1 :]  # one insertion into the shorter word


def deletes(word: str) -> set[str]:
    """Every string made from `word` by deleting one character (for a fast typo index)."""
    return {word[:i] + word[i + 1 :] for i in range(len(word))}
