"""The exceptions of `care`. The edge (CLI, bot) decides how to tell a person.

    CareError
     ├── ConfigError            a setting is missing or wrong; names file, key and fix
     ├── KeysError              master or index keys missing, malformed or wrong
     ├── DecryptionError        a ciphertext was tampered with or its key is gone
     ├── StorageError
     │    ├── DatabaseUnavailable   the database cannot be reached
     │    └── SchemaOutdated        the database is not at the newest migration
     ├── CodeRefused            a one-time code is unknown, used or expired (never says which)
     ├── NotFound               a named organisation, worker or client does not exist
     ├── NotAllowed             the actor may not do this (another organisation, a closed item)
     └── InvalidInput           a value a person typed is not acceptable; says what is

Messages never contain message text, chat ids, tokens or keys.
"""

from __future__ import annotations


class CareError(Exception):
    """Base of every error raised by `care`."""


class ConfigError(CareError):
    """A setting is missing or has a wrong value."""


class KeysError(CareError):
    """The encryption keys are missing, malformed or do not fit the data."""


class DecryptionError(CareError):
    """A ciphertext could not be decrypted: it was changed, or its key is gone."""


class StorageError(CareError):
    """The database cannot be used."""


class DatabaseUnavailable(StorageError):
    """The database cannot be reached."""


class SchemaOutdated(StorageError):
    """The database schema is not at the newest migration."""


class CodeRefused(CareError):
    """A one-time code is not valid (unknown, already used or expired)."""

    def __init__(self) -> None:
        super().__init__("This code is not valid. Ask for a new one.")


class NotFound(CareError):
    """A named record does not exist."""


class NotAllowed(CareError):
    """The actor may not do this."""


class InvalidInput(CareError):
    """A value given by a person is not acceptable. The message is English, for the CLI;
    `reason`, where given, names the problem for a caller that words it in the person's own
    language (the worker desk)."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
