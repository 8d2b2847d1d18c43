"""The safety lexicon: phrases that signal danger or self-harm, matched before any classifier.

A lexicon file (nlu/safety/<lang>.yml) lists entries, each with an id, a category (one of the
danger intents), a severity and phrases. A phrase is a sequence of word specs:

- a plain word (`gevonden`): matches that word, and, when the word has 5 or more letters, also
  a typo of it at one edit (insert, delete, substitute, swap);
- a prefix (`zelfmoord*`): matches every word that starts with it;
- alternatives (`snijd|kras|snij`): any of them, each plain or prefix;
- `$` as the last spec: the phrase must end its clause ("ik kan niet meer $" matches "ik kan
  niet meer..." but not "ik kan niet meer wachten op de zomer").

Text and phrases are cleaned the same way (see `nlu.text`): case, accents, invisible
characters and repeated letters do not matter, and chat spellings are rewritten first
("kwil" -> "ik wil", "im" -> "i am"). Between two words of a phrase at most `max_gap` other
words may stand, never a negation; a negation just before the phrase ("ik ben niet bang")
cancels it unless the entry says `negatable: false`, and so does a trailing negation ("hij is
hier niet") in languages that list `trailing_negations`. Clauses (split on punctuation and on
"maar"/"but") are matched separately, so a negation never reaches into the next clause.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from nlu.errors import SafetyLexiconError, UnknownLanguageError
from nlu.results import DANGER_INTENTS, NO_DANGER, SafetyVerdict, Severity
from nlu.text import clean, deletes, skeleton, within_one_edit, words

SAFETY_DIR = Path(__file__).resolve().parent / "safety"
_SEVERITY_RANK: dict[str, int] = {"critical": 2, "high": 1}
_FUZZY_MIN_LENGTH = 5
_NEGATION_REACH = 2
_TOKEN_CACHE_LIMIT = 50_000


@dataclass(frozen=True, slots=True)
class LexiconEntry:
    """One danger signal: an id (what is logged), its category, severity and phrases."""

    id: str
    category: str
    severity: Severity
    negatable: bool
    phrases: tuple[tuple[str, ...], ...]


@dataclass(frozen=True, slots=True)
class _Phrase:
    entry: LexiconEntry
    specs: tuple[str, ...]
    ends_clause: bool = False


class SafetyLexicon:
    """The safety lexicon of one language, compiled for fast matching."""

    def __init__(
        self,
        lang: str,
        entries: Sequence[LexiconEntry],
        *,
        negations: Iterable[str] = (),
        trailing_negations: Iterable[str] = (),
        rewrites: Mapping[str, str] | None = None,
        not_typos: Iterable[str] = (),
        clause_breaks: Iterable[str] = (),
        max_gap: int = 2,
    ) -> None:
        self.lang = lang
        self.entries = tuple(entries)
        self.max_gap = max_gap
        self._rewrites = {
            skeleton(clean(k)): tuple(skeleton(w) for w in words(clean(v)))
            for k, v in (rewrites or {}).items()
        }
        self._negations = frozenset(skeleton(w) for n in negations for w in self._words(n))
        self._trailing = frozenset(skeleton(w) for n in trailing_negations for w in self._words(n))
        self._not_typos = frozenset(skeleton(clean(w)) for w in not_typos)
        breaks = sorted({re.escape(clean(b)) for b in clause_breaks})
        self._clause_split = re.compile(
            r"[.!?;:,\n()\"]+" + (r"|\b(?:" + "|".join(breaks) + r")\b" if breaks else "")
        )
        self._literals: dict[str, set[str]] = {}
        self._by_delete: dict[str, set[str]] = {}
        self._prefixes: list[tuple[str, str]] = []
        self._by_first: dict[str, list[_Phrase]] = {}
        self._token_cache: dict[str, frozenset[str]] = {}
        for entry in self.entries:
            for phrase in entry.phrases:
                ends_clause = len(phrase) > 1 and phrase[-1] == "$"
                words_only = phrase[:-1] if ends_clause else phrase
                specs = tuple(self._compile_spec(spec) for spec in words_only)
                self._by_first.setdefault(specs[0], []).append(_Phrase(entry, specs, ends_clause))

    @classmethod
    def load(cls, lang: str, root: Path = SAFETY_DIR) -> SafetyLexicon:
        """Read nlu/safety/<lang>.yml; raise SafetyLexiconError that names file and entry."""
        path = root / f"{lang}.yml"
        if not path.is_file():
            raise UnknownLanguageError(f"There is no safety lexicon for language '{lang}'.")
        try:
            document: Any = YAML(typ="safe", pure=True).load(path.read_text("utf-8"))
        except YAMLError as error:
            raise SafetyLexiconError(f"{path} is not valid YAML: {error}") from None
        if not isinstance(document, dict) or not isinstance(document.get("entries"), list):
            raise SafetyLexiconError(f"{path} needs a top-level 'entries:' list.")
        entries = [_entry(path, number, raw) for number, raw in enumerate(document["entries"], 1)]
        ids = [entry.id for entry in entries]
        if len(ids) != len(set(ids)):
            raise SafetyLexiconError(f"{path}: entry ids must be unique.")
        return cls(
            lang,
            entries,
            negations=_strings(path, document, "negations"),
            trailing_negations=_strings(path, document, "trailing_negations"),
            rewrites={str(k): str(v) for k, v in (document.get("rewrites") or {}).items()},
            not_typos=_strings(path, document, "not_typos"),
            clause_breaks=_strings(path, document, "clause_breaks"),
            max_gap=int(document.get("max_gap", 2)),
        )

    def check(self, text: str) -> SafetyVerdict:
        """The most severe entry that matches `text` (first in the file on a tie), or no danger."""
        best: LexiconEntry | None = None
        for entry in self.matches(text):
            if best is None or _SEVERITY_RANK[entry.severity] > _SEVERITY_RANK[best.severity]:
                best = entry
        if best is None:
            return NO_DANGER
        return SafetyVerdict(best.severity, best.category, best.id)

    def matches(self, text: str) -> list[LexiconEntry]:
        """Every entry with a phrase in `text`, in file order, each once."""
        found: set[str] = set()
        for clause in self._clause_split.split(clean(text)):
            tokens = self._words(clause)
            if not tokens:
                continue
            specs_at = [self._specs_of(token) for token in tokens]
            for start, specs in enumerate(specs_at):
                for spec in specs:
                    for phrase in self._by_first.get(spec, ()):
                        if phrase.entry.id not in found and self._phrase_at(
                            phrase, start, tokens, specs_at
                        ):
                            found.add(phrase.entry.id)
        return [entry for entry in self.entries if entry.id in found]

    # -- matching -----------------------------------------------------------------------------

    def _words(self, text: str) -> list[str]:
        out: list[str] = []
        for word in words(clean(text)):
            word = skeleton(word)
            out.extend(self._rewrites.get(word, (word,)))
        return out

    def _phrase_at(
        self, phrase: _Phrase, start: int, tokens: list[str], specs_at: list[frozenset[str]]
    ) -> bool:
        if phrase.entry.negatable:
            before = tokens[max(0, start - _NEGATION_REACH) : start]
            if any(token in self._negations for token in before):
                return False
        position = start
        for spec in phrase.specs[1:]:
            for step in range(1, self.max_gap + 2):
                index = position + step
                if index >= len(tokens) or (step > 1 and tokens[index - 1] in self._negations):
                    return False
                if spec in specs_at[index]:
                    position = index
                    break
            else:
                return False
        after = position + 1
        if phrase.ends_clause and after < len(tokens):
            return False
        negated_after = after < len(tokens) and tokens[after] in self._trailing
        return not (phrase.entry.negatable and negated_after)

    def _specs_of(self, token: str) -> frozenset[str]:
        cached = self._token_cache.get(token)
        if cached is not None:
            return cached
        specs: set[str] = set(self._literals.get(token, ()))
        if len(token) >= _FUZZY_MIN_LENGTH - 1 and token not in self._not_typos:
            candidates = set(self._by_delete.get(token, ()))
            for variant in deletes(token):
                candidates |= self._by_delete.get(variant, set())
                if variant in self._literals:
                    candidates.add(variant)
            for word in candidates:
                if len(word) >= _FUZZY_MIN_LENGTH and within_one_edit(token, word):
                    specs |= self._literals[word]
        specs.update(spec for prefix, spec in self._prefixes if token.startswith(prefix))
        result = frozenset(specs)
        if len(self._token_cache) < _TOKEN_CACHE_LIMIT:
            self._token_cache[token] = result
        return result

    def _compile_spec(self, spec: str) -> str:
        key = "|".join(sorted(self._alternative(alt) for alt in spec.split("|") if alt))
        for alternative in key.split("|"):
            if alternative.endswith("*"):
                self._prefixes.append((alternative[:-1], key))
            else:
                self._literals.setdefault(alternative, set()).add(key)
                if len(alternative) >= _FUZZY_MIN_LENGTH:
                    for variant in deletes(alternative):
                        self._by_delete.setdefault(variant, set()).add(alternative)
        return key

    @staticmethod
    def _alternative(text: str) -> str:
        prefix = text.endswith("*")
        found = words(clean(text.rstrip("*")))
        if len(found) != 1:
            raise SafetyLexiconError(f"A phrase word must be one word, not '{text}'.")
        return skeleton(found[0]) + ("*" if prefix else "")


class SafetyCheck:
    """The lexicons of all configured languages; her own language first, then the others.

    She may switch language mid-sentence, or write English with Dutch settings: a danger
    signal in any configured language counts; the most severe verdict wins.
    """

    def __init__(self, lexicons: Mapping[str, SafetyLexicon]) -> None:
        self._lexicons = dict(lexicons)

    @classmethod
    def load(cls, languages: Iterable[str], root: Path = SAFETY_DIR) -> SafetyCheck:
        """Load the lexicon of every language that has one."""
        return cls({lang: SafetyLexicon.load(lang, root) for lang in languages})

    @property
    def languages(self) -> tuple[str, ...]:
        """The languages with a lexicon."""
        return tuple(self._lexicons)

    def check(self, text: str, lang: str) -> SafetyVerdict:
        """The most severe verdict over all lexicons, preferring her own language on a tie."""
        order = sorted(self._lexicons, key=lambda each: each != lang)
        best = NO_DANGER
        for each in order:
            verdict = self._lexicons[each].check(text)
            if verdict.severity is not None and (
                best.severity is None
                or _SEVERITY_RANK[verdict.severity] > _SEVERITY_RANK[best.severity]
            ):
                best = verdict
        return best


def _entry(path: Path, number: int, raw: Any) -> LexiconEntry:
    where = f"{path}: entry {number}"
    if not isinstance(raw, dict):
        raise SafetyLexiconError(f"{where} must be a mapping with id, category, severity, phrases.")
    entry_id, category, severity = raw.get("id"), raw.get("category"), raw.get("severity")
    if not isinstance(entry_id, str) or not entry_id:
        raise SafetyLexiconError(f"{where} needs an 'id'.")
    where = f"{path}: entry '{entry_id}'"
    if category not in DANGER_INTENTS:
        raise SafetyLexiconError(f"{where}: category must be one of {sorted(DANGER_INTENTS)}.")
    if severity not in _SEVERITY_RANK:
        raise SafetyLexiconError(f"{where}: severity must be 'critical' or 'high'.")
    phrases = raw.get("phrases")
    if not isinstance(phrases, list) or not phrases:
        raise SafetyLexiconError(f"{where} needs a non-empty 'phrases' list.")
    split = tuple(tuple(str(p).split()) for p in phrases)
    if any(not phrase for phrase in split):
        raise SafetyLexiconError(f"{where} has an empty phrase.")
    return LexiconEntry(entry_id, category, severity, bool(raw.get("negatable", True)), split)


def _strings(path: Path, document: Mapping[str, Any], key: str) -> list[str]:
    value = document.get(key) or []
    if not isinstance(value, list):
        raise SafetyLexiconError(f"{path}: '{key}' must be a list.")
    return [str(item) for item in value]
