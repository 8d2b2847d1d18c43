"""Encryption at rest: master keys, per-owner data keys and the HMAC blind index.

Key material never lives in the database. A key set is JSON, from the file named by
AFTERCARE_KEYS_FILE (or `keys_file` in config.yml) or inline in AFTERCARE_KEYS:

    {"format": 1,
     "master_keys": [{"id": "m-20261130-ab12", "key": "<Fernet key>"}, ...],   # newest first
     "index_key": "<urlsafe base64 of 32 random bytes>"}

Each client (and each worker) has a random data key. Her texts are encrypted with it (Fernet:
AES-128-CBC + HMAC-SHA256, authenticated); the data key is stored wrapped by the master keys
(MultiFernet, newest first). Destroying her data key makes her rows unreadable everywhere,
backups included. Chat ids and one-time codes are found through a keyed HMAC blind index.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from care.errors import DecryptionError, KeysError

KEYS_FORMAT = 1


ERASED = "erased"
"""The `DataKey.master_key_id` of an erased data key (`care.vault.Vault.erase`): its wrapped
key is gone, its row keeps its id. No master key may have this id."""


@dataclass(frozen=True)
class MasterKey:
    """One master key with a stable id (so we know which rows still use it)."""

    id: str
    fernet: Fernet


class KeyRing:
    """The master keys (newest first) and the blind-index key, loaded from a trusted place."""

    def __init__(self, master_keys: list[MasterKey], index_key: bytes, source: str) -> None:
        if not master_keys:
            raise KeysError(f"{source}: no master key; run `aftercare keys generate`")
        if len(index_key) < 32:
            raise KeysError(f"{source}: the index key is shorter than 32 bytes")
        self._masters = master_keys
        self._multi = MultiFernet([m.fernet for m in master_keys])
        self._index_key = index_key
        self.source = source

    @property
    def primary_id(self) -> str:
        """The id of the newest master key, the one new data keys are wrapped with."""
        return self._masters[0].id

    @property
    def master_ids(self) -> tuple[str, ...]:
        """Ids of all master keys, newest first."""
        return tuple(m.id for m in self._masters)

    def wrap(self, data_key: bytes) -> bytes:
        """Encrypt a data key with the newest master key."""
        return self._multi.encrypt(data_key)

    def unwrap(self, wrapped: bytes) -> bytes:
        """Decrypt a wrapped data key with whichever master key made it."""
        try:
            return self._multi.decrypt(wrapped)
        except InvalidToken:
            raise KeysError(
                f"{self.source}: a stored data key cannot be opened with these master keys; "
                "is a master key missing from the key set?"
            ) from None

    def rewrap(self, wrapped: bytes) -> bytes:
        """Re-encrypt a wrapped data key under the newest master key."""
        try:
            return self._multi.rotate(wrapped)
        except InvalidToken:
            raise KeysError(
                f"{self.source}: a stored data key cannot be opened with these master keys; "
                "is a master key missing from the key set?"
            ) from None

    def blind_index(self, purpose: str, value: str) -> str:
        """A keyed, deterministic fingerprint of `value`, separate per purpose."""
        message = purpose.encode() + b"\x00" + value.encode()
        return hmac.new(self._index_key, message, hashlib.sha256).hexdigest()


class Cipher:
    """Encrypts and decrypts the texts of one owner with her data key."""

    def __init__(self, data_key: bytes) -> None:
        self._fernet = Fernet(data_key)

    def encrypt(self, text: str) -> bytes:
        """Encrypt text (authenticated; a fresh IV every time)."""
        return self._fernet.encrypt(text.encode("utf-8"))

    def decrypt(self, token: bytes) -> str:
        """Decrypt, or raise DecryptionError when the token was changed or is not ours."""
        try:
            return self._fernet.decrypt(token).decode("utf-8")
        except (InvalidToken, UnicodeDecodeError):
            raise DecryptionError(
                "stored data could not be decrypted: it was changed or belongs to another key"
            ) from None


def new_data_key() -> bytes:
    """A fresh random data key."""
    return Fernet.generate_key()


def _new_master() -> dict[str, str]:
    stamp = datetime.now(UTC).strftime("%Y%m%d")
    return {"id": f"m-{stamp}-{secrets.token_hex(3)}", "key": Fernet.generate_key().decode()}


def new_key_set() -> dict[str, Any]:
    """A fresh key set: one master key and an index key."""
    return {
        "format": KEYS_FORMAT,
        "master_keys": [_new_master()],
        "index_key": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
    }


def add_master_key(key_set: dict[str, Any]) -> dict[str, Any]:
    """The key set with a new master key in front; old ones stay until rotation is done."""
    return {**key_set, "master_keys": [_new_master(), *key_set["master_keys"]]}


def write_key_file(path: Path, key_set: dict[str, Any]) -> None:
    """Write a key set with mode 0600, atomically (a crash leaves the old file whole)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(key_set, handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def read_key_set(text: str, source: str) -> dict[str, Any]:
    """Parse and check a key set's JSON; errors name the source, never the key material."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise KeysError(
            f"{source}: not a valid key set (the JSON is broken or truncated); "
            "restore it from your backup or run `aftercare keys generate`"
        ) from None
    if not isinstance(data, dict) or data.get("format") != KEYS_FORMAT:
        raise KeysError(f"{source}: not a key set of format {KEYS_FORMAT}")
    masters = data.get("master_keys")
    if not isinstance(masters, list) or not masters:
        raise KeysError(f"{source}: 'master_keys' must be a non-empty list")
    for number, entry in enumerate(masters, start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            raise KeysError(f"{source}: master key {number} has no 'id'")
        if entry["id"] == ERASED:
            raise KeysError(
                f"{source}: master key {number} may not be named {ERASED!r} (it marks an erased"
                " data key); give it another id"
            )
        try:
            Fernet(entry.get("key", ""))
        except (ValueError, TypeError, binascii.Error):
            raise KeysError(
                f"{source}: master key {entry['id']!r} is not a valid key (wrong or truncated)"
            ) from None
    index = data.get("index_key")
    try:
        raw_index = base64.urlsafe_b64decode(index) if isinstance(index, str) else b""
    except (ValueError, binascii.Error):
        raw_index = b""
    if len(raw_index) < 32:
        raise KeysError(f"{source}: 'index_key' must be 32 random bytes in urlsafe base64")
    return data


def keyring_from_set(key_set: dict[str, Any], source: str) -> KeyRing:
    """Build the key ring from a checked key set."""
    masters = [MasterKey(m["id"], Fernet(m["key"])) for m in key_set["master_keys"]]
    return KeyRing(masters, base64.urlsafe_b64decode(key_set["index_key"]), source)


def load_keyring(inline: str | None, keys_file: Path) -> KeyRing:
    """Load the key ring from AFTERCARE_KEYS (inline JSON) or the key file."""
    if inline:
        source = "AFTERCARE_KEYS"
        return keyring_from_set(read_key_set(inline, source), source)
    source = f"key file {keys_file} (AFTERCARE_KEYS_FILE)"
    try:
        text = keys_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeysError(
            f"{source} does not exist; set AFTERCARE_KEYS_FILE or run `aftercare keys generate`"
        ) from None
    except OSError as exc:
        raise KeysError(f"{source} cannot be read ({type(exc).__name__})") from None
    return keyring_from_set(read_key_set(text, source), source)
