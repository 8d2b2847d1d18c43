"""Organisations, workers and clients: adding them, linking their Telegram, finding them.

Chat ids are stored encrypted with the person's data key and found through a blind index.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from care import audit
from care.codes import issue_code, redeem_code, revoke_codes
from care.crypto import KeyRing
from care.db import savepoint
from care.errors import InvalidInput, NotFound
from care.models import (
    Client,
    ClientStatus,
    CodeKind,
    Organisation,
    Worker,
    WorkerRole,
    utcnow,
)
from care.vault import Vault

_CHAT_PURPOSE = "telegram-chat"
_ALIAS_FORM = re.compile(r"^[\w.-]{2,40}$", re.UNICODE)
_NAME_FORM = re.compile(r"^[^\x00-\x1f]{1,80}$")
_ALIAS_WORDS = ("roos", "sterre", "maan", "zon", "wolk", "lente", "vlinder", "duin", "mist", "beek")


def chat_index(keyring: KeyRing, chat_id: int) -> str:
    """The blind index of a Telegram chat id."""
    return keyring.blind_index(_CHAT_PURPOSE, str(chat_id))


def _clean_name(value: str, what: str) -> str:
    value = value.strip()
    if not _NAME_FORM.match(value):
        raise InvalidInput(f"the {what} must be 1 to 80 printable characters")
    return value


def add_organisation(
    session: Session, name: str, phone: str | None = None, actor: str = "admin:cli"
) -> Organisation:
    """Add an organisation; its name must be new."""
    name = _clean_name(name, "organisation name")
    if session.scalars(select(Organisation).where(Organisation.name == name)).first():
        raise InvalidInput(f"an organisation named {name!r} already exists")
    if phone is not None and not re.fullmatch(r"[0-9 +()-]{3,32}", phone):
        raise InvalidInput("the phone number may hold only digits, spaces, +, - and ()")
    org = Organisation(name=name, phone=phone)
    session.add(org)
    session.flush()
    audit.record(session, actor, "organisation.add", detail=f"org:{org.id}")
    return org


def get_organisation(session: Session, name: str) -> Organisation:
    """The organisation with this name, or NotFound."""
    org = session.scalars(select(Organisation).where(Organisation.name == name)).first()
    if org is None:
        raise NotFound(f"no organisation named {name!r}; see `aftercare org list`")
    return org


def set_duress_word(
    session: Session, keyring: KeyRing, org: Organisation, word: str | None, actor: str
) -> None:
    """Set (or clear) the organisation's duress word; only its blind index is stored."""
    if word is None:
        org.duress_index = None
    else:
        normal = normalise_duress(word)
        if len(normal) < 3:
            raise InvalidInput("the duress word must have at least 3 letters")
        org.duress_index = keyring.blind_index("duress", f"{org.id}:{normal}")
    audit.record(session, actor, "organisation.duress_word", detail=f"org:{org.id}")


def normalise_duress(text: str) -> str:
    """How a duress word is compared: case-folded, trimmed, inner spaces collapsed."""
    return " ".join(text.casefold().split())


def is_duress(keyring: KeyRing, org: Organisation, text: str) -> bool:
    """True when `text` is the organisation's duress word."""
    return matches_duress(keyring, org.id, org.duress_index, text)


def matches_duress(keyring: KeyRing, org_id: int, duress_index: str | None, text: str) -> bool:
    """True when `text` is the duress word of organisation `org_id`, whose duress index (as
    stored, or None when it has none) the caller read."""
    if duress_index is None or len(text) > 200:
        return False
    candidate = keyring.blind_index("duress", f"{org_id}:{normalise_duress(text)}")
    return secrets.compare_digest(candidate, duress_index)


@dataclass(frozen=True)
class Issued:
    """A record and the one-time code that links its Telegram (shown once)."""

    id: int
    name: str
    code: str


def add_worker(
    session: Session,
    vault: Vault,
    org_name: str,
    name: str,
    role: WorkerRole = WorkerRole.WORKER,
    language: str = "nl",
    valid_days: int = 7,
    actor: str = "admin:cli",
) -> Issued:
    """Add a worker to an organisation and issue the code they send to the bot."""
    org = get_organisation(session, org_name)
    name = _clean_name(name, "worker name")
    if session.scalars(select(Worker).where(Worker.org_id == org.id, Worker.name == name)).first():
        raise InvalidInput(f"{org.name} already has a worker named {name!r}")
    key = vault.new_key(session)
    worker = Worker(org_id=org.id, name=name, role=role, language=language, data_key_id=key.id)
    session.add(worker)
    session.flush()
    code = issue_code(
        session, vault.keyring, CodeKind.WORKER, worker_id=worker.id, valid_days=valid_days
    )
    audit.record(session, actor, "worker.add", detail=f"worker:{worker.id} role:{role.value}")
    return Issued(worker.id, worker.name, code)


def get_worker(session: Session, name: str, org_name: str | None = None) -> Worker:
    """The worker with this name (in this organisation when given), or NotFound."""
    stmt = select(Worker).where(Worker.name == name)
    if org_name is not None:
        stmt = stmt.join(Organisation, Worker.org_id == Organisation.id).where(
            Organisation.name == org_name
        )
    found = session.scalars(stmt).all()
    if not found:
        raise NotFound(f"no worker named {name!r}; see `aftercare worker list`")
    if len(found) > 1:
        raise InvalidInput(f"several workers are named {name!r}; add --org to choose")
    return found[0]


def _new_alias(session: Session, org_id: int) -> str:
    for _ in range(50):
        alias = f"{secrets.choice(_ALIAS_WORDS)}-{secrets.randbelow(9000) + 1000}"
        taken = session.scalars(
            select(Client.id).where(Client.org_id == org_id, Client.alias == alias)
        ).first()
        if taken is None:
            return alias
    raise InvalidInput("could not find a free alias; give one with --alias", "no_free_alias")


def invite_client(
    session: Session,
    vault: Vault,
    worker: Worker,
    *,
    alias: str | None = None,
    language: str = "nl",
    timezone: str = "Europe/Amsterdam",
    languages: tuple[str, ...] = ("nl", "en"),
    valid_days: int = 7,
    actor: str = "admin:cli",
) -> Issued:
    """Create an invited client for a worker and issue her enrollment code."""
    if language not in languages:
        raise InvalidInput(f"the language must be one of {', '.join(languages)}")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput("the time zone must be an IANA name such as Europe/Amsterdam") from None
    if alias is None:
        alias = _new_alias(session, worker.org_id)
    elif not _ALIAS_FORM.match(alias):
        raise InvalidInput(
            "the alias must be 2 to 40 letters, digits, '.', '_' or '-' (a nickname, "
            "never her legal name)",
            "alias_form",
        )
    key = vault.new_key(session)
    client = Client(
        org_id=worker.org_id,
        alias=alias,
        language=language,
        timezone=timezone,
        status=ClientStatus.INVITED,
        assigned_worker_id=worker.id,
        data_key_id=key.id,
    )
    try:
        with savepoint(session):  # added inside it: its rollback takes the row back
            session.add(client)
            session.flush()
    except IntegrityError:
        raise InvalidInput(
            f"the alias {alias!r} is already used in this organisation", "alias_taken"
        ) from None
    code = issue_code(
        session, vault.keyring, CodeKind.CLIENT, client_id=client.id, valid_days=valid_days
    )
    audit.record(
        session, actor, "client.invite", client_alias=alias, responsible_worker_id=worker.id
    )
    return Issued(client.id, alias, code)


def reissue_client_code(
    session: Session, vault: Vault, client: Client, valid_days: int = 7, actor: str = "admin:cli"
) -> str:
    """Revoke her open codes and issue a new one (e.g. she lost the link)."""
    revoke_codes(session, client_id=client.id)
    code = issue_code(
        session, vault.keyring, CodeKind.CLIENT, client_id=client.id, valid_days=valid_days
    )
    audit.record(
        session,
        actor,
        "client.reissue_code",
        client_alias=client.alias,
        responsible_worker_id=client.assigned_worker_id,
    )
    return code


@dataclass(frozen=True)
class Linked:
    """Who a redeemed code linked: exactly one of worker or client."""

    worker: Worker | None
    client: Client | None


def link_chat(session: Session, vault: Vault, code: str, chat_id: int) -> Linked:
    """Redeem a code and bind this Telegram chat to its worker or client.

    A chat already bound to someone else is moved: the newest link wins, the old one is cleared.
    Raises CodeRefused for any code that is not valid.
    """
    row = redeem_code(session, vault.keyring, code)
    index = chat_index(vault.keyring, chat_id)
    for w in session.scalars(select(Worker).where(Worker.chat_index == index)):
        w.chat_index, w.chat_id_enc = None, None
    for c in session.scalars(select(Client).where(Client.chat_index == index)):
        c.chat_index, c.chat_id_enc = None, None
    session.flush()
    if row.kind is CodeKind.WORKER:
        worker = session.get(Worker, row.worker_id)
        if worker is None:
            raise NotFound("the worker of this code no longer exists")
        worker.chat_index = index
        worker.chat_id_enc = vault.encrypt(session, worker.data_key_id, str(chat_id))
        audit.record(session, f"worker:{worker.id}", "worker.link_telegram")
        return Linked(worker, None)
    client = session.get(Client, row.client_id)
    if client is None:
        raise NotFound("the client of this code no longer exists")
    client.chat_index = index
    client.chat_id_enc = vault.encrypt(session, client.data_key_id, str(chat_id))
    if client.status is ClientStatus.INVITED:
        client.status = ClientStatus.ACTIVE
        client.enrolled_at = utcnow()
    audit.record(
        session,
        "client",
        "client.enroll",
        client_alias=client.alias,
        responsible_worker_id=client.assigned_worker_id,
    )
    return Linked(None, client)


# Built once: building a statement costs more than running it on the hot path of every turn.
_CLIENT_BY_CHAT = select(Client).where(Client.chat_index == bindparam("index"))
_CLIENT_BY_CHAT_LOCKED = _CLIENT_BY_CHAT.with_for_update()
_WORKER_BY_CHAT = select(Worker).where(Worker.chat_index == bindparam("index"))


def find_by_chat(session: Session, keyring: KeyRing, chat_id: int, *, lock: bool = False) -> Linked:
    """The worker or client bound to this chat (both None when nobody is). A chat belongs to
    one person at most (`link_chat`), so she, the common case, is looked for first. With
    `lock`, her row is locked for the rest of the transaction (PostgreSQL: FOR UPDATE)."""
    params = {"index": chat_index(keyring, chat_id)}
    clients = _CLIENT_BY_CHAT_LOCKED if lock else _CLIENT_BY_CHAT
    client = session.scalars(clients, params).first()
    if client is not None:
        return Linked(None, client)
    worker = session.scalars(_WORKER_BY_CHAT, params).first()
    return Linked(worker, None)


_CLIENT_LOOK = select(Client.id, Client.language).where(Client.chat_index == bindparam("index"))
_WORKER_LOOK = select(Worker.id, Worker.language).where(Worker.chat_index == bindparam("index"))


@dataclass(frozen=True)
class Look:
    """Who a chat belongs to, as a first look before a turn reads it."""

    kind: Literal["client", "worker"]
    id: int
    language: str


def look_up_chat(connection: Connection, keyring: KeyRing, chat_id: int) -> Look | None:
    """Who this chat belongs to, or None: one small read, for a first look before a turn (the
    turn itself reads her again, in its transaction)."""
    params = {"index": chat_index(keyring, chat_id)}
    client = connection.execute(_CLIENT_LOOK, params).first()
    if client is not None:
        return Look("client", client.id, client.language)
    worker = connection.execute(_WORKER_LOOK, params).first()
    if worker is not None:
        return Look("worker", worker.id, worker.language)
    return None


def chat_id_of(session: Session, vault: Vault, person: Worker | Client) -> int | None:
    """The decrypted chat id of a worker or client, or None when not linked."""
    if person.chat_id_enc is None:
        return None
    return int(vault.decrypt(session, person.data_key_id, person.chat_id_enc))


def erase_client(session: Session, vault: Vault, client: Client, actor: str) -> None:
    """Erase her: destroy her data key (texts unreadable, in backups too) and unlink her chat."""
    audit.record(
        session,
        actor,
        "client.erase",
        client_alias=client.alias,
        responsible_worker_id=client.assigned_worker_id,
    )
    key_id = client.data_key_id
    client.chat_index = None
    client.chat_id_enc = None
    client.status = ClientStatus.ENDED
    client.ended_at = utcnow()
    client.data_key_id = None
    session.flush()
    if key_id is not None:
        vault.erase(session, key_id)
