"""Encryption at rest: keys, data keys, tampering, erasure, rotation."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import select

from care import directory
from care.context import Care
from care.crypto import (
    Cipher,
    add_master_key,
    keyring_from_set,
    load_keyring,
    new_data_key,
    new_key_set,
    read_key_set,
    write_key_file,
)
from care.errors import DecryptionError, KeysError
from care.models import Client, Worker, WorkerRole
from care.vault import Vault


def test_tampered_ciphertext_raises_and_never_returns_garbage() -> None:
    cipher = Cipher(new_data_key())
    token = bytearray(cipher.encrypt("ik voel me niet veilig"))
    token[40] ^= 0x01
    with pytest.raises(DecryptionError):
        cipher.decrypt(bytes(token))


def test_same_text_encrypts_differently_each_time() -> None:
    cipher = Cipher(new_data_key())
    assert cipher.encrypt("hoi") != cipher.encrypt("hoi")


def test_key_file_is_written_private(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "aftercare.keys"
    write_key_file(path, new_key_set())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_keyring(None, path).primary_id.startswith("m-")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"format": 1, "master_keys": [', "broken or truncated"),
        ('{"format": 2, "master_keys": []}', "not a key set of format 1"),
        ('{"format": 1, "master_keys": []}', "'master_keys' must be a non-empty list"),
        (
            '{"format": 1, "master_keys": [{"id": "m1", "key": "c2hvcnQ="}], "index_key": ""}',
            "master key 'm1' is not a valid key",
        ),
        (
            '{"format": 1, "master_keys": [{"id": "erased", "key": "c2hvcnQ="}]}',
            "master key 1 may not be named 'erased'",
        ),
    ],
)
def test_bad_key_sets_are_refused_naming_the_source(content: str, expected: str) -> None:
    with pytest.raises(KeysError) as info:
        read_key_set(content, "AFTERCARE_KEYS")
    assert "AFTERCARE_KEYS" in str(info.value)
    assert expected in str(info.value)


def test_truncated_index_key_is_refused() -> None:
    key_set = new_key_set()
    key_set["index_key"] = key_set["index_key"][:10]
    with pytest.raises(KeysError, match="index_key"):
        read_key_set(json.dumps(key_set), "AFTERCARE_KEYS")


def test_missing_key_file_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(KeysError, match="AFTERCARE_KEYS_FILE"):
        load_keyring(None, tmp_path / "none.keys")


def test_error_messages_never_contain_key_material() -> None:
    key_set = new_key_set()
    secret = key_set["master_keys"][0]["key"]
    key_set["master_keys"][0]["key"] = secret[:-3]
    with pytest.raises(KeysError) as info:
        read_key_set(json.dumps(key_set), "AFTERCARE_KEYS")
    assert secret[:20] not in str(info.value)


def test_wrong_master_key_is_reported_not_garbage(care_ctx: Care) -> None:
    with care_ctx.sessions.begin() as session:
        key = care_ctx.vault.new_key(session)
        key_id = key.id
    stranger = Vault(keyring_from_set(new_key_set(), "other keys"))
    with care_ctx.sessions() as session, pytest.raises(KeysError, match="master key missing"):
        stranger.cipher(session, key_id)


def _client_with_note(care: Care, alias: str, note: str) -> tuple[int, bytes]:
    with care.sessions.begin() as session:
        directory.add_organisation(session, "Kompas")
        issued = directory.add_worker(
            session, care.vault, "Kompas", f"W-{alias}", WorkerRole.WORKER
        )
        worker = directory.get_worker(session, issued.name)
        invited = directory.invite_client(session, care.vault, worker, alias=alias)
        client = session.get(Client, invited.id)
        assert client is not None
        return client.id, care.vault.encrypt(session, client.data_key_id, note)


def test_erasing_one_data_key_leaves_her_rows_unreadable_and_others_intact(care_ctx: Care) -> None:
    with care_ctx.sessions.begin() as session:
        directory.add_organisation(session, "Kompas")
        directory.add_worker(session, care_ctx.vault, "Kompas", "Sanne")
        worker = directory.get_worker(session, "Sanne")
        a = directory.invite_client(session, care_ctx.vault, worker, alias="roos")
        b = directory.invite_client(session, care_ctx.vault, worker, alias="maan")
        ca, cb = session.get(Client, a.id), session.get(Client, b.id)
        assert ca is not None and cb is not None
        note_a = care_ctx.vault.encrypt(session, ca.data_key_id, "note for roos")
        note_b = care_ctx.vault.encrypt(session, cb.data_key_id, "note for maan")
        key_b = cb.data_key_id
    with care_ctx.sessions.begin() as session:
        client_a = session.get(Client, a.id)
        assert client_a is not None
        directory.erase_client(session, care_ctx.vault, client_a, "admin:test")
    # A fresh vault, as after a restart: nothing cached.
    fresh = Vault(care_ctx.keyring)
    with care_ctx.sessions() as session:
        erased = session.get(Client, a.id)
        assert erased is not None and erased.data_key_id is None
        with pytest.raises(DecryptionError, match="erased"):
            fresh.decrypt(session, erased.data_key_id, note_a)
        assert fresh.decrypt(session, key_b, note_b) == "note for maan"


def test_rotation_then_removing_old_master_key_still_reads_everything(
    care_ctx: Care, tmp_path: Path
) -> None:
    original = new_key_set()
    care_ctx.vault = Vault(keyring_from_set(original, "keys v1"))
    with care_ctx.sessions.begin() as session:
        directory.add_organisation(session, "Kompas")
        directory.add_worker(session, care_ctx.vault, "Kompas", "Sanne")
        worker = directory.get_worker(session, "Sanne")
        notes = {}
        for alias in ("roos", "maan", "zon"):
            issued = directory.invite_client(session, care_ctx.vault, worker, alias=alias)
            client = session.get(Client, issued.id)
            assert client is not None
            notes[client.data_key_id] = care_ctx.vault.encrypt(
                session, client.data_key_id, f"note {alias}"
            )
    rotated_set = add_master_key(original)
    rotated = Vault(keyring_from_set(rotated_set, "keys v2"))
    with care_ctx.sessions() as session:
        assert rotated.keys_to_rotate(session) == 4  # three clients and the worker
        # Interrupt after the first batch, then run again: both runs together do all.
        assert rotated.rotate(session, batch_size=1, progress=None) == 4
        assert rotated.rotate(session) == 0
        assert rotated.master_keys_in_use(session) == {rotated.keyring.primary_id}
    only_new = {**rotated_set, "master_keys": rotated_set["master_keys"][:1]}
    reader = Vault(keyring_from_set(only_new, "keys v2 without the old master"))
    with care_ctx.sessions() as session:
        for key_id, token in notes.items():
            assert reader.decrypt(session, key_id, token).startswith("note ")
        aliases = session.scalars(select(Client.alias)).all()
        assert sorted(aliases) == ["maan", "roos", "zon"]


def test_a_new_key_never_takes_an_erased_keys_id(care_ctx: Care) -> None:
    """The bot holds her key's cipher in memory; the CLI, another process, erases her (her
    key the newest) and then adds a worker. The worker's key must not take her key's id: the
    bot would encrypt the worker's chat id with her destroyed key, readable only until it
    restarts, and after that alerts to the worker could not be sent."""
    bot = care_ctx.vault
    cli = Vault(care_ctx.keyring)
    client_id, _ = _client_with_note(care_ctx, "roos", "note for roos")
    with care_ctx.sessions() as session:
        client = session.get(Client, client_id)
        assert client is not None and client.data_key_id is not None
        her_key = client.data_key_id
        bot.cipher(session, her_key)  # she chatted: her cipher is cached
    with care_ctx.sessions.begin() as session:
        client = session.get(Client, client_id)
        assert client is not None
        directory.erase_client(session, cli, client, "admin:test")
    with care_ctx.sessions.begin() as session:
        issued = directory.add_worker(session, cli, "Kompas", "Bram")
        worker = session.get(Worker, issued.id)
        assert worker is not None
        new_key = worker.data_key_id
        assert new_key != her_key
        chat = bot.encrypt(session, new_key, "5550123")
    restarted = Vault(care_ctx.keyring)
    with care_ctx.sessions() as session:
        assert restarted.decrypt(session, new_key, chat) == "5550123"


def test_a_key_made_in_a_transaction_that_rolled_back_is_not_remembered(care_ctx: Care) -> None:
    """A key used and then rolled back (an /invite that failed) may give its id to the next
    key, on SQLite: the cipher cached for it must not be used for the next one."""
    _client_with_note(care_ctx, "roos", "note for roos")
    vault = care_ctx.vault
    with pytest.raises(RuntimeError), care_ctx.sessions.begin() as session:
        lost = vault.new_key(session)
        vault.encrypt(session, lost.id, "never stored")
        raise RuntimeError("the invite failed")
    with care_ctx.sessions.begin() as session:
        kept = vault.new_key(session)
        token = vault.encrypt(session, kept.id, "stored")
        kept_id = kept.id
    with care_ctx.sessions() as session:
        assert Vault(care_ctx.keyring).decrypt(session, kept_id, token) == "stored"


def test_rotation_and_retiring_pass_over_an_erased_key(care_ctx: Care) -> None:
    original = new_key_set()
    care_ctx.vault = Vault(keyring_from_set(original, "keys v1"))
    _client_with_note(care_ctx, "roos", "note for roos")
    with care_ctx.sessions.begin() as session:
        client = session.scalars(select(Client)).one()
        directory.erase_client(session, care_ctx.vault, client, "admin:test")
    rotated = Vault(keyring_from_set(add_master_key(original), "keys v2"))
    with care_ctx.sessions() as session:
        # The worker's key only: the erased one has no key left to re-wrap.
        assert rotated.keys_to_rotate(session) == 1
        assert rotated.rotate(session) == 1
        assert rotated.keys_to_rotate(session) == 0
        # So the old master key can be retired: no data key is wrapped with it any more.
        assert rotated.master_keys_in_use(session) == {rotated.keyring.primary_id}
