"""`Care`: the storage, keys and settings one process works with, built once at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from care.crypto import KeyRing, load_keyring
from care.db import check_schema, make_engine, make_sessionmaker
from care.settings import Settings, database_url, resolve_path
from care.vault import Vault


@dataclass
class Care:
    """What every service in `care` needs: settings, database and keys."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    keyring: KeyRing
    vault: Vault

    def close(self) -> None:
        """Release database connections."""
        self.engine.dispose()


def load_keys(settings: Settings) -> KeyRing:
    """The key ring from AFTERCARE_KEYS or the key file."""
    inline = settings.keys_inline.get_secret_value() if settings.keys_inline else None
    return load_keyring(inline, resolve_path(settings, settings.keys_file))


def open_care(settings: Settings, *, require_schema: bool = True) -> Care:
    """Connect to the database and load the keys; refuse an outdated schema."""
    keyring = load_keys(settings)
    engine = make_engine(database_url(settings))
    if require_schema:
        try:
            check_schema(engine)
        except Exception:
            engine.dispose()
            raise
    return Care(settings, engine, make_sessionmaker(engine), keyring, Vault(keyring))
