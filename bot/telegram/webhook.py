"""Webhook mode: a small tornado server in the bot's event loop.

POST /<path>   an update from Telegram. The secret token header is checked on every
               request (403 without it). The update is handled before the answer, so a
               database outage answers 503 and Telegram delivers it again later (a
               redelivery is processed once).
GET /healthz   200 when the database answers, 503 when it does not.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web
from telegram import Bot, Update

from bot.telegram.front import DATABASE_DOWN, TelegramFront

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 (a header name)
MAX_BODY = 1 << 20


class _Base(tornado.web.RequestHandler):
    def initialize(self, server: WebhookServer) -> None:
        self.server = server

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))


class _UpdateHandler(_Base):
    async def post(self) -> None:
        given = self.request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), self.server.secret.encode()):
            log.warning("webhook.refused reason=secret")
            self._answer(403, {"ok": False})
            return
        try:
            data = json.loads(self.request.body)
            update = Update.de_json(data, self.server.bot)
        except (ValueError, TypeError, KeyError):
            self._answer(400, {"ok": False})
            return
        self.server.in_flight += 1
        try:
            await self.server.front.dispatch(update, answer_outage=False)
        except DATABASE_DOWN as exc:
            log.error(
                "webhook.database_down update=%s error=%s", update.update_id, type(exc).__name__
            )
            self._answer(503, {"ok": False})
            return
        except Exception as exc:  # the service already answered her; do not make Telegram retry
            log.error("webhook.failed update=%s error=%s", update.update_id, type(exc).__name__)
        finally:
            self.server.in_flight -= 1
        self._answer(200, {"ok": True})


class _HealthHandler(_Base):
    async def get(self) -> None:
        healthy = await self.server.health()
        self._answer(200 if healthy else 503, {"ok": healthy})


class WebhookServer:
    """Serves Telegram's webhook and `/healthz` on `listen:port`."""

    def __init__(
        self,
        front: TelegramFront,
        bot: Bot,
        *,
        secret: str,
        health: Callable[[], Awaitable[bool]],
        path: str = "telegram",
        listen: str = "127.0.0.1",
        port: int = 8443,
    ) -> None:
        if not secret:
            raise ValueError("webhook mode needs a secret token")
        self.front = front
        self.bot = bot
        self.secret = secret
        self.health = health
        self.path = path.strip("/")
        self.listen = listen
        self.port = port
        self.in_flight = 0
        self._server: tornado.httpserver.HTTPServer | None = None

    async def start(self) -> None:
        """Start listening (port 0 picks a free port, see `port`)."""
        app = tornado.web.Application(
            [
                (rf"/{self.path}", _UpdateHandler, {"server": self}),
                (r"/healthz", _HealthHandler, {"server": self}),
            ],
            log_function=lambda handler: None,
        )
        server = tornado.httpserver.HTTPServer(app, max_body_size=MAX_BODY)
        sockets = tornado.netutil.bind_sockets(self.port, self.listen)
        server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        self._server = server
        log.info("webhook.listening port=%d", self.port)

    async def stop(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Stop taking requests, then wait for the updates in hand to finish."""
        if self._server is None:
            return
        self._server.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.in_flight and loop.time() < deadline:  # noqa: ASYNC110 (a counter, not an event)
            await asyncio.sleep(0.02)
        await self._server.close_all_connections()
        self._server = None
