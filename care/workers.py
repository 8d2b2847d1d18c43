"""The workers' side of the bot, channel-neutral: commands, alert buttons, appointments.

Commands (the same in Dutch and English; the worker's language sets the answers):

    /clients                            her clients: status, last check-in, open escalations
    /client ALIAS                       recent check-ins, a mood chart, upcoming appointments
    /invite [ALIAS]                     a new client: one-time code and t.me link
    /appointment ALIAS DATE TIME [PLACE]
                                        DATE is DD-MM-YYYY or YYYY-MM-DD, TIME is HH:MM (24 h),
                                        in her time zone; confirmed back with buttons first
    /escalations                        open escalations of the organisation, with buttons
    /send ALIAS TEXT                    a message from you, relayed by the bot (in her quiet
                                        hours it waits for their end, or a button sends it now)
    /handover ALIAS WORKER NOTE         warm handover to a colleague: both are told, she is
                                        introduced to her new worker

A worker sees only the clients of their own organisation, and every look is written to the
audit trail. Every answer is an outbox row to the worker (in order, rate-limited, retried).
"""

from __future__ import annotations

import base64
import io
import logging
import re
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo

from babel.dates import format_datetime
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, SessionTransaction

from care import audit, directory, escalations, outbox
from care.context import Care
from care.db import savepoint
from care.errors import CareError, InvalidInput
from care.models import (
    Appointment,
    AppointmentStatus,
    CheckIn,
    CheckInStatus,
    Client,
    ClientStatus,
    Escalation,
    EscalationStatus,
    OutboxMessage,
    OutboxPriority,
    OutboxStatus,
    RecipientKind,
    Worker,
    WorkerRole,
)
from care.texts import pick

log = logging.getLogger(__name__)

DATE_FORMATS = ("%d-%m-%Y %H:%M", "%Y-%m-%d %H:%M")
"""The two accepted forms of /appointment's DATE TIME: 31-12-2026 14:30 and 2026-12-31 14:30."""
DATE_SHAPES = (
    re.compile(r"\d{1,2}-\d{1,2}-\d{4} \d{1,2}:\d{2}"),
    re.compile(r"\d{4}-\d{1,2}-\d{1,2} \d{1,2}:\d{2}"),
)
"""The digits of `DATE_FORMATS`: text of this shape that does not parse names no real moment."""

PENDING_TTL_SECONDS = 30 * 60
"""How long a worker has to confirm an appointment before it must be sent again."""

MOOD_SCORE = {"bad": 1, "okay": 2, "good": 3}
_MOOD_ICON = {"good": "😊", "okay": "😐", "bad": "😔"}
_MOOD_WORD = {
    "good": {"nl": "goed", "en": "good"},
    "okay": {"nl": "gaat wel", "en": "okay"},
    "bad": {"nl": "niet zo goed", "en": "not so good"},
}


class AppointmentBook(Protocol):
    """Creates an appointment and its reminders (`reminders.appointments.create_appointment`)."""

    def __call__(
        self,
        session: Session,
        care: Care,
        client: Client,
        worker: Worker,
        starts_at: datetime,
        place: str | None,
    ) -> Appointment:
        """Create the appointment in the caller's transaction."""
        ...


def plain_appointment(
    session: Session,
    care: Care,
    client: Client,
    worker: Worker,
    starts_at: datetime,
    place: str | None,
) -> Appointment:
    """An appointment without reminders (used when the reminders are not wired in)."""
    row = Appointment(
        client_id=client.id,
        worker_id=worker.id,
        starts_at=starts_at,
        place_enc=care.vault.encrypt(session, client.data_key_id, place) if place else None,
        status=AppointmentStatus.PLANNED,
    )
    session.add(row)
    session.flush()
    return row


_T: dict[str, dict[str, str]] = {
    "help": {
        "nl": "Opdrachten:\n"
        "/clients – je cliënten\n"
        "/client ALIAS – check-ins, stemming, afspraken\n"
        "/invite – nieuwe cliënt uitnodigen\n"
        "/appointment ALIAS DATUM TIJD [PLEK] – bv. /appointment roos-1234 31-12-2026 14:30 "
        "Stationsplein 1 (of 2026-12-31 14:30)\n"
        "/escalations – open escalaties\n"
        "/send ALIAS TEKST – bericht aan haar via de bot\n"
        "/handover ALIAS COLLEGA NOTITIE – warme overdracht",
        "en": "Commands:\n"
        "/clients – your clients\n"
        "/client ALIAS – check-ins, mood, appointments\n"
        "/invite – invite a new client\n"
        "/appointment ALIAS DATE TIME [PLACE] – e.g. /appointment roos-1234 31-12-2026 14:30 "
        "Station Square 1 (or 2026-12-31 14:30)\n"
        "/escalations – open escalations\n"
        "/send ALIAS TEXT – a message to her through the bot\n"
        "/handover ALIAS COLLEAGUE NOTE – warm handover",
    },
    "welcome": {
        "nl": "Welkom, {name}! Je Telegram is gekoppeld. Hier krijg je meldingen van je "
        "cliënten.\n\n{help}",
        "en": "Welcome, {name}! Your Telegram is linked. Alerts from your clients arrive "
        "here.\n\n{help}",
    },
    "failed": {
        "nl": "Sorry, dat lukte niet door een fout bij mij. Probeer het zo nog eens.",
        "en": "Sorry, that did not work because of an error on my side. Please try again.",
    },
    "unsupported": {
        "nl": "Ik lees alleen tekst en opdrachten. Typ /help voor de lijst.",
        "en": "I only read text and commands. Type /help for the list.",
    },
    "no_such_client": {
        "nl": "Ik ken geen cliënt {alias} in jouw organisatie. Zie /clients.",
        "en": "I know no client {alias} in your organisation. See /clients.",
    },
    "usage_client": {"nl": "Gebruik: /client ALIAS", "en": "Use: /client ALIAS"},
    "usage_send": {"nl": "Gebruik: /send ALIAS TEKST", "en": "Use: /send ALIAS TEXT"},
    "usage_handover": {
        "nl": "Gebruik: /handover ALIAS COLLEGA NOTITIE (COLLEGA is de naam zoals in je "
        "organisatie bekend)",
        "en": "Use: /handover ALIAS COLLEAGUE NOTE (COLLEAGUE is the name your organisation "
        "knows them by)",
    },
    "usage_appointment": {
        "nl": "Gebruik: /appointment ALIAS DATUM TIJD [PLEK]\nDATUM: 31-12-2026 of 2026-12-31, "
        "TIJD: 14:30 (24 uur, haar tijdzone).",
        "en": "Use: /appointment ALIAS DATE TIME [PLACE]\nDATE: 31-12-2026 or 2026-12-31, "
        "TIME: 14:30 (24 hours, her time zone).",
    },
    "bad_date": {
        "nl": "Die datum of tijd ken ik niet. Schrijf bv. 31-12-2026 14:30 of 2026-12-31 14:30.",
        "en": "I cannot read that date or time. Write e.g. 31-12-2026 14:30 or 2026-12-31 14:30.",
    },
    "no_such_date": {
        "nl": "{date} {time} bestaat niet. Schrijf de dag eerst, tijd 00:00-23:59: "
        "bv. 31-12-2026 14:30 of 2026-12-31 14:30.",
        "en": "{date} {time} does not exist. Write the day first, time 00:00-23:59: "
        "e.g. 31-12-2026 14:30 or 2026-12-31 14:30.",
    },
    "clock_forward": {
        "nl": "Die tijd bestaat niet op die dag: de klok gaat dan een uur vooruit ({zone}). "
        "Kies een andere tijd.",
        "en": "That time does not exist on that day: the clocks go forward an hour ({zone}). "
        "Choose another time.",
    },
    "clock_back": {
        "nl": "Die tijd komt op die dag twee keer voor: de klok gaat dan een uur terug ({zone}). "
        "Kies een andere tijd.",
        "en": "That time happens twice on that day: the clocks go back an hour ({zone}). "
        "Choose another time.",
    },
    "past_date": {
        "nl": "Die afspraak ligt in het verleden of meer dan een jaar vooruit.",
        "en": "That appointment is in the past or more than a year ahead.",
    },
    "confirm_appointment": {
        "nl": "Afspraak met {alias}:\n🕒 {when} ({zone})\n📍 {place}\nOpslaan?",
        "en": "Appointment with {alias}:\n🕒 {when} ({zone})\n📍 {place}\nSave it?",
    },
    "no_place": {"nl": "(geen plek)", "en": "(no place)"},
    "btn_save": {"nl": "Opslaan", "en": "Save"},
    "btn_cancel": {"nl": "Annuleren", "en": "Cancel"},
    "appointment_saved": {
        "nl": "Opgeslagen: afspraak met {alias} op {when}. Ze krijgt herinneringen.",
        "en": "Saved: appointment with {alias} on {when}. She will get reminders.",
    },
    "appointment_cancelled": {
        "nl": "Oké, niet opgeslagen.",
        "en": "Okay, not saved.",
    },
    "appointment_expired": {
        "nl": "Deze bevestiging is verlopen. Stuur /appointment opnieuw.",
        "en": "This confirmation has expired. Send /appointment again.",
    },
    "invalid_alias_form": {
        "nl": "Een schuilnaam heeft 2 tot 40 letters, cijfers, '.', '_' of '-', zonder spaties."
        " Nooit haar echte naam. Of laat hem weg: dan kies ik er een.",
        "en": "An alias has 2 to 40 letters, digits, '.', '_' or '-', without spaces. Never her"
        " real name. Or leave it out: then I choose one.",
    },
    "invalid_alias_taken": {
        "nl": "Die schuilnaam is al in gebruik in jouw organisatie. Kies een andere, of laat hem"
        " weg: dan kies ik er een.",
        "en": "That alias is in use already in your organisation. Choose another, or leave it"
        " out: then I choose one.",
    },
    "invalid_no_free_alias": {
        "nl": "Ik vond geen vrije schuilnaam. Geef er zelf een: /invite SCHUILNAAM",
        "en": "I found no free alias. Give one yourself: /invite ALIAS",
    },
    "invalid": {
        "nl": "Dat kan zo niet. (Melding in het Engels: {detail})",
        "en": "That cannot be done like that: {detail}.",
    },
    "appointment_already_saved": {
        "nl": "Deze afspraak is al opgeslagen. Er komt geen tweede.",
        "en": "This appointment is saved already. It is not saved twice.",
    },
    "appointment_already_cancelled": {
        "nl": "Deze afspraak was al geannuleerd. Er is niets opgeslagen.",
        "en": "This appointment was cancelled already. Nothing was saved.",
    },
    "client_appointment": {
        "nl": "Nieuwe afspraak met {worker_name}: {when}.",
        "en": "New appointment with {worker_name}: {when}.",
    },
    "no_clients": {
        "nl": "Je hebt nog geen cliënten. Nodig iemand uit met /invite.",
        "en": "You have no clients yet. Invite someone with /invite.",
    },
    "clients_head": {"nl": "Je cliënten:", "en": "Your clients:"},
    "client_line": {
        "nl": "• {alias} – {status} – laatste check-in: {last} – open: {open}",
        "en": "• {alias} – {status} – last check-in: {last} – open: {open}",
    },
    "never": {"nl": "nog geen", "en": "none yet"},
    "client_head": {
        "nl": "{alias} ({status}, {language}), contactpersoon: {worker}",
        "en": "{alias} ({status}, {language}), worker: {worker}",
    },
    "checkins_head": {"nl": "Laatste check-ins:", "en": "Recent check-ins:"},
    "checkin_line": {"nl": "• {when}: {mood}{safe}", "en": "• {when}: {mood}{safe}"},
    "unsafe_mark": {"nl": " – voelt zich niet veilig", "en": " – does not feel safe"},
    "missed": {"nl": "geen antwoord", "en": "no answer"},
    "appointments_head": {"nl": "Komende afspraken:", "en": "Upcoming appointments:"},
    "skipped_head": {
        "nl": "Niet verstuurd (laatste 14 dagen):",
        "en": "Not sent (last 14 days):",
    },
    "none": {"nl": "• geen", "en": "• none"},
    "open_escalations": {
        "nl": "Open escalaties: {count}",
        "en": "Open escalations: {count}",
    },
    "chart_caption": {
        "nl": "Stemming van {alias}, laatste {weeks} weken",
        "en": "Mood of {alias}, last {weeks} weeks",
    },
    "invited": {
        "nl": "Nieuwe cliënt {alias}. Eenmalige code (geldig {days} dagen): {code}\n{link}\n"
        "Geef haar de link zelf, liefst persoonlijk.",
        "en": "New client {alias}. One-time code (valid {days} days): {code}\n{link}\n"
        "Give her the link yourself, in person if you can.",
    },
    "invite_link": {"nl": "Haar link: {link}", "en": "Her link: {link}"},
    "invite_start": {
        "nl": "Zij stuurt de bot: /start {code}",
        "en": "She sends the bot: /start {code}",
    },
    "no_escalations": {
        "nl": "Geen open escalaties. 👍",
        "en": "No open escalations. 👍",
    },
    "escalation_line": {
        "nl": "{severity} — {alias}: {reason} ({time}, {status}) #{id}",
        "en": "{severity} — {alias}: {reason} ({time}, {status}) #{id}",
    },
    "status_open": {"nl": "open", "en": "open"},
    "status_acknowledged": {"nl": "gezien", "en": "acknowledged"},
    "relay": {
        "nl": "Bericht van {worker_name}:\n{text}",
        "en": "Message from {worker_name}:\n{text}",
    },
    "relayed": {"nl": "Doorgestuurd aan {alias}.", "en": "Sent to {alias}."},
    "relay_held": {
        "nl": "Het is nu stille tijd voor {alias}: haar telefoon blijft stil tot {until} "
        "(haar tijd). Je bericht gaat dan naar haar toe. Moet het toch nu? Druk op de knop. "
        "Is het dringend, bel haar dan.",
        "en": "It is quiet time for {alias}: her phone stays silent until {until} (her "
        "time). Your message goes to her then. Must it go now? Press the button. If it is "
        "urgent, call her.",
    },
    "held_note": {
        "nl": "Zij krijgt het bericht om {until} (stille tijd).",
        "en": "She gets the message at {until} (quiet time).",
    },
    "btn_send_now": {"nl": "Toch nu sturen", "en": "Send it now"},
    "relay_now": {
        "nl": "Je bericht gaat nu naar {alias}.",
        "en": "Your message goes to {alias} now.",
    },
    "relay_gone": {
        "nl": "Dat bericht is al verstuurd of bestaat niet meer.",
        "en": "That message has been sent already or no longer exists.",
    },
    "cannot_reach": {
        "nl": "{alias} is niet bereikbaar via de bot ({why}). Neem op een andere manier "
        "contact op.",
        "en": "{alias} cannot be reached through the bot ({why}). Please get in touch another way.",
    },
    "why_not_linked": {"nl": "nog niet gekoppeld", "en": "not linked yet"},
    "why_stopped": {"nl": "ze is gestopt", "en": "she stopped"},
    "why_blocked": {"nl": "de bot is geblokkeerd", "en": "the bot was blocked"},
    "no_such_worker": {
        "nl": "Ik ken geen collega met die naam in jouw organisatie.",
        "en": "I know no colleague by that name in your organisation.",
    },
    "same_worker": {
        "nl": "{name} is al de contactpersoon van {alias}.",
        "en": "{name} already is the worker of {alias}.",
    },
    "handover_done": {
        "nl": "Overgedragen: {alias} heeft nu {name} als contactpersoon. Beiden zijn ingelicht.",
        "en": "Handed over: {alias} now has {name} as her worker. Both have been told.",
    },
    "handover_new": {
        "nl": "Warme overdracht: {old} draagt {alias} aan je over.\nNotitie: {note}\n"
        "Open escalaties die meekomen: {open}. Zie /client {alias}.",
        "en": "Warm handover: {old} hands {alias} over to you.\nNote: {note}\n"
        "Open escalations that come along: {open}. See /client {alias}.",
    },
    "handover_client": {
        "nl": "Hoi! Vanaf nu is {new} je vaste contactpersoon. {old} heeft {new} al over je "
        "verteld. Je bereikt {new} gewoon via mij, net als eerst.",
        "en": "Hi! From now on {new} is your contact person. {old} has already told {new} about "
        "you. You reach {new} through me, just like before.",
    },
    "not_understood": {
        "nl": "Dat is geen opdracht die ik ken.\n\n{help}",
        "en": "That is not a command I know.\n\n{help}",
    },
    "button_unknown": {
        "nl": "Deze knop werkt niet (meer).",
        "en": "This button does not work (any more).",
    },
}

_STATUS: dict[ClientStatus, dict[str, str]] = {
    ClientStatus.INVITED: {"nl": "uitgenodigd", "en": "invited"},
    ClientStatus.ACTIVE: {"nl": "actief", "en": "active"},
    ClientStatus.PAUSED: {"nl": "pauze", "en": "paused"},
    ClientStatus.ENDED: {"nl": "gestopt", "en": "stopped"},
}


# Why a reminder, check-in or message was not sent (codes from care.outbox and reminders).
_SKIP_REASON = {
    "expired": {"nl": "te laat, niet meer zinvol", "en": "too late to be useful"},
    "too_late": {"nl": "te laat, niet meer zinvol", "en": "too late to be useful"},
    "unreachable": {"nl": "onbereikbaar (bot geblokkeerd?)", "en": "unreachable (bot blocked?)"},
    "unconfirmed": {"nl": "misschien niet aangekomen", "en": "may not have arrived"},
    "missed_downtime": {"nl": "bot was uit", "en": "the bot was down"},
    "superseded": {"nl": "vervangen door een nieuwere", "en": "replaced by a newer one"},
    "quiet_hours": {"nl": "in haar stille uren", "en": "in her quiet hours"},
    "paused": {"nl": "ze heeft gepauzeerd", "en": "she paused"},
    "ended": {"nl": "ze is gestopt", "en": "she stopped"},
    "invited": {"nl": "nog niet gekoppeld", "en": "not enrolled yet"},
    "alert_waits": {
        "nl": "er stond een veiligheidsvraag voor haar open",
        "en": "a safety question to her was still open",
    },
}
_SKIP_KIND = {
    "checkin": {"nl": "check-in", "en": "check-in"},
    "appointment_reminder": {"nl": "afspraakherinnering", "en": "appointment reminder"},
}


def _skip_line(kind: str, reason: str, lang: str) -> str:
    what = _SKIP_KIND.get(kind, {}).get(lang, kind)
    why = _SKIP_REASON.get(reason, {}).get(lang, reason)
    return f"{what}: {why}"


def _t(key: str, lang: str, **values: Any) -> str:
    return pick(_T, key, lang, **values)


class NoSuchDate(InvalidInput):
    """DATE TIME in a documented form, but a day or time that does not exist (31-02, 24:00)."""


class ClockChange(InvalidInput):
    """A local time that the clock change makes impossible ("forward": the hour is skipped)
    or ambiguous ("back": the hour happens twice). Saved anyway, her reminder would name
    another time than the worker confirmed."""

    def __init__(self, direction: Literal["forward", "back"]) -> None:
        super().__init__(f"the clocks go {direction} at that time")
        self.direction = direction


def parse_when(date: str, clock_time: str, timezone: str) -> datetime:
    """Read DATE TIME in one of `DATE_FORMATS`, as local time in `timezone`. InvalidInput for
    another form, ClockChange for a time the clock change skips or repeats."""
    text = f"{date} {clock_time}"
    for form in DATE_FORMATS:
        try:
            naive = datetime.strptime(text, form)
        except ValueError:
            continue
        zone = ZoneInfo(timezone)
        local = naive.replace(tzinfo=zone)
        if local.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != naive:
            raise ClockChange("forward")
        if local.utcoffset() != naive.replace(tzinfo=zone, fold=1).utcoffset():
            raise ClockChange("back")
        return local
    if any(shape.fullmatch(text) for shape in DATE_SHAPES):
        raise NoSuchDate("no such day or time")
    raise InvalidInput("use DD-MM-YYYY HH:MM or YYYY-MM-DD HH:MM")


def format_when(moment: datetime, timezone: str, lang: str) -> str:
    """A time in a language and time zone: 'donderdag 31 december om 14:30'."""
    pattern = "EEEE d MMMM 'om' HH:mm" if lang == "nl" else "EEEE d MMMM 'at' HH:mm"
    return str(format_datetime(moment, pattern, tzinfo=ZoneInfo(timezone), locale=lang))


def mood_chart(points: Sequence[tuple[datetime, str]], title: str) -> bytes:
    """A small PNG line chart of moods (1 = not so good, 3 = good) over time."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import date2num
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 2.4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    xs = [moment for moment, _ in points]
    ys = [MOOD_SCORE[mood] for _, mood in points]
    days = date2num(xs)  # type: ignore[no-untyped-call]
    axes.plot(days, ys, marker="o", color="#3b7dd8")
    axes.xaxis_date()
    axes.set_ylim(0.5, 3.5)
    axes.set_yticks([1, 2, 3])
    axes.set_yticklabels(["–", "±", "+"])
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    figure.autofmt_xdate()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


@dataclass(frozen=True)
class _Draft:
    """An appointment waiting for the worker's confirmation; once confirmed (`settled`), kept
    until `expires` so that a second press is told what the first did."""

    worker_id: int
    client_id: int
    starts_at: datetime
    place: str | None
    expires: float
    settled: Literal["saved", "cancelled"] | None = None


class WorkerDesk:
    """Answers a worker's commands and button presses, in the caller's transaction."""

    def __init__(
        self,
        care: Care,
        *,
        appointments: AppointmentBook | None = None,
        bot_username: str | None = None,
        chart_weeks: int = 8,
    ) -> None:
        self.care = care
        self.appointments: AppointmentBook = appointments or plain_appointment
        self.bot_username = bot_username or care.settings.telegram.username
        self.chart_weeks = chart_weeks
        # Drafts live in this process only: a restart asks the worker to send the command again.
        # Turns run on several threads: the lock makes a draft's check and settling one step.
        self._drafts: dict[str, _Draft] = {}
        self._drafts_lock = threading.Lock()

    # ------------------------------------------------------------------ entry points

    def welcome(self, session: Session, worker: Worker) -> None:
        """Greet a worker who just linked their Telegram."""
        help_text = _t("help", worker.language)
        self._say(session, worker, _t("welcome", worker.language, name=worker.name, help=help_text))

    def failed(self, session: Session, worker: Worker) -> None:
        """Tell a worker that their last message failed on our side."""
        self._say(session, worker, _t("failed", worker.language))

    def handle(self, session: Session, worker: Worker, inbound: Any, now: datetime) -> None:
        """One event from a worker's chat (a `care.conversation.Inbound`)."""
        lang = worker.language
        if inbound.kind == "choice":
            self._choice(session, worker, inbound.choice_id, now)
            return
        if inbound.kind == "unsupported":
            self._say(session, worker, _t("unsupported", lang))
            return
        if inbound.kind == "text":
            self._say(session, worker, _t("not_understood", lang, help=_t("help", lang)))
            return
        command, args = inbound.command, list(inbound.args)
        handlers = {
            "clients": self._clients,
            "client": self._client,
            "invite": self._invite,
            "appointment": self._appointment,
            "afspraak": self._appointment,
            "escalations": self._escalations,
            "escalaties": self._escalations,
            "send": self._send,
            "stuur": self._send,
            "handover": self._handover,
            "overdracht": self._handover,
        }
        handler = handlers.get(command)
        if handler is None:
            key = "help" if command in ("start", "help", "hulp") else "not_understood"
            text = _t("help", lang) if key == "help" else _t(key, lang, help=_t("help", lang))
            self._say(session, worker, text)
            return
        try:
            handler(session, worker, args, now)
        except InvalidInput as exc:
            self._refuse(session, worker, exc)

    # ------------------------------------------------------------------ helpers

    def _refuse(self, session: Session, worker: Worker, exc: CareError) -> None:
        """Tell the worker, in their language, why `care` refused what they asked."""
        reason = exc.reason if isinstance(exc, InvalidInput) else None
        key = f"invalid_{reason}"
        if key in _T:
            self._say(session, worker, _t(key, worker.language))
        else:
            self._say(session, worker, _t("invalid", worker.language, detail=str(exc)))

    def _say(
        self,
        session: Session,
        worker: Worker,
        text: str,
        *,
        buttons: list[list[list[str]]] | None = None,
        client_id: int | None = None,
        photo: bytes | None = None,
    ) -> None:
        payload: dict[str, Any] = {"type": "photo" if photo else "text", "text": text}
        if buttons:
            payload["buttons"] = buttons
        if photo:
            payload["photo"] = base64.b64encode(photo).decode("ascii")
        outbox.enqueue(
            session,
            self.care.vault,
            worker,
            payload,
            kind="worker",
            priority=OutboxPriority.REPLY,
            client_id=client_id,
        )

    def _find_client(self, session: Session, worker: Worker, alias: str) -> Client | None:
        exact = session.scalars(
            select(Client).where(Client.org_id == worker.org_id, Client.alias == alias)
        ).first()
        if exact is not None:
            return exact
        return session.scalars(
            select(Client).where(
                Client.org_id == worker.org_id, func.lower(Client.alias) == alias.lower()
            )
        ).first()

    def _client_or_say(
        self, session: Session, worker: Worker, alias: str, action: str
    ) -> Client | None:
        client = self._find_client(session, worker, alias)
        if client is None:
            audit.record(
                session, f"worker:{worker.id}", f"{action}.refused", detail="unknown alias"
            )
            self._say(session, worker, _t("no_such_client", worker.language, alias=alias[:40]))
        return client

    def _look(self, session: Session, worker: Worker, action: str, client: Client) -> None:
        audit.record(
            session,
            f"worker:{worker.id}",
            action,
            client_alias=client.alias,
            responsible_worker_id=client.assigned_worker_id,
        )

    def _status(self, client: Client, lang: str) -> str:
        return _STATUS[client.status].get(lang) or _STATUS[client.status]["nl"]

    def _local(self, moment: datetime, zone: str, lang: str) -> str:
        local = moment.astimezone(ZoneInfo(zone))
        return local.strftime("%d-%m %H:%M")

    # ------------------------------------------------------------------ commands

    def _clients(self, session: Session, worker: Worker, args: list[str], now: datetime) -> None:
        lang = worker.language
        stmt = select(Client).where(Client.org_id == worker.org_id)
        if worker.role is WorkerRole.WORKER:
            stmt = stmt.where(Client.assigned_worker_id == worker.id)
        clients = session.scalars(stmt.order_by(Client.alias).limit(100)).all()
        if not clients:
            self._say(session, worker, _t("no_clients", lang))
            return
        ids = [c.id for c in clients]
        open_counts = dict(
            session.execute(
                select(Escalation.client_id, func.count())
                .where(
                    Escalation.client_id.in_(ids), Escalation.status != EscalationStatus.RESOLVED
                )
                .group_by(Escalation.client_id)
            ).all()
        )
        last = dict(
            session.execute(
                select(CheckIn.client_id, func.max(CheckIn.answered_at))
                .where(CheckIn.client_id.in_(ids), CheckIn.answered_at.is_not(None))
                .group_by(CheckIn.client_id)
            ).all()
        )
        lines = [_t("clients_head", lang)]
        for client in clients:
            self._look(session, worker, "worker.client_list", client)
            answered = last.get(client.id)
            last_text = _t("never", lang)
            if answered is not None:
                mood = session.scalars(
                    select(CheckIn.mood)
                    .where(CheckIn.client_id == client.id, CheckIn.answered_at.is_not(None))
                    .order_by(CheckIn.answered_at.desc())
                    .limit(1)
                ).first()
                stamp = answered if answered.tzinfo else answered.replace(tzinfo=now.tzinfo)
                last_text = self._local(stamp, self.care.settings.timezone, lang)
                last_text += f" {_MOOD_ICON.get(mood or '', '')}".rstrip()
            lines.append(
                _t(
                    "client_line",
                    lang,
                    alias=client.alias,
                    status=self._status(client, lang),
                    last=last_text,
                    open=open_counts.get(client.id, 0),
                )
            )
        self._say(session, worker, "\n".join(lines))

    def _client(self, session: Session, worker: Worker, args: list[str], now: datetime) -> None:
        lang = worker.language
        if len(args) != 1:
            self._say(session, worker, _t("usage_client", lang))
            return
        client = self._client_or_say(session, worker, args[0], "worker.client_view")
        if client is None:
            return
        self._look(session, worker, "worker.client_view", client)
        assigned = session.get(Worker, client.assigned_worker_id)
        zone = self.care.settings.timezone
        lines = [
            _t(
                "client_head",
                lang,
                alias=client.alias,
                status=self._status(client, lang),
                language=client.language,
                worker=assigned.name if assigned else "?",
            ),
            "",
            _t("checkins_head", lang),
        ]
        recent = session.scalars(
            select(CheckIn)
            .where(
                CheckIn.client_id == client.id,
                CheckIn.status.in_([CheckInStatus.ANSWERED, CheckInStatus.MISSED]),
            )
            .order_by(CheckIn.due_at.desc())
            .limit(5)
        ).all()
        for checkin in recent:
            word = _MOOD_WORD.get(checkin.mood or "", {}).get(lang, checkin.mood or "")
            mood = (
                f"{_MOOD_ICON.get(checkin.mood or '', '')} {word}".strip()
                if checkin.mood
                else _t("missed", lang)
                if checkin.status is CheckInStatus.MISSED
                else "–"
            )
            safe = _t("unsafe_mark", lang) if checkin.feels_safe is False else ""
            when = self._local(checkin.answered_at or checkin.due_at, zone, lang)
            lines.append(_t("checkin_line", lang, when=when, mood=mood, safe=safe))
        if not recent:
            lines.append(_t("none", lang))
        lines += ["", _t("appointments_head", lang)]
        upcoming = session.scalars(
            select(Appointment)
            .where(
                Appointment.client_id == client.id,
                Appointment.starts_at > now,
                Appointment.status != AppointmentStatus.CANCELLED,
            )
            .order_by(Appointment.starts_at)
            .limit(3)
        ).all()
        for appointment in upcoming:
            lines.append(f"• {self._local(appointment.starts_at, client.timezone, lang)}")
        if not upcoming:
            lines.append(_t("none", lang))
        skipped = outbox.skipped_sends(session, client.id, since=now - timedelta(days=14))
        if skipped:
            lines += ["", _t("skipped_head", lang)]
            for skip in skipped[:5]:
                when = self._local(skip.due_at or skip.recorded_at, zone, lang)
                lines.append(f"• {when} {_skip_line(skip.kind, skip.reason, lang)}")
        open_count = session.scalar(
            select(func.count()).where(
                Escalation.client_id == client.id, Escalation.status != EscalationStatus.RESOLVED
            )
        )
        lines += ["", _t("open_escalations", lang, count=open_count or 0)]
        self._say(session, worker, "\n".join(lines), client_id=client.id)
        since = now - timedelta(weeks=self.chart_weeks)
        points = [
            (answered_at, mood)
            for answered_at, mood in session.execute(
                select(CheckIn.answered_at, CheckIn.mood)
                .where(
                    CheckIn.client_id == client.id,
                    CheckIn.answered_at.is_not(None),
                    CheckIn.answered_at >= since,
                    CheckIn.mood.is_not(None),
                )
                .order_by(CheckIn.answered_at)
            ).all()
            if answered_at is not None and mood in MOOD_SCORE
        ]
        if points:
            caption = _t("chart_caption", lang, alias=client.alias, weeks=self.chart_weeks)
            started = time.perf_counter()
            png = mood_chart(points, caption)
            log.info(
                "worker.chart points=%d ms=%.0f", len(points), (time.perf_counter() - started) * 1e3
            )
            self._say(session, worker, caption, photo=png, client_id=client.id)

    def _invite(self, session: Session, worker: Worker, args: list[str], now: datetime) -> None:
        settings = self.care.settings
        issued = directory.invite_client(
            session,
            self.care.vault,
            worker,
            alias=args[0] if args else None,
            language=settings.default_language,
            timezone=settings.timezone,
            languages=settings.languages,
            valid_days=settings.codes.valid_days,
            actor=f"worker:{worker.id}",
        )
        lang = worker.language
        if self.bot_username:
            link = _t(
                "invite_link", lang, link=f"https://t.me/{self.bot_username}?start={issued.code}"
            )
        else:
            link = _t("invite_start", lang, code=issued.code)
        self._say(
            session,
            worker,
            _t(
                "invited",
                lang,
                alias=issued.name,
                days=settings.codes.valid_days,
                code=issued.code,
                link=link,
            ),
            client_id=issued.id,
        )

    def _appointment(
        self, session: Session, worker: Worker, args: list[str], now: datetime
    ) -> None:
        lang = worker.language
        if len(args) < 3:
            self._say(session, worker, _t("usage_appointment", lang))
            return
        client = self._client_or_say(session, worker, args[0], "worker.appointment")
        if client is None:
            return
        try:
            starts_at = parse_when(args[1], args[2], client.timezone)
        except ClockChange as exc:
            self._say(session, worker, _t(f"clock_{exc.direction}", lang, zone=client.timezone))
            return
        except NoSuchDate:
            self._say(
                session, worker, _t("no_such_date", lang, date=args[1][:16], time=args[2][:8])
            )
            return
        except InvalidInput:
            self._say(session, worker, _t("bad_date", lang))
            return
        if starts_at <= now or starts_at > now + timedelta(days=366):
            self._say(session, worker, _t("past_date", lang))
            return
        place = " ".join(args[3:]).strip()[:200] or None
        token = secrets.token_hex(4)
        with self._drafts_lock:
            self._prune_drafts()
            self._drafts[token] = _Draft(
                worker.id, client.id, starts_at, place, time.monotonic() + PENDING_TTL_SECONDS
            )
        when = format_when(starts_at, client.timezone, lang)
        self._say(
            session,
            worker,
            _t(
                "confirm_appointment",
                lang,
                alias=client.alias,
                when=when,
                zone=client.timezone,
                place=place or _t("no_place", lang),
            ),
            buttons=[
                [
                    [f"appt:ok:{token}", _t("btn_save", lang)],
                    [f"appt:no:{token}", _t("btn_cancel", lang)],
                ]
            ],
            client_id=client.id,
        )

    def _settle_draft(
        self, worker: Worker, token: str, save: bool
    ) -> tuple[_Draft | None, _Draft | None]:
        """The worker's draft behind `token` (None: unknown, expired or another's) and, unless
        it was settled before, the settled one now in its place; one step under the lock, so
        that of two presses at once only one saves."""
        with self._drafts_lock:
            self._prune_drafts()
            draft = self._drafts.get(token)
            if draft is None or draft.worker_id != worker.id:
                return None, None
            if draft.settled is not None:
                return draft, None
            settled = replace(
                draft,
                settled="saved" if save else "cancelled",
                expires=time.monotonic() + PENDING_TTL_SECONDS,
            )
            self._drafts[token] = settled
            return draft, settled

    def _unsettle_unless_committed(
        self, session: Session, token: str, draft: _Draft, settled: _Draft
    ) -> None:
        """Give the worker's draft back, unconfirmed, when the transaction that confirmed it
        ends without a commit (the turn failed and was rolled back: nothing was saved, and the
        worker's next press must save it, not be told it was)."""
        committed = False

        def on_commit(_session: Session) -> None:
            nonlocal committed
            committed = True

        def on_end(_session: Session, transaction: SessionTransaction) -> None:
            if transaction.parent is None and not committed:  # not a savepoint, not durable
                self._unsettle(token, draft, settled)

        event.listen(session, "after_commit", on_commit, once=True)
        event.listen(session, "after_transaction_end", on_end)

    def _unsettle(self, token: str, draft: _Draft, settled: _Draft) -> None:
        """Put the unconfirmed `draft` back where this confirmation put `settled`."""
        with self._drafts_lock:
            if self._drafts.get(token) is settled:
                self._drafts[token] = draft

    def _prune_drafts(self) -> None:
        """Forget drafts past their time; the caller holds `_drafts_lock`."""
        now = time.monotonic()
        for token in [t for t, d in self._drafts.items() if d.expires < now]:
            del self._drafts[token]

    def _escalations(
        self, session: Session, worker: Worker, args: list[str], now: datetime
    ) -> None:
        lang = worker.language
        found = escalations.open_for_org(session, worker.org_id)
        if not found:
            self._say(session, worker, _t("no_escalations", lang))
            return
        for escalation, client in found:
            self._look(session, worker, "worker.escalation_view", client)
            status_key = (
                "status_acknowledged"
                if escalation.status is EscalationStatus.ACKNOWLEDGED
                else "status_open"
            )
            text = _t(
                "escalation_line",
                lang,
                severity=escalations.severity_text(escalation.severity, lang),
                alias=client.alias,
                reason=escalations.reason_text(escalation.reason, lang),
                time=escalations.local_time(escalation.created_at, self.care.settings),
                status=_t(status_key, lang),
                id=escalation.id,
            )
            self._say(
                session,
                worker,
                text,
                buttons=escalations.alert_buttons(escalation, lang),
                client_id=client.id,
            )

    def _reachable(self, session: Session, worker: Worker, client: Client) -> bool:
        lang = worker.language
        why = None
        if client.chat_id_enc is None:
            why = "why_not_linked"
        elif client.status is ClientStatus.ENDED:
            why = "why_stopped"
        elif client.unreachable:
            why = "why_blocked"
        if why is not None:
            self._say(
                session,
                worker,
                _t("cannot_reach", lang, alias=client.alias, why=_t(why, lang)),
            )
            return False
        return True

    def _relay(
        self, session: Session, client: Client, text: str, now: datetime
    ) -> tuple[OutboxMessage, datetime | None]:
        """A message to her on her worker's behalf. In her quiet hours her phone stays
        silent: it waits for their end (returned; None when it goes now)."""
        held = self.care.settings.quiet_until(
            client.quiet_hours, client.timezone, now, who=client.id
        )
        row = outbox.enqueue(
            session,
            self.care.vault,
            client,
            {"type": "text", "text": text},
            kind="relay",
            priority=OutboxPriority.REPLY,
            client_id=client.id,
            not_before=held,
        )
        return row, held

    def _held_note(self, client: Client, held: datetime | None, lang: str) -> str:
        """For her worker: when she gets a message held for her quiet hours ('' if not)."""
        if held is None:
            return ""
        return " " + _t("held_note", lang, until=self._local(held, client.timezone, lang))

    def _send(self, session: Session, worker: Worker, args: list[str], now: datetime) -> None:
        lang = worker.language
        if len(args) < 2:
            self._say(session, worker, _t("usage_send", lang))
            return
        client = self._client_or_say(session, worker, args[0], "worker.send")
        if client is None or not self._reachable(session, worker, client):
            return
        text = " ".join(args[1:])[:3500]
        relay = _t("relay", client.language, worker_name=escalations.first_name(worker), text=text)
        # Held for her quiet hours unless her worker says it must go now (`relay:now:<id>`).
        row, held = self._relay(session, client, relay, now)
        self._look(session, worker, "worker.send", client)
        if held is None:
            self._say(session, worker, _t("relayed", lang, alias=client.alias))
            return
        outbox.write(session, [row])  # its id goes into the button
        until = self._local(held, client.timezone, lang)
        self._say(
            session,
            worker,
            _t("relay_held", lang, alias=client.alias, until=until),
            buttons=[[[f"relay:now:{row.id}", _t("btn_send_now", lang)]]],
            client_id=client.id,
        )

    def _send_now(self, session: Session, worker: Worker, row_id: int, now: datetime) -> None:
        """Her worker's held message goes now after all: only a relay still waiting for a
        girl of the worker's own organisation (a forged or foreign id changes nothing)."""
        row = session.get(OutboxMessage, row_id, with_for_update=True)
        client = None
        if row is not None and row.kind == "relay" and row.recipient_kind is RecipientKind.CLIENT:
            client = session.get(Client, row.recipient_id)
        if row is None or client is None or client.org_id != worker.org_id:
            audit.record(session, f"worker:{worker.id}", "worker.button_refused", detail="relay")
            self._say(session, worker, _t("button_unknown", worker.language))
            return
        if row.status is not OutboxStatus.PENDING or row.not_before <= now:
            self._say(session, worker, _t("relay_gone", worker.language))
            return
        row.not_before = now
        self._look(session, worker, "worker.send_now", client)
        self._say(session, worker, _t("relay_now", worker.language, alias=client.alias))

    def _handover(self, session: Session, worker: Worker, args: list[str], now: datetime) -> None:
        lang = worker.language
        if len(args) < 2:
            self._say(session, worker, _t("usage_handover", lang))
            return
        client = self._client_or_say(session, worker, args[0], "client.handover")
        if client is None:
            return
        colleagues = session.scalars(
            select(Worker).where(Worker.org_id == worker.org_id, Worker.active.is_(True))
        ).all()
        by_name = {c.name.casefold(): c for c in colleagues}
        new: Worker | None = None
        note_words: list[str] = []
        for cut in range(len(args), 1, -1):
            candidate = " ".join(args[1:cut]).casefold()
            if candidate in by_name:
                new, note_words = by_name[candidate], args[cut:]
                break
        if new is None:
            self._say(session, worker, _t("no_such_worker", lang))
            return
        if new.id == client.assigned_worker_id:
            self._say(session, worker, _t("same_worker", lang, name=new.name, alias=client.alias))
            return
        old = session.get(Worker, client.assigned_worker_id)
        client.assigned_worker_id = new.id
        moved = 0
        for escalation in session.scalars(
            select(Escalation).where(
                Escalation.client_id == client.id, Escalation.status != EscalationStatus.RESOLVED
            )
        ):
            escalation.worker_id = new.id
            moved += 1
        audit.record(
            session,
            f"worker:{worker.id}",
            "client.handover",
            client_alias=client.alias,
            responsible_worker_id=new.id,
            detail=f"from:{old.id if old else 0} to:{new.id}",
        )
        note = " ".join(note_words).strip()[:1500] or "–"
        old_name = old.name if old else worker.name
        if new.chat_id_enc is not None:
            outbox.enqueue(
                session,
                self.care.vault,
                new,
                {
                    "type": "text",
                    "text": _t(
                        "handover_new",
                        new.language,
                        old=old_name,
                        alias=client.alias,
                        note=note,
                        open=moved,
                    ),
                },
                kind="notice",
                priority=OutboxPriority.NOTICE,
                client_id=client.id,
            )
        if old is not None and old.id != worker.id and old.chat_id_enc is not None:
            outbox.enqueue(
                session,
                self.care.vault,
                old,
                {
                    "type": "text",
                    "text": _t("handover_done", old.language, alias=client.alias, name=new.name),
                },
                kind="notice",
                priority=OutboxPriority.NOTICE,
                client_id=client.id,
            )
        held: datetime | None = None
        if (
            client.chat_id_enc is not None
            and client.status in (ClientStatus.ACTIVE, ClientStatus.PAUSED)
            and not client.unreachable
        ):
            intro = _t(
                "handover_client",
                client.language,
                new=escalations.first_name(new),
                old=escalations.first_name(old) if old else escalations.first_name(worker),
            )
            _, held = self._relay(session, client, intro, now)
        self._say(
            session,
            worker,
            _t("handover_done", lang, alias=client.alias, name=new.name)
            + self._held_note(client, held, lang),
        )

    # ------------------------------------------------------------------ buttons

    def _choice(self, session: Session, worker: Worker, data: str, now: datetime) -> None:
        lang = worker.language
        parsed = escalations.parse_callback(data)
        if parsed is not None:
            action, escalation_id = parsed
            outcome = escalations.act(
                session,
                self.care.vault,
                worker,
                escalation_id,
                action,
                now=now,
                settings=self.care.settings,
            )
            self._say(session, worker, outcome.message)
            return
        parts = data.split(":")
        if (
            len(parts) == 3
            and parts[:2] == ["relay", "now"]
            and parts[2].isdigit()
            and len(parts[2]) < 10
        ):
            self._send_now(session, worker, int(parts[2]), now)
            return
        if len(parts) == 3 and parts[0] == "appt" and parts[1] in ("ok", "no"):
            self._confirm_appointment(session, worker, parts[1] == "ok", parts[2], now)
            return
        audit.record(session, f"worker:{worker.id}", "worker.button_refused", detail="unknown")
        self._say(session, worker, _t("button_unknown", lang))

    def _confirm_appointment(
        self, session: Session, worker: Worker, save: bool, token: str, now: datetime
    ) -> None:
        lang = worker.language
        draft, settled = self._settle_draft(worker, token, save)
        if draft is None:
            self._say(session, worker, _t("appointment_expired", lang))
            return
        if settled is None:  # pressed twice: the first press did it
            self._say(session, worker, _t(f"appointment_already_{draft.settled}", lang))
            return
        self._unsettle_unless_committed(session, token, draft, settled)
        if not save:
            self._say(session, worker, _t("appointment_cancelled", lang))
            return
        client = session.get(Client, draft.client_id)
        if client is None or client.org_id != worker.org_id:
            with self._drafts_lock:
                self._drafts.pop(token, None)
            self._say(session, worker, _t("appointment_expired", lang))
            return
        try:
            with savepoint(session):
                self.appointments(session, self.care, client, worker, draft.starts_at, draft.place)
        except CareError as exc:
            self._unsettle(token, draft, settled)  # nothing saved: pressing again tries again
            self._refuse(session, worker, exc)
            return
        self._look(session, worker, "worker.appointment", client)
        when = format_when(draft.starts_at, client.timezone, lang)
        held: datetime | None = None
        if (
            client.chat_id_enc is not None
            and client.status is ClientStatus.ACTIVE
            and not client.unreachable
        ):
            her_when = format_when(draft.starts_at, client.timezone, client.language)
            told = _t(
                "client_appointment",
                client.language,
                worker_name=escalations.first_name(worker),
                when=her_when,
            )
            _, held = self._relay(session, client, told, now)
        self._say(
            session,
            worker,
            _t("appointment_saved", lang, alias=client.alias, when=when)
            + self._held_note(client, held, lang),
        )
