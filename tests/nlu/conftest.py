"""Fixtures for the NLU tests: one embedded NLU per session, cached models on disk."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nlu import Nlu, NluConfig, build_nlu
from nlu.config import default_cache_dir


@pytest.fixture(scope="session")
def model_cache() -> Path:
    """The real model cache (~/.cache/aftercare/nlu): models are keyed by a data hash."""
    return default_cache_dir()


@pytest.fixture(scope="session")
def nlu_config(model_cache: Path) -> NluConfig:
    """The embedded configuration the tests use."""
    return NluConfig(cache_dir=model_cache)


@pytest.fixture(scope="session")
def embedded_nlu(nlu_config: NluConfig) -> Iterator[Nlu]:
    """An embedded NLU built once for the whole session (training takes seconds)."""
    yield build_nlu(nlu_config)
