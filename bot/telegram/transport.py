"""The HTTP transport under python-telegram-bot: aiohttp instead of PTB's default httpx.

PTB's `Bot` does everything Telegram-specific (the methods, the JSON, Telegram's errors); a
`BaseRequest` only moves bytes. PTB's own `HTTPXRequest` costs about 1.1-1.3 ms of CPU per Bot
API call here, this one about 0.4-0.6 ms (aiohttp parses HTTP in C; `bench/transport.py`);
a call's parameters go as one JSON body, not a form (0.37-0.42 ms a call before, 0.28-0.36
ms since, on 2026-12-07's VM, where httpx took 0.97-1.44 ms).
Every turn makes two or three calls (the update, the reply, the answer to a button), so on
one CPU the transport decided how many girls the bot can serve at once
(`bench/turn_latency.py`).

What the outbox needs from a transport is an honest answer to "could Telegram have got this
message?", because a message that may have arrived is not sent twice:

    could not connect, DNS, TLS, no free connection in time -> TimedOut / NetworkError whose
                                                               cause is in NOT_SENT
    anything after the request began (no answer in time,   -> TimedOut / NetworkError with
    connection dropped, broken answer)                        another cause: maybe delivered

aiohttp retries nothing that is not idempotent, and every Bot API call is a POST, so a request
goes out at most once. Error messages name the exception class only: an aiohttp message may
hold the host, never the URL, and the URL holds the token.
"""

from __future__ import annotations

from typing import Any, TypeVar

import aiohttp
from telegram import Bot
from telegram._utils.defaultvalue import DefaultValue
from telegram._utils.types import ODVInput
from telegram.error import NetworkError, TimedOut
from telegram.ext import ApplicationBuilder
from telegram.request import BaseRequest, RequestData

APPLICATION_POOL = 256
"""Connections to the Bot API for an Application's sends and button answers (PTB's own
default): every button press is answered at once, so 200 girls tapping together may need as
many; the outbox keeps at most 16 sends going. The long poll has one of its own."""

_JSON = {"Content-Type": "application/json"}

_Builder = TypeVar("_Builder", bound=ApplicationBuilder[Any, Any, Any, Any, Any, Any])

NOT_SENT: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectorError,  # refused, DNS, TLS: the request never left
    aiohttp.ConnectionTimeoutError,  # no free connection, or connecting took too long
)
"""Causes of a `TimedOut` or `NetworkError` after which Telegram surely has nothing."""


class AiohttpRequest(BaseRequest):
    """A PTB `BaseRequest` on one `aiohttp.ClientSession` with a bounded connection pool.

    The timeouts are PTB's, as far as aiohttp can keep them apart: `pool_timeout` plus
    `connect_timeout` bound the wait for a connection (a free one from the pool or a new
    one), `connect_timeout` alone the making of a new one, `read_timeout` the wait for the
    next bytes of the answer; `write_timeout` (`media_write_timeout` for uploads) is added to
    all of them to bound the whole request, since aiohttp has no write timeout of its own.
    """

    def __init__(
        self,
        *,
        connection_pool_size: int = 64,
        read_timeout: float | None = 5.0,
        write_timeout: float | None = 5.0,
        connect_timeout: float | None = 5.0,
        pool_timeout: float | None = 1.0,
        media_write_timeout: float | None = 20.0,
    ) -> None:
        if connection_pool_size < 1:
            raise ValueError("connection_pool_size must be at least 1")
        self._pool_size = connection_pool_size
        self._read = read_timeout
        self._write = write_timeout
        self._connect = connect_timeout
        self._pool = pool_timeout
        self._media_write = media_write_timeout
        self._session: aiohttp.ClientSession | None = None

    @property
    def read_timeout(self) -> float | None:
        """The read timeout used when a call does not give one."""
        return self._read

    async def initialize(self) -> None:
        """Open the session (in the running event loop)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._pool_size),
                headers={"User-Agent": self.USER_AGENT},
                timeout=aiohttp.ClientTimeout(total=None),
                trust_env=False,
            )

    async def shutdown(self) -> None:
        """Close the session and its connections."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    def _timeout(
        self,
        read_timeout: ODVInput[float],
        write_timeout: ODVInput[float],
        connect_timeout: ODVInput[float],
        pool_timeout: ODVInput[float],
        upload: bool,
    ) -> aiohttp.ClientTimeout:
        read = self._read if isinstance(read_timeout, DefaultValue) else read_timeout
        connect = self._connect if isinstance(connect_timeout, DefaultValue) else connect_timeout
        pool = self._pool if isinstance(pool_timeout, DefaultValue) else pool_timeout
        if isinstance(write_timeout, DefaultValue):
            write = self._media_write if upload else self._write
        else:
            write = write_timeout
        # aiohttp's `connect` covers the wait for a pooled connection and making a new one.
        acquire = None if pool is None or connect is None else pool + connect
        parts = (pool, connect, write, read)
        total = None if any(p is None for p in parts) else sum(p for p in parts if p is not None)
        return aiohttp.ClientTimeout(
            total=total, connect=acquire, sock_connect=connect, sock_read=read
        )

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        write_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        connect_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        pool_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        """Send one request; return Telegram's status code and body (PTB reads them)."""
        session = self._session
        if session is None or session.closed:
            raise RuntimeError("This AiohttpRequest is not initialized")
        files = request_data.multipart_data if request_data is not None else None
        data: aiohttp.FormData | bytes | None = None
        headers: dict[str, str] | None = None
        if files:
            assert request_data is not None
            form = aiohttp.FormData()
            for name, value in request_data.json_parameters.items():
                form.add_field(name, value)
            for name, (filename, content, mimetype) in files.items():
                form.add_field(name, content, filename=filename, content_type=mimetype)
            data = form
        elif request_data is not None and request_data.parameters:
            # One JSON body, as the Bot API accepts: cheaper than a form, whose every field
            # PTB encodes as JSON on its own and aiohttp then percent-encodes.
            data = request_data.json_payload
            headers = _JSON
        timeout = self._timeout(
            read_timeout, write_timeout, connect_timeout, pool_timeout, upload=bool(files)
        )
        try:
            async with session.request(
                method, url, data=data, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                return response.status, await response.read()
        except aiohttp.ConnectionTimeoutError as exc:
            raise TimedOut(
                "Telegram could not be reached in time (no connection); nothing was sent"
            ) from exc
        except TimeoutError as exc:  # aiohttp's read and total time-outs are TimeoutErrors
            raise TimedOut("Telegram did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise NetworkError(f"aiohttp.{type(exc).__name__}") from exc


def make_bot(token: str, base_url: str) -> Bot:
    """A `Bot` on this transport, for what sends without an `Application` (tools, the fault
    tests); it is initialised by `async with`."""
    return Bot(
        token,
        base_url=base_url,
        request=AiohttpRequest(),
        get_updates_request=AiohttpRequest(connection_pool_size=1),
    )


def on_transport(builder: _Builder) -> _Builder:
    """An Application builder whose requests go over this transport: `APPLICATION_POOL`
    connections for the calls, one for the long poll."""
    builder.request(AiohttpRequest(connection_pool_size=APPLICATION_POOL))
    builder.get_updates_request(AiohttpRequest(connection_pool_size=1))
    return builder
