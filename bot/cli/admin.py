"""Admin commands: init, db, keys, org, worker, client, audit.

Every command that reads or changes a client's data writes an audit entry.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from sqlalchemy import func, select

from bot.cli.app import care, main, settings
from care import audit, directory
from care.crypto import add_master_key, new_key_set, read_key_set, write_key_file
from care.db import check_schema, current_revision, head_revision, make_engine, upgrade
from care.errors import KeysError, NotFound
from care.models import (
    Client,
    Escalation,
    EscalationStatus,
    Organisation,
    Worker,
    WorkerRole,
)
from care.settings import database_url, resolve_path

ADMIN = "admin:cli"


def _keys_path() -> Path:
    return resolve_path(settings(), settings().keys_file)


def _invite_link(code: str) -> str | None:
    username = settings().telegram.username
    return f"https://t.me/{username}?start={code}" if username else None


@main.command()
def init() -> None:
    """Prepare a local installation: create a key file if none exists, upgrade the database."""
    s = settings()
    if s.keys_inline is None:
        path = _keys_path()
        if not path.exists():
            write_key_file(path, new_key_set())
            click.secho(
                f"Warning: created a new local key file {path} (mode 0600). Without it the data "
                "cannot be read: back it up apart from the database, and in production set "
                "AFTERCARE_KEYS_FILE to a key file kept outside the checkout.",
                fg="yellow",
                err=True,
            )
    upgrade(database_url(s))
    care()  # proves the keys load and the schema is current
    click.echo("Ready: keys loaded, database at the newest migration.")


@main.group()
def db() -> None:
    """Database schema: upgrade it, see where it is."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Bring the database to the newest migration (safe to run again)."""
    upgrade(database_url(settings()))
    click.echo(f"Database at migration {head_revision()}.")


@db.command("current")
def db_current() -> None:
    """Show the database's migration and whether it is the newest."""
    engine = make_engine(database_url(settings()))
    try:
        click.echo(f"database: {current_revision(engine) or 'empty'}, code: {head_revision()}")
        check_schema(engine)
    finally:
        engine.dispose()


@main.group()
def keys() -> None:
    """Encryption keys: generate a key file, rotate master keys, retire old ones."""


@keys.command("generate")
@click.option("--file", "path", type=click.Path(path_type=Path), help="Key file to write.")
@click.option(
    "--new-master",
    is_flag=True,
    help="Add a new master key in front of an existing key file (then run `keys rotate`).",
)
def keys_generate(path: Path | None, new_master: bool) -> None:
    """Write a new key file (mode 0600), or add a new master key to an existing one."""
    target = path or _keys_path()
    if new_master:
        try:
            current = read_key_set(target.read_text(encoding="utf-8"), str(target))
        except FileNotFoundError:
            raise KeysError(f"{target} does not exist; run without --new-master first") from None
        updated = add_master_key(current)
        write_key_file(target, updated)
        click.echo(
            f"Added master key {updated['master_keys'][0]['id']} to {target}. "
            "Now run `aftercare keys rotate`."
        )
        return
    if target.exists():
        raise click.ClickException(
            f"{target} exists; it may protect data. Use --new-master to add a master key, "
            "or --file to write elsewhere."
        )
    write_key_file(target, new_key_set())
    click.echo(f"Wrote a new key file {target} (mode 0600). Back it up apart from the database.")


@keys.command("rotate")
@click.option("--batch-size", default=200, show_default=True, help="Keys re-wrapped per commit.")
def keys_rotate(batch_size: int) -> None:
    """Re-wrap every data key under the newest master key. Safe to interrupt and run again."""
    c = care()
    with c.sessions() as session:
        todo = c.vault.keys_to_rotate(session)
        if todo == 0:
            click.echo(f"All data keys are under master key {c.keyring.primary_id}.")
            return
        with click.progressbar(length=todo, label="Re-wrapping data keys", file=sys.stderr) as bar:
            done = c.vault.rotate(session, batch_size=batch_size, progress=bar.update)
        audit.record(session, ADMIN, "keys.rotate", detail=f"keys:{done}")
        session.commit()
    click.echo(
        f"Re-wrapped {done} data keys under {c.keyring.primary_id}. "
        "Older master keys can now be retired with `aftercare keys retire`."
    )


@keys.command("retire")
def keys_retire() -> None:
    """Remove master keys that no data key uses any more from the key file."""
    c = care()
    path = _keys_path()
    if settings().keys_inline is not None:
        raise click.ClickException("keys come from AFTERCARE_KEYS; edit that value instead")
    key_set = read_key_set(path.read_text(encoding="utf-8"), str(path))
    with c.sessions() as session:
        in_use = c.vault.master_keys_in_use(session)
    keep = [m for i, m in enumerate(key_set["master_keys"]) if i == 0 or m["id"] in in_use]
    removed = len(key_set["master_keys"]) - len(keep)
    write_key_file(path, {**key_set, "master_keys": keep})
    click.echo(f"Retired {removed} master key(s); {len(keep)} left in {path}.")


@main.group()
def org() -> None:
    """Organisations (care providers)."""


@org.command("add")
@click.argument("name")
@click.option("--phone", help="The number girls may call, shown in the dialogues.")
def org_add(name: str, phone: str | None) -> None:
    """Add an organisation called NAME."""
    c = care()
    with c.sessions.begin() as session:
        added = directory.add_organisation(session, name, phone, actor=ADMIN)
        click.echo(f"Added organisation {added.name!r}.")


@org.command("list")
def org_list() -> None:
    """List the organisations."""
    c = care()
    with c.sessions() as session:
        for o in session.scalars(select(Organisation).order_by(Organisation.name)):
            click.echo(
                f"{o.name}\t{o.phone or '-'}\tduress word: {'set' if o.duress_index else 'not set'}"
            )


@org.command("duress-word")
@click.argument("org_name")
@click.option("--clear", is_flag=True, help="Remove the duress word.")
def org_duress(org_name: str, clear: bool) -> None:
    """Set the organisation's duress word (asked for without echo) or --clear it.

    When a girl sends this word the bot answers with something ordinary and raises a silent
    critical escalation. Only a keyed fingerprint of the word is stored.
    """
    c = care()
    word = None if clear else click.prompt("Duress word", hide_input=True, confirmation_prompt=True)
    with c.sessions.begin() as session:
        found = directory.get_organisation(session, org_name)
        directory.set_duress_word(session, c.keyring, found, word, ADMIN)
    click.echo("Duress word cleared." if clear else "Duress word set.")


@main.group()
def worker() -> None:
    """Aftercare workers, coordinators (on-call) and admins."""


@worker.command("add")
@click.option("--org", "org_name", required=True, help="The worker's organisation.")
@click.option("--name", required=True, help="The name girls and colleagues know them by.")
@click.option(
    "--role",
    type=click.Choice([r.value for r in WorkerRole]),
    default=WorkerRole.WORKER.value,
    show_default=True,
    help="coordinator = can be on call; admin = manages the organisation.",
)
@click.option("--lang", default="nl", show_default=True, help="Language of the worker's alerts.")
def worker_add(org_name: str, name: str, role: str, lang: str) -> None:
    """Add a worker and print the one-time code they send to the bot to link their Telegram."""
    c = care()
    with c.sessions.begin() as session:
        issued = directory.add_worker(
            session,
            c.vault,
            org_name,
            name,
            WorkerRole(role),
            language=lang,
            valid_days=settings().codes.valid_days,
            actor=ADMIN,
        )
    click.echo(f"Added worker {issued.name!r}.")
    click.echo(f"One-time code (valid {settings().codes.valid_days} days, use once): {issued.code}")
    click.echo(f"The worker sends the bot: /start {issued.code}")
    link = _invite_link(issued.code)
    if link:
        click.echo(f"Or opens: {link}")


@worker.command("list")
@click.option("--org", "org_name", help="Only this organisation.")
def worker_list(org_name: str | None) -> None:
    """List workers with their role and whether their Telegram is linked."""
    c = care()
    with c.sessions() as session:
        stmt = select(Worker, Organisation).join(Organisation, Worker.org_id == Organisation.id)
        if org_name:
            stmt = stmt.where(Organisation.name == org_name)
        for w, o in session.execute(stmt.order_by(Organisation.name, Worker.name)):
            linked = "linked" if w.chat_index else "not linked"
            click.echo(f"{o.name}\t{w.name}\t{w.role.value}\t{linked}")


@main.group()
def client() -> None:
    """Clients: invite, list, erase. Known only by alias."""


@client.command("invite")
@click.option("--worker", "worker_name", required=True, help="Her aftercare worker.")
@click.option("--org", "org_name", help="The worker's organisation, when names repeat.")
@click.option("--alias", help="A nickname she chooses; never her legal name. Random if left out.")
@click.option("--lang", default=None, help="nl or en (default: default_language).")
@click.option("--tz", "timezone", default=None, help="Her time zone (default from config).")
def client_invite(
    worker_name: str,
    org_name: str | None,
    alias: str | None,
    lang: str | None,
    timezone: str | None,
) -> None:
    """Invite a client: prints her one-time enrollment code and, if known, the t.me link."""
    c = care()
    s = settings()
    with c.sessions.begin() as session:
        found = directory.get_worker(session, worker_name, org_name)
        issued = directory.invite_client(
            session,
            c.vault,
            found,
            alias=alias,
            language=lang or s.default_language,
            timezone=timezone or s.timezone,
            languages=s.languages,
            valid_days=s.codes.valid_days,
            actor=ADMIN,
        )
    click.echo(f"Invited client {issued.name!r} for {worker_name}.")
    click.echo(f"One-time code (valid {s.codes.valid_days} days, use once): {issued.code}")
    link = _invite_link(issued.code)
    click.echo(f"Her link: {link}" if link else f"She sends the bot: /start {issued.code}")


@client.command("list")
@click.option("--org", "org_name", help="Only this organisation.")
def client_list(org_name: str | None) -> None:
    """List clients: alias, status, worker, open escalations. Written to the audit trail."""
    c = care()
    with c.sessions.begin() as session:
        open_counts = dict(
            session.execute(
                select(Escalation.client_id, func.count())
                .where(Escalation.status != EscalationStatus.RESOLVED)
                .group_by(Escalation.client_id)
            ).all()
        )
        stmt = (
            select(Client, Organisation, Worker)
            .join(Organisation, Client.org_id == Organisation.id)
            .join(Worker, Client.assigned_worker_id == Worker.id)
        )
        if org_name:
            stmt = stmt.where(Organisation.name == org_name)
        rows = session.execute(stmt.order_by(Organisation.name, Client.alias)).all()
        if not rows:
            click.echo("No clients yet. Invite one with `aftercare client invite`.")
        for cl, o, w in rows:
            audit.record(
                session, ADMIN, "client.list", client_alias=cl.alias, responsible_worker_id=w.id
            )
            click.echo(
                f"{o.name}\t{cl.alias}\t{cl.status.value}\t{cl.language}\t{w.name}\t"
                f"open escalations: {open_counts.get(cl.id, 0)}"
            )


@client.command("erase")
@click.argument("alias")
@click.option("--org", "org_name", required=True, help="Her organisation.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def client_erase(alias: str, org_name: str, yes: bool) -> None:
    """Erase a client: her data key is destroyed, so her texts are unreadable, in backups too."""
    c = care()
    if not yes:
        click.confirm(f"Erase every text of {alias!r}? This cannot be undone", abort=True)
    with c.sessions.begin() as session:
        found = session.scalars(
            select(Client)
            .join(Organisation, Client.org_id == Organisation.id)
            .where(Client.alias == alias, Organisation.name == org_name)
        ).first()
        if found is None:
            raise NotFound(f"no client {alias!r} in {org_name!r}")
        directory.erase_client(session, c.vault, found, ADMIN)
    click.echo(f"Erased {alias!r}: her data key is destroyed.")


@main.group("audit")
def audit_group() -> None:
    """The audit trail of every look at or change to a client's data."""


@audit_group.command("verify")
def audit_verify() -> None:
    """Check the hash chain: any edited, inserted or deleted entry is reported."""
    c = care()
    with c.sessions() as session:
        report = audit.verify(session)
    if report.ok:
        click.echo(f"Audit trail intact: {report.entries} entries.")
        return
    for problem in report.problems:
        click.echo(problem, err=True)
    raise click.ClickException(
        f"the audit trail was tampered with ({len(report.problems)} problems)"
    )


@audit_group.command("show")
@click.option("--last", default=20, show_default=True, help="How many entries.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def audit_show(last: int, as_json: bool) -> None:
    """Show the newest audit entries."""
    from care.models import AuditEntry

    c = care()
    with c.sessions() as session:
        rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(last)).all()
    for e in reversed(rows):
        item = {
            "at": e.at.isoformat(),
            "actor": e.actor,
            "action": e.action,
            "client": e.client_alias,
            "worker": e.responsible_worker_id,
        }
        click.echo(json.dumps(item) if as_json else "\t".join(str(v or "-") for v in item.values()))
