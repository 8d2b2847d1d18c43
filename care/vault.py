"""Per-person data keys: create, use, rotate and erase them.

A `Vault` hands out a `Cipher` for a data key id. Unwrapped keys are cached in memory only.
Erasing a data key (destroying its wrapped key) makes every text encrypted with it unreadable.

A data key's id is never given to another key: the cache, in this process and in every other
one (the bot, the CLI), maps ids to keys. An erased key's row stays as a tombstone (SQLite
would give the highest id again once its row was deleted), and a key made in a transaction
that rolled back is forgotten (its id may come again, on SQLite).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from care.crypto import ERASED, Cipher, KeyRing, new_data_key
from care.errors import DecryptionError
from care.models import DataKey


class Vault:
    """Creates and opens data keys with the master key ring."""

    def __init__(self, keyring: KeyRing) -> None:
        self.keyring = keyring
        self._cache: dict[int, Cipher] = {}

    def new_key(self, session: Session) -> DataKey:
        """Create and store a new wrapped data key; flushes to give it an id."""
        key = DataKey(
            wrapped=self.keyring.wrap(new_data_key()), master_key_id=self.keyring.primary_id
        )
        session.add(key)
        session.flush()
        key_id = key.id

        def forget(_session: Session) -> None:  # on any rollback; a savepoint's costs a re-read
            self._cache.pop(key_id, None)

        event.listen(session, "after_rollback", forget)
        return key

    def cipher(self, session: Session, data_key_id: int | None) -> Cipher:
        """The cipher of a data key; DecryptionError when the key was erased."""
        if data_key_id is None:
            raise DecryptionError("this data was erased: its key no longer exists")
        cached = self._cache.get(data_key_id)
        if cached is not None:
            return cached
        key = session.get(DataKey, data_key_id)
        if key is None or key.master_key_id == ERASED:
            raise DecryptionError("this data was erased: its key no longer exists")
        cipher = Cipher(self.keyring.unwrap(key.wrapped))
        self._cache[data_key_id] = cipher
        return cipher

    def encrypt(self, session: Session, data_key_id: int | None, text: str) -> bytes:
        """Encrypt text with a data key."""
        return self.cipher(session, data_key_id).encrypt(text)

    def decrypt(self, session: Session, data_key_id: int | None, token: bytes) -> str:
        """Decrypt text with a data key."""
        return self.cipher(session, data_key_id).decrypt(token)

    def erase(self, session: Session, data_key_id: int) -> None:
        """Destroy a data key: everything encrypted with it becomes unreadable. Its row stays,
        without the key, so that its id is never another key's."""
        self._cache.pop(data_key_id, None)
        key = session.get(DataKey, data_key_id)
        if key is not None:
            key.wrapped = b""
            key.master_key_id = ERASED
            session.flush()

    def keys_to_rotate(self, session: Session) -> int:
        """How many data keys are not yet wrapped by the newest master key."""
        stmt = select(func.count()).where(
            DataKey.master_key_id != self.keyring.primary_id, DataKey.master_key_id != ERASED
        )
        return int(session.scalar(stmt) or 0)

    def rotate(
        self,
        session: Session,
        batch_size: int = 200,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Re-wrap every data key under the newest master key, committing batch by batch.

        Safe to interrupt and run again: each batch commits on its own, and a key already
        under the newest master key is left alone.
        """
        done = 0
        primary = self.keyring.primary_id
        while True:
            batch = session.scalars(
                select(DataKey)
                .where(DataKey.master_key_id != primary, DataKey.master_key_id != ERASED)
                .order_by(DataKey.id)
                .limit(batch_size)
            ).all()
            if not batch:
                return done
            for key in batch:
                key.wrapped = self.keyring.rewrap(key.wrapped)
                key.master_key_id = primary
            session.commit()
            done += len(batch)
            if progress is not None:
                progress(len(batch))

    def master_keys_in_use(self, session: Session) -> set[str]:
        """The master key ids some data key is still wrapped with."""
        return set(
            session.scalars(
                select(DataKey.master_key_id).where(DataKey.master_key_id != ERASED).distinct()
            )
        )
