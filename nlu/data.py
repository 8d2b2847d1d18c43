"""The training data in nlu/data/<lang>/*.yml (Rasa 3.x NLU YAML), read without Rasa."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from nlu.errors import TrainingDataError, UnknownLanguageError

DATA_DIR = Path(__file__).resolve().parent / "data"
#: Rasa entity annotations inside an example: "[morgen](date)" or '[morgen]{"entity": "date"}'.
_ANNOTATION = re.compile(r"\[([^\]]+)\](?:\([^)]*\)|\{[^}]*\})")


@dataclass(frozen=True, slots=True)
class Example:
    """One training example: the text a girl might send and the intent it means."""

    text: str
    intent: str


@dataclass(frozen=True, slots=True)
class TrainingData:
    """All examples of one language, and a digest of the files they came from."""

    lang: str
    examples: tuple[Example, ...]
    digest: str
    files: tuple[Path, ...]

    @property
    def intents(self) -> frozenset[str]:
        """The intents these examples define."""
        return frozenset(example.intent for example in self.examples)

    @property
    def texts(self) -> list[str]:
        """The example texts, in order."""
        return [example.text for example in self.examples]

    @property
    def labels(self) -> list[str]:
        """The example intents, in order."""
        return [example.intent for example in self.examples]


def available_languages(root: Path = DATA_DIR) -> tuple[str, ...]:
    """The languages that have a folder of training data."""
    if not root.is_dir():
        return ()
    return tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.yml"))))


def load_training_data(lang: str, root: Path = DATA_DIR) -> TrainingData:
    """Read every nlu/data/<lang>/*.yml file; raise TrainingDataError naming file and problem."""
    folder = root / lang
    files = tuple(sorted(folder.glob("*.yml"))) if folder.is_dir() else ()
    if not files:
        raise UnknownLanguageError(f"There is no training data for language '{lang}' in {folder}.")
    digest = hashlib.sha256()
    examples: list[Example] = []
    for path in files:
        raw = path.read_bytes()
        digest.update(path.name.encode() + b"\0" + raw + b"\0")
        examples.extend(_parse_file(path, raw.decode("utf-8")))
    return TrainingData(lang, tuple(examples), digest.hexdigest(), files)


def _parse_file(path: Path, source: str) -> Iterable[Example]:
    try:
        document: Any = YAML(typ="safe", pure=True).load(source)
    except YAMLError as error:
        raise TrainingDataError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("nlu"), list):
        raise TrainingDataError(f"{path} must be Rasa NLU YAML with a top-level 'nlu:' list.")
    if str(document.get("version", "")) != "3.1":
        raise TrainingDataError(f'{path} must declare version: "3.1".')
    for number, block in enumerate(document["nlu"], start=1):
        if not isinstance(block, dict) or "intent" not in block:
            continue  # synonyms, regexes and lookup tables carry no examples for us
        intent = block["intent"]
        lines = block.get("examples")
        if not isinstance(intent, str) or not isinstance(lines, str):
            raise TrainingDataError(
                f"{path}: block {number} needs an 'intent' name and an 'examples: |' list."
            )
        for line in lines.splitlines():
            line = line.strip()
            if not line:
                continue
            if not line.startswith("- "):
                raise TrainingDataError(
                    f"{path}: intent '{intent}' has an example line that does not start with '- '."
                )
            text = _ANNOTATION.sub(r"\1", line[2:].strip())
            yield Example(text, intent)


@cache
def _intents_of(lang: str) -> frozenset[str]:
    return load_training_data(lang).intents


def defined_intents(lang: str | None = None) -> frozenset[str]:
    """The intents nlu/data defines for `lang`, or for every language together when None."""
    if lang is not None:
        return _intents_of(lang)
    found: frozenset[str] = frozenset()
    for each in available_languages():
        found |= _intents_of(each)
    return found
