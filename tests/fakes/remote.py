"""The fake Telegram Bot API in a child process, for benchmarks.

In the test process the fake shares the GIL with the bot it serves, and under load it takes a
share of the CPU the benchmark means to measure. ``RemoteFakeTelegram`` runs the same
``FakeTelegram`` in a child process (``python -m tests.fakes.remote``) and forwards calls to
it over a ``multiprocessing`` manager connection on 127.0.0.1, with a random key::

    with RemoteFakeTelegram() as fake:
        app = Application.builder().token(fake.token).base_url(fake.base_url).build()
        update_id = fake.push_text(chat_id, "hoi")
        await fake.wait_for_async(1, chat_id=chat_id)
        latency = fake.sent(chat_id)[-1].received_at - fake.pushed_at(update_id)

Every public method and attribute of ``FakeTelegram`` is available; each call is a round trip
to the child (about 0.1 ms), and results come back as copies. ``wait_for`` with a message
count waits in the child; with a predicate it polls the predicate here every few milliseconds,
because a predicate cannot cross the process boundary. ``perf_counter`` stamps are taken in
the child and use the system-wide monotonic clock, so they compare with the parent's. The
child ends when ``stop()`` is called or when the parent goes away (its stdin closes).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.managers import BaseManager, BaseProxy
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.fakes.telegram_api import (
    Condition,
    FakeMessage,
    FakeTelegram,
    FakeTelegramError,
    WaitTimeout,
)

__all__ = ["RemoteFakeTelegram"]

_POLL_SECONDS = 0.002
_KEY_VARIABLE = "FAKE_TELEGRAM_MANAGER_KEY"
_REPO_ROOT = Path(__file__).resolve().parents[2]


def _started_fake(**kwargs: Any) -> FakeTelegram:
    """Build and start the fake inside the child process."""
    return FakeTelegram(**kwargs).start()


_EXPOSED = (
    "__getattribute__",
    *(
        name
        for name, value in inspect.getmembers(FakeTelegram)
        if not name.startswith("_") and callable(value) and name != "start"
    ),
)


class _FakeManager(BaseManager):
    """Hosts one FakeTelegram in a child process."""


class _Proxy(BaseProxy):
    """A bare proxy: calls go through ``_callmethod`` (AutoProxy would shadow __getattribute__)."""


_FakeManager.register("FakeTelegram", _started_fake, proxytype=_Proxy, exposed=_EXPOSED)


class RemoteFakeTelegram:
    """A ``FakeTelegram`` running in a child process, driven through the same API."""

    def __init__(self, **kwargs: Any) -> None:
        """Start the child process and the fake server in it (``kwargs`` go to FakeTelegram)."""
        key = secrets.token_hex(16)
        path = os.pathsep.join(p for p in (str(_REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.remote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, _KEY_VARIABLE: key, "PYTHONPATH": path},
            cwd=_REPO_ROOT,
        )
        self._closed = False
        try:
            assert self._process.stdout is not None
            line = self._process.stdout.readline().decode().split()
            if len(line) != 2:
                raise FakeTelegramError("the fake Telegram child process did not start")
            self._manager = _FakeManager(address=(line[0], int(line[1])), authkey=key.encode())
            self._manager.connect()
            self._proxy: Any = self._manager.FakeTelegram(**kwargs)  # type: ignore[attr-defined]
        except BaseException:
            self._end_child()
            raise

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        declared = inspect.getattr_static(FakeTelegram, name, None)
        if callable(declared) and not isinstance(declared, property):
            return functools.partial(self._call, name)
        return self._proxy._callmethod("__getattribute__", (name,))

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._proxy._callmethod(name, args, kwargs)

    def wait_for(
        self, condition: Condition, timeout: float = 5.0, *, chat_id: int | None = None
    ) -> list[FakeMessage]:
        """Block until ``condition`` holds; see ``FakeTelegram.wait_for``."""
        if not callable(condition):
            result: list[FakeMessage] = self._call("wait_for", condition, timeout, chat_id=chat_id)
            return result
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"the condition did not hold within {timeout} s")
            time.sleep(_POLL_SECONDS)
        sent: list[FakeMessage] = self.sent(chat_id)
        return sent

    # The timeout parameter mirrors wait_for; it is a deadline, not a cancel scope.
    async def wait_for_async(
        self,
        condition: Condition,
        timeout: float = 5.0,  # noqa: ASYNC109
        *,
        chat_id: int | None = None,
    ) -> list[FakeMessage]:
        """Await ``condition`` without blocking the event loop."""
        if not callable(condition):
            return await asyncio.to_thread(self.wait_for, condition, timeout, chat_id=chat_id)
        predicate: Callable[[], bool] = condition
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await asyncio.to_thread(predicate):
            if loop.time() >= deadline:
                raise WaitTimeout(f"the condition did not hold within {timeout} s")
            await asyncio.sleep(_POLL_SECONDS)
        sent: list[FakeMessage] = await asyncio.to_thread(self.sent, chat_id)
        return sent

    def stop(self) -> None:
        """Stop the fake and end the child process."""
        if self._closed:
            return
        self._closed = True
        try:
            self._call("stop")
        finally:
            del self._proxy
            self._end_child()

    def _end_child(self) -> None:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.close()  # the child exits at the end of its input
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process.stdout.close()

    def __enter__(self) -> RemoteFakeTelegram:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> RemoteFakeTelegram:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)


def _serve_in_child() -> None:
    """Child side: serve the manager, print its address, exit when the parent's pipe closes."""
    key = os.environ[_KEY_VARIABLE].encode()
    server = _FakeManager(address=("127.0.0.1", 0), authkey=key).get_server()
    address: Any = server.address
    print(address[0], address[1], flush=True)

    def exit_with_parent() -> None:
        sys.stdin.buffer.read()
        os._exit(0)

    threading.Thread(target=exit_with_parent, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    _serve_in_child()
