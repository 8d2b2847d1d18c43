"""Errors of the `nlu` package.

    NluError
    ├── TrainingDataError      the files in nlu/data are missing or malformed
    ├── SafetyLexiconError     a file in nlu/safety is missing or malformed
    ├── UnknownLanguageError   asked to train or load a language that has no data
    └── BackendError           a backend could not answer
        ├── BackendUnavailable the Rasa server is down, slow or refused us
        └── RasaEnvironmentError  the Rasa environment is missing or a Rasa command failed

Messages are plain sentences that name files, languages and ids; never a message's text.
`Nlu.understand` catches all of these and falls back; they reach people only through the CLI.
"""

from __future__ import annotations


class NluError(Exception):
    """Base class of every error raised by the `nlu` package."""


class TrainingDataError(NluError):
    """The training data in nlu/data cannot be read or is not valid Rasa NLU YAML."""


class SafetyLexiconError(NluError):
    """A safety lexicon file cannot be read or is not valid."""


class UnknownLanguageError(NluError):
    """A language was asked for that has no training data or lexicon."""


class BackendError(NluError):
    """A classifier backend could not produce a result."""


class BackendUnavailable(BackendError):
    """The Rasa server did not answer in time, refused the request or answered nonsense."""


class RasaEnvironmentError(BackendError):
    """The separate Rasa environment is missing, or a Rasa command in it failed."""
