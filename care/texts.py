"""Texts of the service, kept per key in Dutch and English."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Texts = Mapping[str, Mapping[str, str]]
"""key -> language -> text (with `{placeholders}`)."""


def pick(texts: Texts, key: str, lang: str, **values: Any) -> str:
    """The text of `key` in `lang` (Dutch when it has none in that language), filled in."""
    by_language = texts[key]
    return (by_language.get(lang) or by_language["nl"]).format(**values)
