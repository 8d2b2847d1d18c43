"""A fake Telegram Bot API server for tests and benchmarks.

Telegram cannot be reached from the test machines, so this module serves the subset of the
Bot API the bot uses, answering as Telegram does (``{"ok": true, "result": ...}`` or
``{"ok": false, "error_code": ..., "description": ..., "parameters": {"retry_after": ...}}``).
The bot talks to it through the real python-telegram-bot HTTP stack::

    with FakeTelegram() as fake:                      # 127.0.0.1, free port, own thread
        bot = telegram.Bot(fake.token, base_url=fake.base_url,
                           base_file_url=fake.base_file_url)
        app = (Application.builder().token(fake.token).base_url(fake.base_url)
               .base_file_url(fake.base_file_url).build())

``async with FakeTelegram() as fake:`` works too, and ``tests.fakes.fixtures`` holds the
pytest fixture ``fake_telegram``. Set ``PTB_TIMEDELTA=true`` in the test process: without it
python-telegram-bot 22 warns when it builds ``RetryAfter``, which ``filterwarnings=error``
turns into an exception.

Methods served: ``getMe``, ``getUpdates`` (``offset`` confirms, ``limit``, ``allowed_updates``,
long poll ``timeout`` woken at once by a push, 409 when a newer poll or a webhook takes over),
``setWebhook`` / ``deleteWebhook`` / ``getWebhookInfo``, ``sendMessage``, ``sendPhoto``
(multipart upload, file id or URL), ``sendChatAction``, ``editMessageText``,
``editMessageReplyMarkup``, ``answerCallbackQuery``, ``deleteMessage``, ``deleteMessages``,
``setMyCommands`` / ``getMyCommands`` / ``deleteMyCommands``, ``getFile`` (and file downloads
under ``base_file_url``), ``close`` and ``logOut``. Method names are case-insensitive, as at
Telegram. Any other method answers 404 "Not Found"; a wrong token answers 401 "Unauthorized".

Push what a user does (each returns the ``update_id``)::

    fake.push_text(chat_id, "hoi")                    # user=dict(...) overrides the sender
    fake.push_command(chat_id, "/start", "CODE123")   # with the bot_command entity
    fake.push_callback(chat_id, "ci:3", message_id)   # a button press on a bot message
    fake.press(chat_id, "Goed")                       # press a button by its label
    fake.push_message(chat_id, **SAMPLES["sticker"])  # photo, voice, video, location, ...
    fake.push_edit(chat_id, message_id, "new text")   # an edited_message update
    fake.push_update({"message": {...}})              # anything else, raw
    fake.push_update(raw, times=2)                    # the same update_id twice
    fake.redeliver(update_id)                         # again, even after it was confirmed

When a webhook is set, pushed updates are POSTed to it (with the
``X-Telegram-Bot-Api-Secret-Token`` header when a secret was set) from a delivery thread,
retried on errors, instead of being queued for ``getUpdates``.

Read what the bot did::

    fake.sent(chat_id)          # FakeMessage list: text, reply_markup, protect_content, ...
    fake.texts(chat_id)         # just the texts the bot sent
    fake.visible(chat_id)       # what the chat shows now: hers and the bot's, minus deletions
    fake.calls("sendMessage")   # every request: method, parsed params, status, time
    fake.callback_answers()     # answerCallbackQuery calls that matched a pushed press
    fake.stats                  # requests, messages accepted, 429s sent, errors, duplicates
    fake.duplicates()           # {(chat_id, text): n} for texts accepted more than once
    fake.wait_for(3, chat_id=c)               # block until the bot has sent 3 messages there
    fake.wait_for(lambda: ..., timeout=2)     # or until a condition holds
    await fake.wait_for_async(3, chat_id=c)   # the same from async tests (never block a loop)

Inject faults and limits::

    fake.fail_next("sendMessage", 429, retry_after=3)  # -> telegram.error.RetryAfter
    fake.fail_next("sendMessage", 500)                 # 5xx -> telegram.error.NetworkError
    fake.fail_next("*", 403, chat_id=c)                # any method, only for that chat
    fake.block(chat_id)                                # 403 "bot was blocked by the user"
    fake.delay_next("sendMessage", 0.5)                # slow answer (after=True: sent, late)
    fake.drop_next("sendMessage")                      # close the socket, no answer at all
    fake.drop_next("sendMessage", after=True)          # sent, but the answer is lost
    fake.enforce_rate_limits()                         # 1 message/s per chat, 30/s overall
    fake.advance_clock(49 * 3600)                      # age messages past the 48 h limit

Chat state follows Telegram: message ids increase per chat and are shared by her messages and
the bot's; deleting an unknown or deleted message answers 400 "Bad Request: message to delete
not found", one older than 48 hours 400 "Bad Request: message can't be deleted for everyone";
editing an unknown message answers 400. ``deleteMessages`` skips ids it cannot delete, as
Telegram documents. Texts are stored as sent (no ``parse_mode`` rendering); lengths are counted
in code points, not UTF-16 units. Only ``send*`` methods count for the rate limits.

The fake logs nothing, and all state is guarded by one lock: the bot sends from its event
loop while the test reads. ``tests.fakes.remote.RemoteFakeTelegram`` runs the same fake in a
child process for benchmarks, so that it does not share the bot's GIL. A request that crashes
the fake answers 500 and is kept in ``fake.internal_errors``; the pytest fixture fails the test
when that list is not empty.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import email.parser
import email.policy
import http.client
import itertools
import json
import math
import re
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = [
    "DEFAULT_TOKEN",
    "SAMPLES",
    "Call",
    "CallbackAnswer",
    "FakeMessage",
    "FakeTelegram",
    "FakeTelegramError",
    "Stats",
    "WaitTimeout",
    "WebhookAttempt",
]

JSON = dict[str, Any]

DEFAULT_TOKEN: Final = "123456789:AAFakeTokenForTestsOnly-0123456789abcdef"
MAX_TEXT_LENGTH: Final = 4096
MAX_CAPTION_LENGTH: Final = 1024
MAX_CALLBACK_DATA_BYTES: Final = 64
DELETE_WINDOW_SECONDS: Final = 48 * 3600

NOT_FOUND_TO_DELETE: Final = "Bad Request: message to delete not found"
TOO_OLD_TO_DELETE: Final = "Bad Request: message can't be deleted for everyone"
NOT_FOUND_TO_EDIT: Final = "Bad Request: message to edit not found"
NOT_MODIFIED: Final = (
    "Bad Request: message is not modified: specified new message content and reply markup "
    "are exactly the same as a current content and reply markup of the message"
)
BLOCKED: Final = "Forbidden: bot was blocked by the user"
POLL_TERMINATED: Final = (
    "Conflict: terminated by other getUpdates request; make sure that only one bot instance "
    "is running"
)
WEBHOOK_ACTIVE: Final = (
    "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to "
    "delete the webhook first"
)
QUERY_INVALID: Final = (
    "Bad Request: query is too old and response timeout expired or query ID is invalid"
)

_DEFAULT_DESCRIPTIONS: Final = {
    400: "Bad Request",
    401: "Unauthorized",
    403: BLOCKED,
    404: "Not Found",
    409: "Conflict",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

# Update kinds Telegram only sends when asked for them by name in allowed_updates.
_OPT_IN_UPDATES: Final = frozenset({"chat_member", "message_reaction", "message_reaction_count"})

_MESSAGE_KINDS: Final = (
    "text",
    "photo",
    "sticker",
    "voice",
    "video",
    "video_note",
    "audio",
    "document",
    "animation",
    "location",
    "venue",
    "contact",
    "poll",
    "dice",
)

_INT_FIELDS: Final = frozenset(
    {"chat_id", "message_id", "offset", "limit", "max_connections", "cache_time", "user_id"}
)
_FLOAT_FIELDS: Final = frozenset({"timeout"})
_BOOL_FIELDS: Final = frozenset(
    {
        "protect_content",
        "disable_notification",
        "drop_pending_updates",
        "show_alert",
        "allow_sending_without_reply",
        "has_spoiler",
        "disable_web_page_preview",
    }
)
_JSON_FIELDS: Final = frozenset(
    {
        "reply_markup",
        "message_ids",
        "allowed_updates",
        "commands",
        "scope",
        "entities",
        "caption_entities",
        "link_preview_options",
        "reply_parameters",
    }
)
_COMMAND_RE: Final = re.compile(r"^[a-z0-9_]{1,32}$")
_SECRET_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,256}$")

_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"

SAMPLES: Final[dict[str, JSON]] = {
    "sticker": {
        "sticker": {
            "file_id": "sticker-file-1",
            "file_unique_id": "sticker-unique-1",
            "type": "regular",
            "width": 512,
            "height": 512,
            "is_animated": False,
            "is_video": False,
            "emoji": "\U0001f642",
        }
    },
    "photo": {
        "photo": [
            {"file_id": "photo-file-s", "file_unique_id": "photo-s", "width": 90, "height": 90},
            {"file_id": "photo-file-m", "file_unique_id": "photo-m", "width": 800, "height": 800},
        ],
        "caption": "look",
    },
    "voice": {
        "voice": {
            "file_id": "voice-file-1",
            "file_unique_id": "voice-unique-1",
            "duration": 4,
            "mime_type": "audio/ogg",
        }
    },
    "video": {
        "video": {
            "file_id": "video-file-1",
            "file_unique_id": "video-unique-1",
            "width": 640,
            "height": 360,
            "duration": 7,
        }
    },
    "video_note": {
        "video_note": {
            "file_id": "video-note-1",
            "file_unique_id": "video-note-unique-1",
            "length": 240,
            "duration": 5,
        }
    },
    "document": {
        "document": {
            "file_id": "document-file-1",
            "file_unique_id": "document-unique-1",
            "file_name": "notes.pdf",
            "mime_type": "application/pdf",
        }
    },
    "location": {"location": {"latitude": 52.3702, "longitude": 4.8952}},
    "contact": {"contact": {"phone_number": "+31600000000", "first_name": "Sam"}},
    "forwarded": {
        "text": "forwarded words",
        "forward_origin": {
            "type": "user",
            "date": 1_700_000_000,
            "sender_user": {"id": 4242, "is_bot": False, "first_name": "Someone"},
        },
    },
    "long_text": {"text": "x" * MAX_TEXT_LENGTH},
}
"""Message fields for update kinds the bot must cope with.

Use as ``fake.push_message(chat_id, **SAMPLES["sticker"])``.
"""


class FakeTelegramError(Exception):
    """Base of the errors the fake raises at the test (not the errors it answers over HTTP)."""


class WaitTimeout(FakeTelegramError, AssertionError):
    """``wait_for`` gave up: the bot did not do what the test waited for in time."""


@dataclasses.dataclass(frozen=True, slots=True)
class FakeMessage:
    """One message in a fake chat, hers or the bot's, as it stands now."""

    chat_id: int
    message_id: int
    from_bot: bool
    kind: str
    date: int
    """Unix time on the fake's clock (see ``advance_clock``)."""
    received_at: float
    """``time.perf_counter()`` when the fake accepted or created the message."""
    text: str | None = None
    caption: str | None = None
    reply_markup: JSON | None = None
    protect_content: bool = False
    deleted: bool = False
    edit_count: int = 0
    photo: bytes | None = None
    file_id: str | None = None

    @property
    def buttons(self) -> list[tuple[str, str | None]]:
        """The inline keyboard as ``(label, callback_data)`` pairs, row by row."""
        if not self.reply_markup:
            return []
        rows = self.reply_markup.get("inline_keyboard") or []
        return [(str(b.get("text")), b.get("callback_data")) for row in rows for b in row]


@dataclasses.dataclass(frozen=True, slots=True)
class Call:
    """One request the fake received."""

    method: str
    params: JSON
    status: int | None
    """HTTP status answered; ``None`` when the connection was dropped without an answer."""
    at: float
    """``time.perf_counter()`` when the request arrived."""


@dataclasses.dataclass(frozen=True, slots=True)
class CallbackAnswer:
    """An ``answerCallbackQuery`` for a button press the test pushed."""

    callback_query_id: str
    chat_id: int
    data: str | None
    text: str | None
    show_alert: bool


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookAttempt:
    """One POST of an update to the webhook."""

    update_id: int
    status: int | None
    """HTTP status the webhook answered; ``None`` when it could not be reached."""
    error: str | None
    secret_sent: str | None
    at: float


@dataclasses.dataclass(frozen=True, slots=True)
class Stats:
    """Counters since the fake started."""

    requests: int
    messages_accepted: int
    rate_limited: int
    """429 answers sent, from rate enforcement and from injected faults."""
    errors: int
    """Answers that were not 2xx (429s included) and dropped connections."""
    duplicates: int
    """Accepted messages whose (chat, text) had been accepted before."""


@dataclasses.dataclass(slots=True)
class _Fault:
    method: str
    chat_id: int | None
    times: int | None
    kind: Literal["error", "drop", "delay", "strange"]
    after: bool = False
    status: int = 0
    description: str | None = None
    retry_after: int | None = None
    seconds: float = 0.0
    result: JSON | bool | None = None


@dataclasses.dataclass(slots=True)
class _Pending:
    update_id: int
    payload: JSON
    kind: str
    exempt: bool = False


@dataclasses.dataclass(slots=True)
class _Chat:
    chat_id: int
    user: JSON
    next_message_id: int = 1
    messages: dict[int, FakeMessage] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(slots=True)
class _Callback:
    chat_id: int
    data: str | None
    answered: bool = False


@dataclasses.dataclass(slots=True)
class _Webhook:
    url: str
    secret: str | None
    max_connections: int


@dataclasses.dataclass(slots=True)
class _Request:
    token: str
    method: str
    params: JSON
    files: dict[str, tuple[str, bytes]]


@dataclasses.dataclass(slots=True)
class _Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    drop: bool = False


class _ApiError(Exception):
    """An error the fake answers over HTTP, as Telegram would."""

    def __init__(self, status: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.retry_after = retry_after


Condition = Callable[[], bool] | int


class FakeTelegram:
    """A fake Bot API server on 127.0.0.1 that tests push updates into and read replies from.

    See the module docstring for the whole test-facing API.
    """

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        bot_username: str = "aftercare_test_bot",
        strict_chats: bool = False,
        webhook_retry_delay: float = 0.05,
        webhook_max_attempts: int = 5,
    ) -> None:
        """Prepare a fake; ``start()`` (or ``with``) opens the port.

        ``strict_chats`` makes sends to a chat that never pushed anything answer 400 "Bad
        Request: chat not found", as Telegram does for users who never started the bot.
        """
        self.token: Final = token
        self.bot_id: Final = int(token.split(":", 1)[0]) if token[:1].isdigit() else 1
        self.bot_username: Final = bot_username
        self.strict_chats = strict_chats
        self.webhook_retry_delay = webhook_retry_delay
        self.webhook_max_attempts = webhook_max_attempts

        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._updates_cv = threading.Condition(self._lock)
        self._webhook_cv = threading.Condition(self._lock)
        self._stop_event = threading.Event()
        self._stopping = False
        self._server: _Server | None = None
        self._server_thread: threading.Thread | None = None
        self._webhook_thread: threading.Thread | None = None

        self._next_update_id = 1
        self._updates: dict[int, JSON] = {}
        self._pending: list[_Pending] = []
        self._pushed_at: dict[int, float] = {}
        self._delivered_at: dict[int, float] = {}
        self._allowed_updates: frozenset[str] | None = None
        self._poll_generation = 0
        self._webhook: _Webhook | None = None
        self._webhook_queue: collections.deque[_Pending] = collections.deque()
        self._webhook_attempts: list[WebhookAttempt] = []
        self._webhook_last_error: tuple[int, str] | None = None

        self._chats: dict[int, _Chat] = {}
        self._sent_total = 0
        self._sent_per_chat: collections.Counter[int] = collections.Counter()
        self._text_counts: collections.Counter[tuple[int, str]] = collections.Counter()
        self._calls: list[Call] = []
        self._callbacks: dict[str, _Callback] = {}
        self._callback_answers: list[CallbackAnswer] = []
        self._callback_ids = itertools.count(1)
        self._commands: dict[tuple[str, str], list[JSON]] = {}
        self._files: dict[str, tuple[str, bytes]] = {}
        self._file_ids = itertools.count(1)
        self._clock_offset = 0.0
        self._faults: list[_Fault] = []
        self._blocked: set[int] = set()
        # Waiters for a message count in one chat sit under that chat id and are woken only by
        # sends there; everything else sits under None and wakes on any change.
        self._async_waiters: dict[
            int | None, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]
        ] = collections.defaultdict(list)
        self.internal_errors: list[str] = []
        """Tracebacks of requests that crashed the fake (answered 500). Should stay empty."""

        self._rate_per_chat: int | None = None
        self._rate_overall: int | None = None
        self._rate_window = 1.0
        self._chat_sends: dict[int, collections.deque[float]] = {}
        self._all_sends: collections.deque[float] = collections.deque()

        self._requests = 0
        self._accepted = 0
        self._rate_limited = 0
        self._errors = 0
        self._duplicates = 0

        self._methods: dict[str, tuple[str, Callable[[_Request], Any]]] = {
            name.lower(): (name, handler)
            for name, handler in {
                "getMe": self._get_me,
                "getUpdates": self._get_updates,
                "setWebhook": self._set_webhook,
                "deleteWebhook": self._delete_webhook,
                "getWebhookInfo": self._get_webhook_info,
                "sendMessage": self._send_message,
                "sendPhoto": self._send_photo,
                "sendChatAction": self._send_chat_action,
                "editMessageText": self._edit_message_text,
                "editMessageReplyMarkup": self._edit_message_reply_markup,
                "answerCallbackQuery": self._answer_callback_query,
                "deleteMessage": self._delete_message,
                "deleteMessages": self._delete_messages,
                "setMyCommands": self._set_my_commands,
                "getMyCommands": self._get_my_commands,
                "deleteMyCommands": self._delete_my_commands,
                "getFile": self._get_file,
                "close": self._no_op,
                "logOut": self._no_op,
            }.items()
        }

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeTelegram:
        """Bind a free port on 127.0.0.1 and serve from background threads."""
        if self._server is not None:
            raise FakeTelegramError("the fake Telegram server is already running")
        self._server = _Server(self)
        self._server_thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="fake-telegram-http",
            daemon=True,
        )
        self._server_thread.start()
        self._webhook_thread = threading.Thread(
            target=self._deliver_webhooks, name="fake-telegram-webhook", daemon=True
        )
        self._webhook_thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: wake long polls, close every connection, join the threads."""
        server = self._server
        if server is None:
            return
        with self._lock:
            self._stopping = True
            self._stop_event.set()
            self._notify()
            self._updates_cv.notify_all()
            self._webhook_cv.notify_all()
        server.shutdown()
        server.close_connections()
        server.server_close()
        for thread in (self._server_thread, self._webhook_thread):
            if thread is not None:
                thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> FakeTelegram:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> FakeTelegram:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        if self._server is None:
            raise FakeTelegramError("the fake Telegram server is not running; call start()")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def base_url(self) -> str:
        """What python-telegram-bot takes as ``base_url`` (it appends the token)."""
        return f"{self.url}/bot"

    @property
    def base_file_url(self) -> str:
        """What python-telegram-bot takes as ``base_file_url`` (it appends the token)."""
        return f"{self.url}/file/bot"

    # ------------------------------------------------------------------ clock

    def now(self) -> float:
        """Unix time on the fake's clock."""
        return time.time() + self._clock_offset

    @property
    def clock_offset(self) -> float:
        """Seconds the fake's clock runs ahead of the real one."""
        return self._clock_offset

    @clock_offset.setter
    def clock_offset(self, seconds: float) -> None:
        with self._lock:
            self._clock_offset = seconds

    def advance_clock(self, seconds: float) -> None:
        """Move the fake's clock forward, so that messages age (the 48 h delete limit)."""
        with self._lock:
            self._clock_offset += seconds

    # ------------------------------------------------------------------ pushing updates

    def push_message(
        self, chat_id: int, *, user: JSON | None = None, times: int = 1, **fields: Any
    ) -> int:
        """Push a message from the user with the given fields (text, sticker, photo, ...)."""
        with self._lock:
            chat = self._chat(chat_id, user)
            message_id = chat.next_message_id
            chat.next_message_id += 1
            date = int(self.now())
            message = {
                "message_id": message_id,
                "date": date,
                "chat": self._chat_json(chat),
                "from": chat.user if user is None else {**chat.user, **user},
                **fields,
            }
            chat.messages[message_id] = FakeMessage(
                chat_id=chat_id,
                message_id=message_id,
                from_bot=False,
                kind=_kind_of(fields),
                date=date,
                received_at=time.perf_counter(),
                text=fields.get("text"),
                caption=fields.get("caption"),
            )
            return self._enqueue({"message": message}, times=times)

    def push_text(
        self, chat_id: int, text: str, *, user: JSON | None = None, times: int = 1
    ) -> int:
        """Push a text message from the user."""
        return self.push_message(chat_id, user=user, times=times, text=text)

    def push_command(
        self,
        chat_id: int,
        command: str,
        arg: str | None = None,
        *,
        user: JSON | None = None,
        times: int = 1,
    ) -> int:
        """Push ``/command [arg]`` with the ``bot_command`` entity Telegram adds."""
        command = command if command.startswith("/") else f"/{command}"
        text = command if arg is None else f"{command} {arg}"
        entities = [{"type": "bot_command", "offset": 0, "length": len(command)}]
        return self.push_message(chat_id, user=user, times=times, text=text, entities=entities)

    def push_edit(
        self, chat_id: int, message_id: int, text: str, *, user: JSON | None = None
    ) -> int:
        """Push an ``edited_message``: the user changed the text of one of her messages."""
        with self._lock:
            chat = self._chat(chat_id, user)
            old = chat.messages.get(message_id)
            now = int(self.now())
            if old is not None:
                chat.messages[message_id] = dataclasses.replace(
                    old, text=text, edit_count=old.edit_count + 1
                )
            message = {
                "message_id": message_id,
                "date": old.date if old is not None else now,
                "edit_date": now,
                "chat": self._chat_json(chat),
                "from": chat.user,
                "text": text,
            }
            return self._enqueue({"edited_message": message})

    def push_callback(
        self,
        chat_id: int,
        data: str | None,
        message_id: int | None = None,
        *,
        user: JSON | None = None,
        times: int = 1,
    ) -> int:
        """Push a button press on a bot message (the latest one with buttons by default).

        A deleted or unknown message arrives as an inaccessible message (``date`` 0), as at
        Telegram.
        """
        with self._lock:
            chat = self._chat(chat_id, user)
            if message_id is None:
                with_buttons = [m for m in chat.messages.values() if m.from_bot and m.buttons]
                if not with_buttons:
                    raise FakeTelegramError("no bot message with buttons in this chat")
                message_id = with_buttons[-1].message_id
            stored = chat.messages.get(message_id)
            if stored is not None and not stored.deleted:
                message = self._message_json(stored)
            else:
                message = {"chat": self._chat_json(chat), "message_id": message_id, "date": 0}
            query_id = f"cbq-{next(self._callback_ids)}"
            self._callbacks[query_id] = _Callback(chat_id=chat_id, data=data)
            query: JSON = {
                "id": query_id,
                "from": chat.user,
                "chat_instance": f"instance-{chat_id}",
                "message": message,
            }
            if data is not None:
                query["data"] = data
            return self._enqueue({"callback_query": query}, times=times)

    def press(self, chat_id: int, label: str, message_id: int | None = None) -> int:
        """Press the button labelled ``label`` on the latest bot message that has it."""
        with self._lock:
            chat = self._chat(chat_id, None)
            for stored in reversed(chat.messages.values()):
                if not stored.from_bot or (
                    message_id is not None and message_id != stored.message_id
                ):
                    continue
                for text, data in stored.buttons:
                    if text == label:
                        return self.push_callback(chat_id, data, stored.message_id)
        raise FakeTelegramError("no bot message in this chat has a button with that label")

    def push_update(self, raw: JSON, *, times: int = 1) -> int:
        """Push a raw update dict; ``update_id`` is assigned unless it is given.

        ``times=2`` queues the same update twice. A ``message`` with a ``chat`` but no
        ``message_id`` or ``date`` gets them filled in and shows in ``visible()``.
        """
        update = json.loads(json.dumps(raw))
        with self._lock:
            message = update.get("message")
            if isinstance(message, dict) and isinstance(message.get("chat"), dict):
                chat = self._chat(int(message["chat"]["id"]), message.get("from"))
                if "message_id" not in message:
                    message["message_id"] = chat.next_message_id
                chat.next_message_id = max(chat.next_message_id, int(message["message_id"]) + 1)
                message.setdefault("date", int(self.now()))
                chat.messages[int(message["message_id"])] = FakeMessage(
                    chat_id=chat.chat_id,
                    message_id=int(message["message_id"]),
                    from_bot=False,
                    kind=_kind_of(message),
                    date=int(message["date"]),
                    received_at=time.perf_counter(),
                    text=message.get("text"),
                    caption=message.get("caption"),
                )
            return self._enqueue(update, times=times)

    def redeliver(self, update_id: int) -> None:
        """Deliver a pushed update once more, even if the bot already confirmed it.

        This is what happens when Telegram did not see the confirmation (a crash between
        handling and the next ``getUpdates``): the bot must not act on it twice.
        """
        with self._lock:
            update = self._updates.get(update_id)
            if update is None:
                raise FakeTelegramError("no update with that update_id was pushed")
            entry = _Pending(update_id, update, _kind_of_update(update), exempt=True)
            if self._webhook is not None:
                self._webhook_queue.append(entry)
                self._webhook_cv.notify_all()
            else:
                self._pending.append(entry)
                self._updates_cv.notify_all()

    def _enqueue(self, update: JSON, *, times: int = 1) -> int:
        if "update_id" not in update:
            update = {"update_id": self._next_update_id, **update}
        update_id = int(update["update_id"])
        self._next_update_id = max(self._next_update_id, update_id + 1)
        self._updates[update_id] = update
        self._pushed_at.setdefault(update_id, time.perf_counter())
        kind = _kind_of_update(update)
        queue = self._webhook_queue if self._webhook is not None else self._pending
        queue.extend(_Pending(update_id, update, kind) for _ in range(times))
        self._webhook_cv.notify_all()
        self._updates_cv.notify_all()
        self._notify()
        return update_id

    # ------------------------------------------------------------------ reading state

    def sent(self, chat_id: int | None = None) -> list[FakeMessage]:
        """Messages the bot sent (to one chat, or to all in arrival order), deleted ones too."""
        with self._lock:
            if chat_id is not None:
                chat = self._chats.get(chat_id)
                if chat is None:
                    return []
                return [m for m in chat.messages.values() if m.from_bot]
            every = [m for c in self._chats.values() for m in c.messages.values() if m.from_bot]
            return sorted(every, key=lambda m: m.received_at)

    def texts(self, chat_id: int | None = None) -> list[str]:
        """The texts (or captions) of the messages the bot sent."""
        return [m.text or m.caption or "" for m in self.sent(chat_id)]

    def visible(self, chat_id: int) -> list[FakeMessage]:
        """What the chat shows now: her messages and the bot's, without deleted ones."""
        with self._lock:
            chat = self._chats.get(chat_id)
            if chat is None:
                return []
            return sorted(
                (m for m in chat.messages.values() if not m.deleted), key=lambda m: m.message_id
            )

    def message(self, chat_id: int, message_id: int) -> FakeMessage | None:
        """One message as it stands now, or ``None`` if the chat never had it."""
        with self._lock:
            chat = self._chats.get(chat_id)
            return None if chat is None else chat.messages.get(message_id)

    def calls(self, method: str | None = None) -> list[Call]:
        """Requests received, all or for one method (name compared case-insensitively)."""
        with self._lock:
            if method is None:
                return list(self._calls)
            wanted = method.lower()
            return [c for c in self._calls if c.method.lower() == wanted]

    def callback_answers(self) -> list[CallbackAnswer]:
        """Answers the bot gave to pushed button presses, in order."""
        with self._lock:
            return list(self._callback_answers)

    def unanswered_callbacks(self) -> list[str]:
        """Ids of pushed button presses the bot has not answered."""
        with self._lock:
            return [qid for qid, cb in self._callbacks.items() if not cb.answered]

    def commands(self, scope: JSON | None = None, language_code: str = "") -> list[JSON]:
        """The command list set with ``setMyCommands`` for a scope and language."""
        with self._lock:
            return list(self._commands.get(_commands_key(scope, language_code), []))

    @property
    def webhook_url(self) -> str | None:
        """The webhook URL set now, or ``None`` when the bot polls."""
        with self._lock:
            return None if self._webhook is None else self._webhook.url

    def webhook_attempts(self) -> list[WebhookAttempt]:
        """Every POST of an update to the webhook, retries included."""
        with self._lock:
            return list(self._webhook_attempts)

    @property
    def stats(self) -> Stats:
        """A snapshot of the counters."""
        with self._lock:
            return Stats(
                requests=self._requests,
                messages_accepted=self._accepted,
                rate_limited=self._rate_limited,
                errors=self._errors,
                duplicates=self._duplicates,
            )

    def duplicates(self) -> dict[tuple[int, str], int]:
        """``{(chat_id, text): count}`` for every text the bot got accepted more than once."""
        with self._lock:
            return {key: n for key, n in self._text_counts.items() if n > 1}

    def count_sent(self, chat_id: int, text: str) -> int:
        """How often the fake accepted exactly this text for this chat."""
        with self._lock:
            return self._text_counts[(chat_id, text)]

    def pending_updates(self) -> int:
        """Updates queued and not yet confirmed (polling) or delivered (webhook)."""
        with self._lock:
            return len(self._pending) + len(self._webhook_queue)

    def pushed_at(self, update_id: int) -> float | None:
        """``time.perf_counter()`` when the update was pushed."""
        with self._lock:
            return self._pushed_at.get(update_id)

    def delivered_at(self, update_id: int) -> float | None:
        """``time.perf_counter()`` when the bot first received the update (poll or webhook)."""
        with self._lock:
            return self._delivered_at.get(update_id)

    def confirmed(self, update_id: int) -> bool:
        """True once the bot took the update for good: polling confirmed it with a later
        offset (an update only delivered is fetched again if the bot stops first)."""
        with self._lock:
            return self._delivered_at.get(update_id) is not None and all(
                e.update_id != update_id for e in self._pending
            )

    def add_file(self, data: bytes, file_path: str = "documents/file.bin") -> str:
        """Store a file the bot can fetch with ``getFile`` and download; returns its file_id."""
        with self._lock:
            file_id = f"file-{next(self._file_ids)}"
            self._files[file_id] = (file_path, data)
            return file_id

    # ------------------------------------------------------------------ waiting

    def wait_for(
        self, condition: Condition, timeout: float = 5.0, *, chat_id: int | None = None
    ) -> list[FakeMessage]:
        """Block until ``condition`` holds; return ``sent(chat_id)`` at that moment.

        ``condition`` is a callable, or a number of messages the bot must have sent (to
        ``chat_id``, or in all). Raises ``WaitTimeout`` (an ``AssertionError``) after
        ``timeout`` seconds. From async code use ``wait_for_async``: blocking the event loop
        would stop the bot this waits for.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise FakeTelegramError("wait_for blocks the event loop; use await wait_for_async")
        check = self._check(condition, chat_id)
        deadline = time.monotonic() + timeout
        with self._changed:
            while not check():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(self._timeout_message(condition, timeout, chat_id))
                self._changed.wait(remaining)
        return self.sent(chat_id)

    # The timeout parameter mirrors wait_for; it is a deadline, not a cancel scope.
    async def wait_for_async(
        self,
        condition: Condition,
        timeout: float = 5.0,  # noqa: ASYNC109
        *,
        chat_id: int | None = None,
    ) -> list[FakeMessage]:
        """``wait_for`` for async tests: awaits without blocking the event loop."""
        check = self._check(condition, chat_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        event = asyncio.Event()
        waiter = (loop, event)
        key = None if callable(condition) else chat_id
        with self._lock:
            self._async_waiters[key].append(waiter)
        try:
            while True:
                event.clear()
                with self._lock:
                    if check():
                        return self.sent(chat_id)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise WaitTimeout(self._timeout_message(condition, timeout, chat_id))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), remaining)
        finally:
            with self._lock:
                self._async_waiters[key].remove(waiter)
                if not self._async_waiters[key]:
                    del self._async_waiters[key]

    def _check(self, condition: Condition, chat_id: int | None) -> Callable[[], bool]:
        if callable(condition):
            return condition
        wanted = condition
        if chat_id is None:
            return lambda: self._sent_total >= wanted
        return lambda: self._sent_per_chat[chat_id] >= wanted

    def _timeout_message(self, condition: Condition, timeout: float, chat_id: int | None) -> str:
        if callable(condition):
            return f"the condition did not hold within {timeout} s"
        seen = self._sent_total if chat_id is None else self._sent_per_chat[chat_id]
        where = "in all" if chat_id is None else "to the chat"
        return f"waited {timeout} s for {condition} sent messages {where}, saw {seen}"

    def _notify(self, chat_id: int | None = None) -> None:
        """Wake what waits on a change (in ``chat_id``); call with the lock held."""
        self._changed.notify_all()
        if not self._async_waiters:
            return
        keys: tuple[int | None, ...] = (None,) if chat_id is None else (None, chat_id)
        for key in keys:
            for loop, event in self._async_waiters.get(key, ()):
                if event.is_set():
                    continue
                with contextlib.suppress(RuntimeError):  # the loop closed under a waiter
                    loop.call_soon_threadsafe(event.set)

    # ------------------------------------------------------------------ faults and limits

    def fail_next(
        self,
        method: str,
        status: int = 429,
        *,
        retry_after: int | None = None,
        description: str | None = None,
        times: int | None = 1,
        chat_id: int | None = None,
    ) -> None:
        """Answer the next ``times`` calls of ``method`` (``"*"``: any) with an error.

        A 429 carries ``parameters.retry_after`` (default 1 s). ``times=None``: until
        ``clear_faults()``. ``chat_id`` limits the fault to requests for that chat.
        """
        if status == 429 and retry_after is None:
            retry_after = 1
        if description is None:
            description = (
                f"Too Many Requests: retry after {retry_after}"
                if status == 429
                else _DEFAULT_DESCRIPTIONS.get(status, _phrase(status))
            )
        self._add_fault(
            _Fault(
                method.lower(),
                chat_id,
                times,
                "error",
                status=status,
                description=description,
                retry_after=retry_after,
            )
        )

    def drop_next(
        self,
        method: str,
        *,
        after: bool = False,
        times: int | None = 1,
        chat_id: int | None = None,
    ) -> None:
        """Close the connection without an answer on the next calls of ``method``.

        ``after=True`` drops the answer after the request took effect (the message was sent
        but the bot never hears so), which a retrying sender turns into a duplicate.
        """
        self._add_fault(_Fault(method.lower(), chat_id, times, "drop", after=after))

    def delay_next(
        self,
        method: str,
        seconds: float,
        *,
        after: bool = False,
        times: int | None = 1,
        chat_id: int | None = None,
    ) -> None:
        """Answer the next calls of ``method`` ``seconds`` late.

        By default the request waits before it takes effect; ``after=True`` lets it take
        effect at once and only delays the answer.
        """
        self._add_fault(
            _Fault(method.lower(), chat_id, times, "delay", after=after, seconds=seconds)
        )

    def answer_strangely_next(
        self, method: str, result: JSON | bool | None, *, times: int | None = 1
    ) -> None:
        """Let the next calls of ``method`` take effect, then answer ``{"ok": true}`` with
        ``result`` instead of what Telegram would give (a Bot API that changed, a proxy)."""
        self._add_fault(_Fault(method.lower(), None, times, "strange", after=True, result=result))

    def clear_faults(self) -> None:
        """Forget every injected fault and block."""
        with self._lock:
            self._faults.clear()
            self._blocked.clear()

    def block(self, chat_id: int) -> None:
        """The user blocked the bot: sends to the chat answer 403 until ``unblock``."""
        with self._lock:
            self._blocked.add(chat_id)

    def unblock(self, chat_id: int) -> None:
        """The user started the bot again."""
        with self._lock:
            self._blocked.discard(chat_id)

    def enforce_rate_limits(
        self, per_chat: int = 1, overall: int = 30, *, window: float = 1.0
    ) -> None:
        """Answer 429 when a send would exceed ``per_chat`` or ``overall`` per ``window`` s."""
        with self._lock:
            self._rate_per_chat = per_chat
            self._rate_overall = overall
            self._rate_window = window

    def disable_rate_limits(self) -> None:
        """Stop enforcing the rate limits."""
        with self._lock:
            self._rate_per_chat = None
            self._rate_overall = None

    def _add_fault(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, method: str, chat_id: int | None) -> _Fault | None:
        lowered = method.lower()
        for fault in self._faults:
            if fault.method not in ("*", lowered):
                continue
            if fault.chat_id is not None and fault.chat_id != chat_id:
                continue
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
            return fault
        return None

    def _admit_send(self, chat_id: int) -> None:
        """Refuse a send to a blocked, unknown or over-limit chat; count it otherwise."""
        if chat_id in self._blocked:
            raise _ApiError(403, BLOCKED)
        if self.strict_chats and chat_id not in self._chats:
            raise _ApiError(400, "Bad Request: chat not found")
        if self._rate_per_chat is None and self._rate_overall is None:
            return
        now = time.monotonic()
        horizon = now - self._rate_window
        per_chat = self._chat_sends.setdefault(chat_id, collections.deque())
        for stamps in (per_chat, self._all_sends):
            while stamps and stamps[0] <= horizon:
                stamps.popleft()
        for stamps, limit in (
            (per_chat, self._rate_per_chat),
            (self._all_sends, self._rate_overall),
        ):
            if limit is not None and len(stamps) >= limit:
                wait = stamps[len(stamps) - limit] + self._rate_window - now
                raise _ApiError(
                    429,
                    f"Too Many Requests: retry after {max(1, math.ceil(wait))}",
                    retry_after=max(1, math.ceil(wait)),
                )
        per_chat.append(now)
        self._all_sends.append(now)

    # ------------------------------------------------------------------ request handling

    def _handle(self, request: _Request) -> _Reply:
        """Answer one Bot API request; runs on a server thread."""
        arrived = time.perf_counter()
        entry = self._methods.get(request.method.lower())
        name = entry[0] if entry is not None else request.method
        fault: _Fault | None = None
        try:
            if request.token != self.token:
                raise _ApiError(401 if ":" in request.token else 404, _auth_error(request.token))
            if entry is None:
                raise _ApiError(404, "Not Found")
            handler = entry[1]
            chat_id = request.params.get("chat_id")
            with self._lock:
                fault = self._take_fault(name, chat_id if isinstance(chat_id, int) else None)
            if fault is not None and not fault.after:
                if fault.kind == "delay":
                    self._stop_event.wait(fault.seconds)
                elif fault.kind == "drop":
                    return self._record(name, request.params, None, arrived, drop=True)
                else:
                    raise _ApiError(fault.status, fault.description or "", fault.retry_after)
            with self._lock:
                result = handler(request)
            if fault is not None and fault.kind == "strange":
                result = fault.result
            body = _dumps({"ok": True, "result": result})
            if fault is not None and fault.after:
                if fault.kind == "drop":
                    return self._record(name, request.params, None, arrived, drop=True)
                if fault.kind == "delay":
                    self._stop_event.wait(fault.seconds)
            return self._record(name, request.params, 200, arrived, body=body)
        except _ApiError as error:
            answer: JSON = {
                "ok": False,
                "error_code": error.status,
                "description": error.description,
            }
            if error.retry_after is not None:
                answer["parameters"] = {"retry_after": error.retry_after}
            return self._record(name, request.params, error.status, arrived, body=_dumps(answer))
        except Exception:
            with self._lock:
                self.internal_errors.append(traceback.format_exc())
            body = _dumps({"ok": False, "error_code": 500, "description": "Internal Server Error"})
            return self._record(name, request.params, 500, arrived, body=body)

    def _record(
        self,
        method: str,
        params: JSON,
        status: int | None,
        arrived: float,
        *,
        body: bytes = b"",
        drop: bool = False,
    ) -> _Reply:
        with self._lock:
            self._requests += 1
            self._calls.append(Call(method, params, status, arrived))
            if status != 200:
                self._errors += 1
                if status == 429:
                    self._rate_limited += 1
            self._notify()
        return _Reply(status or 0, body, drop=drop)

    def _serve_file(self, token: str, file_path: str) -> _Reply:
        if token != self.token:
            return _Reply(
                401, _dumps({"ok": False, "error_code": 401, "description": "Unauthorized"})
            )
        with self._lock:
            for path, data in self._files.values():
                if path == file_path:
                    return _Reply(200, data, content_type="application/octet-stream")
        return _Reply(404, _dumps({"ok": False, "error_code": 404, "description": "Not Found"}))

    # ------------------------------------------------------------------ Bot API methods

    def _no_op(self, request: _Request) -> bool:
        return True

    def _get_me(self, request: _Request) -> JSON:
        return {
            **self._bot_user(),
            "can_join_groups": False,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    def _get_updates(self, request: _Request) -> list[JSON]:
        p = request.params
        if self._webhook is not None:
            raise _ApiError(409, WEBHOOK_ACTIVE)
        limit = min(max(int(p.get("limit", 100)), 1), 100)
        timeout = max(float(p.get("timeout", 0)), 0.0)
        allowed = p.get("allowed_updates")
        if isinstance(allowed, list):
            self._allowed_updates = frozenset(allowed) if allowed else None
        self._poll_generation += 1
        generation = self._poll_generation
        self._updates_cv.notify_all()  # an older long poll ends with 409
        if self._confirm(p.get("offset")):
            self._notify()
        deadline = time.monotonic() + timeout
        while True:
            batch = self._take(limit)
            remaining = deadline - time.monotonic()
            if batch or remaining <= 0 or self._stopping:
                break
            self._updates_cv.wait(remaining)
            if self._poll_generation != generation:
                raise _ApiError(409, POLL_TERMINATED)
            if self._webhook is not None:
                raise _ApiError(409, WEBHOOK_ACTIVE)
        now = time.perf_counter()
        for update in batch:
            self._delivered_at.setdefault(int(update["update_id"]), now)
        if batch:
            self._notify()  # a wait on delivered_at / confirmed wakes now
        return batch

    def _confirm(self, offset: Any) -> bool:
        """Drop the updates the offset confirms; True when it confirmed any."""
        if not isinstance(offset, int) or offset == 0:
            return False
        before = len(self._pending)
        if offset < 0:
            self._pending = self._pending[offset:]
        else:
            self._pending = [e for e in self._pending if e.update_id >= offset or e.exempt]
        return len(self._pending) != before

    def _take(self, limit: int) -> list[JSON]:
        allowed = self._allowed_updates
        if allowed is None:
            self._pending = [e for e in self._pending if e.kind not in _OPT_IN_UPDATES]
        else:
            self._pending = [e for e in self._pending if e.kind in allowed]
        batch = self._pending[:limit]
        for entry in batch:
            entry.exempt = False
        return [entry.payload for entry in batch]

    def _set_webhook(self, request: _Request) -> bool:
        p = request.params
        url = str(p.get("url") or "")
        if not url:
            return self._delete_webhook(request)
        if urlsplit(url).scheme not in ("http", "https"):
            raise _ApiError(400, "Bad Request: bad webhook: invalid URL")
        secret = p.get("secret_token")
        if secret is not None and not _SECRET_RE.match(str(secret)):
            raise _ApiError(400, "Bad Request: secret token contains unallowed characters")
        if p.get("drop_pending_updates"):
            self._pending.clear()
        allowed = p.get("allowed_updates")
        if isinstance(allowed, list):
            self._allowed_updates = frozenset(allowed) if allowed else None
        self._webhook = _Webhook(
            url=url,
            secret=None if secret is None else str(secret),
            max_connections=int(p.get("max_connections", 40)),
        )
        self._webhook_queue.extend(self._pending)
        self._pending.clear()
        self._webhook_cv.notify_all()
        self._updates_cv.notify_all()
        return True

    def _delete_webhook(self, request: _Request) -> bool:
        self._webhook = None
        self._webhook_last_error = None
        if request.params.get("drop_pending_updates"):
            self._pending.clear()
            self._webhook_queue.clear()
        else:
            self._pending.extend(self._webhook_queue)
            self._webhook_queue.clear()
        return True

    def _get_webhook_info(self, request: _Request) -> JSON:
        info: JSON = {
            "url": "" if self._webhook is None else self._webhook.url,
            "has_custom_certificate": False,
            "pending_update_count": len(self._pending) + len(self._webhook_queue),
        }
        if self._webhook is not None:
            info["max_connections"] = self._webhook.max_connections
            if self._allowed_updates is not None:
                info["allowed_updates"] = sorted(self._allowed_updates)
        if self._webhook_last_error is not None:
            info["last_error_date"], info["last_error_message"] = self._webhook_last_error
        return info

    def _send_message(self, request: _Request) -> JSON:
        p = request.params
        chat_id = _chat_id(p)
        text = p.get("text")
        if not isinstance(text, str) or not text.strip():
            raise _ApiError(400, "Bad Request: message text is empty")
        if len(text) > MAX_TEXT_LENGTH:
            raise _ApiError(400, "Bad Request: message is too long")
        markup = _reply_markup(p)
        self._admit_send(chat_id)
        stored = self._store_bot_message(
            chat_id, "text", text=text, reply_markup=markup, protect=bool(p.get("protect_content"))
        )
        self._count_text(chat_id, text)
        return self._message_json(stored)

    def _send_photo(self, request: _Request) -> JSON:
        p = request.params
        chat_id = _chat_id(p)
        photo = p.get("photo")
        upload = request.files.get("photo")
        if isinstance(photo, str) and photo.startswith("attach://"):
            upload = request.files.get(photo.removeprefix("attach://"))
        data: bytes | None = None
        if upload is not None:
            data = upload[1]
            file_id = f"photo-{next(self._file_ids)}"
            self._files[file_id] = (f"photos/{file_id}.png", data)
        elif isinstance(photo, str) and photo in self._files:
            file_id, data = photo, self._files[photo][1]
        elif isinstance(photo, str) and photo.startswith(("http://", "https://")):
            file_id = f"photo-{next(self._file_ids)}"
        elif photo is None:
            raise _ApiError(400, "Bad Request: there is no photo in the request")
        else:
            raise _ApiError(400, "Bad Request: wrong file identifier/HTTP URL specified")
        caption = p.get("caption")
        if isinstance(caption, str) and len(caption) > MAX_CAPTION_LENGTH:
            raise _ApiError(400, "Bad Request: message caption is too long")
        markup = _reply_markup(p)
        self._admit_send(chat_id)
        stored = self._store_bot_message(
            chat_id,
            "photo",
            caption=caption if isinstance(caption, str) else None,
            reply_markup=markup,
            protect=bool(p.get("protect_content")),
            photo=data,
            file_id=file_id,
        )
        if isinstance(caption, str):
            self._count_text(chat_id, caption)
        return self._message_json(stored)

    def _send_chat_action(self, request: _Request) -> bool:
        chat_id = _chat_id(request.params)
        if chat_id in self._blocked:
            raise _ApiError(403, BLOCKED)
        return True

    def _edit_message_text(self, request: _Request) -> JSON:
        p = request.params
        stored = self._editable(p)
        text = p.get("text")
        if not isinstance(text, str) or not text.strip():
            raise _ApiError(400, "Bad Request: message text is empty")
        if len(text) > MAX_TEXT_LENGTH:
            raise _ApiError(400, "Bad Request: message is too long")
        markup = _reply_markup(p)
        if text == stored.text and markup == stored.reply_markup:
            raise _ApiError(400, NOT_MODIFIED)
        return self._message_json(self._replace(stored, text=text, reply_markup=markup))

    def _edit_message_reply_markup(self, request: _Request) -> JSON:
        stored = self._editable(request.params)
        markup = _reply_markup(request.params)
        if markup == stored.reply_markup:
            raise _ApiError(400, NOT_MODIFIED)
        return self._message_json(self._replace(stored, reply_markup=markup))

    def _editable(self, p: JSON) -> FakeMessage:
        if "inline_message_id" in p:
            raise _ApiError(400, "Bad Request: the fake does not support inline messages")
        chat = self._chats.get(_chat_id(p))
        message_id = p.get("message_id")
        stored = None if chat is None else chat.messages.get(message_id)  # type: ignore[arg-type]
        if stored is None or stored.deleted:
            raise _ApiError(400, NOT_FOUND_TO_EDIT)
        if not stored.from_bot:
            raise _ApiError(400, "Bad Request: message can't be edited")
        return stored

    def _replace(self, stored: FakeMessage, **changes: Any) -> FakeMessage:
        new = dataclasses.replace(stored, edit_count=stored.edit_count + 1, **changes)
        self._chats[stored.chat_id].messages[stored.message_id] = new
        return new

    def _answer_callback_query(self, request: _Request) -> bool:
        p = request.params
        query_id = str(p.get("callback_query_id") or "")
        callback = self._callbacks.get(query_id)
        if callback is None or callback.answered:
            raise _ApiError(400, QUERY_INVALID)
        callback.answered = True
        text = p.get("text")
        self._callback_answers.append(
            CallbackAnswer(
                callback_query_id=query_id,
                chat_id=callback.chat_id,
                data=callback.data,
                text=text if isinstance(text, str) else None,
                show_alert=bool(p.get("show_alert")),
            )
        )
        return True

    def _delete_message(self, request: _Request) -> bool:
        p = request.params
        chat_id = _chat_id(p)
        message_id = p.get("message_id")
        if not isinstance(message_id, int):
            raise _ApiError(400, "Bad Request: message identifier is not specified")
        problem = self._delete(chat_id, message_id)
        if problem is not None:
            raise _ApiError(400, problem)
        return True

    def _delete_messages(self, request: _Request) -> bool:
        p = request.params
        chat_id = _chat_id(p)
        ids = p.get("message_ids")
        if not isinstance(ids, list) or not 1 <= len(ids) <= 100:
            raise _ApiError(400, "Bad Request: message_ids must hold 1 to 100 identifiers")
        if not all(isinstance(i, int) for i in ids):
            raise _ApiError(400, "Bad Request: message_ids must be integers")
        for message_id in ids:
            self._delete(chat_id, message_id)
        return True

    def _delete(self, chat_id: int, message_id: int) -> str | None:
        """Delete one message; returns Telegram's complaint if it cannot be deleted."""
        chat = self._chats.get(chat_id)
        stored = None if chat is None else chat.messages.get(message_id)
        if chat is None or stored is None or stored.deleted:
            return NOT_FOUND_TO_DELETE
        if self.now() - stored.date > DELETE_WINDOW_SECONDS:
            return TOO_OLD_TO_DELETE
        chat.messages[message_id] = dataclasses.replace(stored, deleted=True)
        return None

    def _set_my_commands(self, request: _Request) -> bool:
        p = request.params
        commands = p.get("commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise _ApiError(400, "Bad Request: commands must be a list of at most 100 commands")
        for command in commands:
            if not isinstance(command, dict) or not _COMMAND_RE.match(str(command.get("command"))):
                raise _ApiError(400, "Bad Request: BOT_COMMAND_INVALID")
            if not 1 <= len(str(command.get("description") or "")) <= 256:
                raise _ApiError(400, "Bad Request: command description is empty or too long")
        key = _commands_key(p.get("scope"), str(p.get("language_code") or ""))
        self._commands[key] = commands
        return True

    def _get_my_commands(self, request: _Request) -> list[JSON]:
        p = request.params
        key = _commands_key(p.get("scope"), str(p.get("language_code") or ""))
        return list(self._commands.get(key, []))

    def _delete_my_commands(self, request: _Request) -> bool:
        p = request.params
        self._commands.pop(_commands_key(p.get("scope"), str(p.get("language_code") or "")), None)
        return True

    def _get_file(self, request: _Request) -> JSON:
        file_id = str(request.params.get("file_id") or "")
        if file_id not in self._files:
            raise _ApiError(400, "Bad Request: invalid file_id")
        path, data = self._files[file_id]
        return {
            "file_id": file_id,
            "file_unique_id": f"u-{file_id}",
            "file_size": len(data),
            "file_path": path,
        }

    # ------------------------------------------------------------------ chat state helpers

    def _bot_user(self) -> JSON:
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": "Aftercare test bot",
            "username": self.bot_username,
        }

    def _chat(self, chat_id: int, user: JSON | None) -> _Chat:
        chat = self._chats.get(chat_id)
        if chat is None:
            base: JSON = {
                "id": chat_id,
                "is_bot": False,
                "first_name": "Test",
                "language_code": "nl",
            }
            chat = _Chat(chat_id=chat_id, user={**base, **(user or {})})
            self._chats[chat_id] = chat
        return chat

    def _chat_json(self, chat: _Chat) -> JSON:
        if chat.chat_id > 0:
            return {"id": chat.chat_id, "type": "private", "first_name": chat.user["first_name"]}
        return {"id": chat.chat_id, "type": "group", "title": "Test group"}

    def _store_bot_message(
        self,
        chat_id: int,
        kind: str,
        *,
        text: str | None = None,
        caption: str | None = None,
        reply_markup: JSON | None,
        protect: bool,
        photo: bytes | None = None,
        file_id: str | None = None,
    ) -> FakeMessage:
        chat = self._chat(chat_id, None)
        message_id = chat.next_message_id
        chat.next_message_id += 1
        stored = FakeMessage(
            chat_id=chat_id,
            message_id=message_id,
            from_bot=True,
            kind=kind,
            date=int(self.now()),
            received_at=time.perf_counter(),
            text=text,
            caption=caption,
            reply_markup=reply_markup,
            protect_content=protect,
            photo=photo,
            file_id=file_id,
        )
        chat.messages[message_id] = stored
        self._accepted += 1
        self._sent_total += 1
        self._sent_per_chat[chat_id] += 1
        self._notify(chat_id)
        return stored

    def _count_text(self, chat_id: int, text: str) -> None:
        key = (chat_id, text)
        if self._text_counts[key]:
            self._duplicates += 1
        self._text_counts[key] += 1

    def _message_json(self, stored: FakeMessage) -> JSON:
        chat = self._chats[stored.chat_id]
        message: JSON = {
            "message_id": stored.message_id,
            "from": self._bot_user() if stored.from_bot else chat.user,
            "chat": self._chat_json(chat),
            "date": stored.date,
        }
        if stored.edit_count:
            message["edit_date"] = int(self.now())
        if stored.text is not None:
            message["text"] = stored.text
        if stored.kind == "photo":
            width, height = _png_size(stored.photo) if stored.photo else (320, 240)
            message["photo"] = [
                {
                    "file_id": stored.file_id,
                    "file_unique_id": f"u-{stored.file_id}",
                    "width": width,
                    "height": height,
                    "file_size": len(stored.photo or b""),
                }
            ]
        if stored.caption is not None:
            message["caption"] = stored.caption
        if stored.reply_markup and "inline_keyboard" in stored.reply_markup:
            message["reply_markup"] = stored.reply_markup
        if stored.protect_content:
            message["has_protected_content"] = True
        return message

    # ------------------------------------------------------------------ webhook delivery

    def _deliver_webhooks(self) -> None:
        """Delivery thread: POST queued updates to the webhook in order, with retries."""
        connection: http.client.HTTPConnection | None = None
        target: _Webhook | None = None
        attempts = 0
        while True:
            with self._lock:
                while not self._stopping and (self._webhook is None or not self._webhook_queue):
                    self._webhook_cv.wait()
                if self._stopping or self._webhook is None:
                    break
                entry = self._webhook_queue[0]
                hook = self._webhook
            if hook is not target and connection is not None:
                connection.close()
                connection = None
            target = hook
            connection, delivered = self._post_update(connection, hook, entry)
            attempts += 1
            with self._lock:
                done = delivered or attempts >= self.webhook_max_attempts
                if done and self._webhook_queue and self._webhook_queue[0] is entry:
                    self._webhook_queue.popleft()
                if done or self._webhook is not hook:
                    attempts = 0
                self._notify()
            if not delivered:
                self._stop_event.wait(self.webhook_retry_delay)
        if connection is not None:
            connection.close()

    def _post_update(
        self, connection: http.client.HTTPConnection | None, hook: _Webhook, entry: _Pending
    ) -> tuple[http.client.HTTPConnection | None, bool]:
        """POST one update; returns the connection to reuse and whether the hook took it."""
        parts = urlsplit(hook.url)
        headers = {"Content-Type": "application/json"}
        if hook.secret is not None:
            headers["X-Telegram-Bot-Api-Secret-Token"] = hook.secret
        status: int | None = None
        error: str | None = None
        try:
            if connection is None:
                kind = (
                    http.client.HTTPSConnection
                    if parts.scheme == "https"
                    else http.client.HTTPConnection
                )
                connection = kind(parts.hostname or "127.0.0.1", parts.port, timeout=10)
            with self._lock:
                self._delivered_at.setdefault(entry.update_id, time.perf_counter())
            path = parts.path or "/"
            if parts.query:
                path = f"{path}?{parts.query}"
            connection.request("POST", path, body=_dumps(entry.payload), headers=headers)
            response = connection.getresponse()
            response.read()
            status = response.status
            if response.will_close:
                connection.close()
                connection = None
        except (OSError, http.client.HTTPException) as exc:
            error = f"{type(exc).__name__}: {exc}"
            if connection is not None:
                connection.close()
            connection = None
        ok = status is not None and 200 <= status < 300
        with self._lock:
            self._webhook_attempts.append(
                WebhookAttempt(entry.update_id, status, error, hook.secret, time.perf_counter())
            )
            if not ok:
                message = error or f"Wrong response from the webhook: {status}"
                self._webhook_last_error = (int(self.now()), message)
        return connection, ok


# ---------------------------------------------------------------------- HTTP plumbing


class _Server(ThreadingHTTPServer):
    """The HTTP server; joins its request threads on close."""

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True
    # socketserver's default backlog of 5 resets connections when PTB opens many at once.
    request_queue_size = 1024

    def __init__(self, fake: FakeTelegram) -> None:
        self.fake = fake
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """Shut every open connection, so that keep-alive threads end."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients going away are normal; anything else is kept as an internal error."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            return
        with self.fake._lock:
            self.fake.internal_errors.append(traceback.format_exc())


class _Handler(BaseHTTPRequestHandler):
    """Turns HTTP requests into ``_Request`` and writes ``_Reply`` in one send."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            with contextlib.suppress(OSError):
                super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: benchmarks send thousands of requests."""

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        fake = self.server.fake
        raw_path, _, query = self.path.partition("?")
        path = unquote(raw_path)  # PTB quotes file paths, and with them the token's colon
        if path.startswith("/file/bot"):
            token, _, file_path = path.removeprefix("/file/bot").partition("/")
            self._write(fake._serve_file(token, file_path))
            return
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return
        if not path.startswith("/bot"):
            self._write(
                _Reply(404, _dumps({"ok": False, "error_code": 404, "description": "Not Found"}))
            )
            return
        token, _, method = path.removeprefix("/bot").partition("/")
        try:
            params, files = _parse_params(query, self.headers.get("Content-Type", ""), body)
        except _ApiError as error:
            answer = {"ok": False, "error_code": error.status, "description": error.description}
            self._write(_Reply(error.status, _dumps(answer)))
            return
        reply = fake._handle(_Request(token, method.strip("/"), params, files))
        if reply.drop:
            self.close_connection = True
            return
        self._write(reply)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _write(self, reply: _Reply) -> None:
        phrase = _phrase(reply.status)
        head = (
            f"HTTP/1.1 {reply.status} {phrase}\r\n"
            f"Server: fake-telegram\r\n"
            f"Content-Type: {reply.content_type}\r\n"
            f"Content-Length: {len(reply.body)}\r\n"
            f"\r\n"
        ).encode("ascii")
        self.wfile.write(head + reply.body)


# ---------------------------------------------------------------------- parsing helpers


def _parse_params(
    query: str, content_type: str, body: bytes
) -> tuple[JSON, dict[str, tuple[str, bytes]]]:
    """Parameters from the query string and a form, JSON or multipart body, typed."""
    raw: JSON = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
    files: dict[str, tuple[str, bytes]] = {}
    media_type = content_type.split(";", 1)[0].strip().lower()
    if not body:
        pass
    elif media_type == "application/x-www-form-urlencoded":
        raw.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    elif media_type == "application/json":
        try:
            decoded = json.loads(body)
        except ValueError as exc:
            raise _ApiError(400, "Bad Request: can't parse JSON body") from exc
        if not isinstance(decoded, dict):
            raise _ApiError(400, "Bad Request: the JSON body must be an object")
        raw.update(decoded)
    elif media_type == "multipart/form-data":
        head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
        parsed = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        for part in parsed.iter_parts():
            name = part.get_param("name", header="content-disposition")
            decoded_payload = part.get_payload(decode=True)
            payload = decoded_payload if isinstance(decoded_payload, bytes) else b""
            filename = part.get_filename()
            if filename is not None:
                files[str(name)] = (filename, payload)
            elif name is not None:
                raw[str(name)] = payload.decode("utf-8", "replace")
    return _normalize(raw), files


def _normalize(raw: JSON) -> JSON:
    """Turn form strings into the types Telegram reads them as."""
    params: JSON = {}
    for key, value in raw.items():
        if isinstance(value, str):
            if key in _INT_FIELDS:
                try:
                    value = int(value)
                except ValueError:
                    if key != "chat_id":
                        raise _ApiError(400, f"Bad Request: invalid {key} specified") from None
            elif key in _FLOAT_FIELDS:
                try:
                    value = float(value)
                except ValueError:
                    raise _ApiError(400, f"Bad Request: invalid {key} specified") from None
            elif key in _BOOL_FIELDS:
                value = value.strip().lower() in ("true", "1")
            elif key in _JSON_FIELDS:
                try:
                    value = json.loads(value)
                except ValueError:
                    raise _ApiError(400, f"Bad Request: can't parse {key} JSON object") from None
        params[key] = value
    return params


def _chat_id(params: JSON) -> int:
    chat_id = params.get("chat_id")
    if chat_id is None or chat_id == "":
        raise _ApiError(400, "Bad Request: chat_id is empty")
    if not isinstance(chat_id, int):
        raise _ApiError(400, "Bad Request: chat not found")
    return chat_id


def _reply_markup(params: JSON) -> JSON | None:
    markup = params.get("reply_markup")
    if markup is None:
        return None
    if not isinstance(markup, dict):
        raise _ApiError(400, "Bad Request: can't parse reply keyboard markup JSON object")
    for row in markup.get("inline_keyboard") or []:
        for button in row:
            data = button.get("callback_data")
            if data is not None and not 1 <= len(str(data).encode()) <= MAX_CALLBACK_DATA_BYTES:
                raise _ApiError(400, "Bad Request: BUTTON_DATA_INVALID")
    return markup


def _commands_key(scope: Any, language_code: str) -> tuple[str, str]:
    scope = scope if isinstance(scope, dict) else {"type": "default"}
    return json.dumps(scope, sort_keys=True), language_code


def _kind_of(fields: JSON) -> str:
    return next((kind for kind in _MESSAGE_KINDS if kind in fields), "other")


def _kind_of_update(update: JSON) -> str:
    return next((key for key in update if key != "update_id"), "unknown")


def _auth_error(token: str) -> str:
    return "Unauthorized" if ":" in token else "Not Found"


def _png_size(data: bytes) -> tuple[int, int]:
    if data[:8] == _PNG_SIGNATURE and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return 320, 240


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
