"""The separate Rasa 3.6 environment: find it, train NLU-only models in it, run its server.

Rasa needs Python < 3.11 and pins SQLAlchemy < 1.5 and APScheduler < 3.10, so it lives in its
own virtualenv outside the checkout (`make rasa`, nlu/rasa/make_env.sh), by default
~/.cache/aftercare/rasa-3.6.21 (AFTERCARE_RASA_VENV overrides). This module only starts
processes in it; it never imports Rasa.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx
from ruamel.yaml import YAML

from nlu.data import DATA_DIR, load_training_data
from nlu.errors import RasaEnvironmentError

RASA_VERSION = "3.6.21"
RASA_DIR = Path(__file__).resolve().parent / "rasa"
PIPELINE_CONFIG = RASA_DIR / "config.yml"
MARKER = ".aftercare-rasa-complete"

LineSink = Callable[[str], None]

log = logging.getLogger(__name__)


def rasa_venv() -> Path:
    """Where the Rasa environment lives: $AFTERCARE_RASA_VENV or ~/.cache/aftercare/rasa-3.6.21."""
    configured = os.environ.get("AFTERCARE_RASA_VENV")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "aftercare" / f"rasa-{RASA_VERSION}"


def rasa_ready() -> bool:
    """True when `make rasa` finished for the environment `rasa_venv()` names."""
    venv = rasa_venv()
    return (venv / MARKER).is_file() and (venv / "bin" / "rasa").is_file()


def rasa_bin(name: str = "rasa") -> Path:
    """A program in the Rasa environment; RasaEnvironmentError says how to make it if missing."""
    if not rasa_ready():
        raise RasaEnvironmentError(
            f"The Rasa {RASA_VERSION} environment is missing at {rasa_venv()}. "
            "Create it with 'make rasa' (it needs Python 3.10 and takes a few minutes)."
        )
    return rasa_venv() / "bin" / name


def rasa_process_env() -> dict[str, str]:
    """Environment for Rasa processes: no telemetry (no internet here), quiet TensorFlow."""
    env = dict(os.environ)
    env.update(
        {
            "RASA_TELEMETRY_ENABLED": "false",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "SQLALCHEMY_SILENCE_UBER_WARNING": "1",
            "PYTHONWARNINGS": "ignore",
            "LOG_LEVEL_LIBRARIES": "ERROR",
        }
    )
    return env


def pipeline_config(lang: str) -> str:
    """nlu/rasa/config.yml with `language` set to `lang`, as YAML text."""
    yaml = YAML(typ="safe", pure=True)
    config = yaml.load(PIPELINE_CONFIG.read_text("utf-8"))
    config["language"] = lang
    out = io.StringIO()
    yaml.dump(config, out)
    return out.getvalue()


def model_path(lang: str, cache_dir: Path, data_dir: Path = DATA_DIR) -> Path:
    """The cached Rasa model for this language's data, pipeline and Rasa version."""
    digest = hashlib.sha256()
    digest.update(load_training_data(lang, data_dir).digest.encode())
    digest.update(pipeline_config(lang).encode())
    digest.update(RASA_VERSION.encode())
    return cache_dir / "rasa" / f"nlu-{lang}-{digest.hexdigest()[:16]}.tar.gz"


def train_model(
    lang: str, cache_dir: Path, on_line: LineSink | None = None, data_dir: Path = DATA_DIR
) -> Path:
    """Train an NLU-only Rasa model for `lang` (or reuse the cached one); return its path."""
    target = model_path(lang, cache_dir, data_dir)
    if target.is_file():
        return target
    rasa = rasa_bin()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="aftercare-rasa-") as work:
        config = Path(work) / "config.yml"
        config.write_text(pipeline_config(lang), "utf-8")
        command = [
            str(rasa), "train", "nlu",
            "--nlu", str(data_dir / lang),
            "--config", str(config),
            "--out", str(Path(work) / "models"),
            "--fixed-model-name", target.name.removesuffix(".tar.gz"),
        ]  # fmt: skip
        run_streaming(command, Path(work), on_line)
        produced = Path(work) / "models" / target.name
        if not produced.is_file():
            raise RasaEnvironmentError(f"Rasa finished but wrote no model for '{lang}'.")
        shutil.move(str(produced), target)
    return target


def run_streaming(
    command: list[str], cwd: Path, on_line: LineSink | None, what: str | None = None
) -> None:
    """Run a command in the Rasa environment, passing each output line to `on_line`; raise
    if it fails, naming it `what` (default: 'rasa <sub-command>') with its last lines."""
    with subprocess.Popen(  # noqa: S603  (our own fixed command line)
        command,
        cwd=cwd,
        env=rasa_process_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as process:
        assert process.stdout is not None
        tail: list[str] = []
        for line in process.stdout:
            tail = [*tail[-19:], line.rstrip()]
            if on_line is not None:
                on_line(line.rstrip())
        code = process.wait()
    if code != 0:
        raise RasaEnvironmentError(
            f"{what or repr(f'rasa {command[1]}')} failed with exit code {code}. "
            "Its last lines:\n" + "\n".join(tail)
        )


EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, below the ephemeral range.

    A server that takes seconds to start (Rasa loads TensorFlow) must not get a port from the
    range the kernel hands to outgoing connections: in the meantime a client socket may take
    it (even our own `/status` probe, connecting to itself), and the server's bind then fails.
    """
    try:
        low = int(EPHEMERAL_PORTS.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    chooser = random.SystemRandom()
    for _ in range(100):
        port = chooser.randrange(10_000, max(low, 10_001))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def log_tail(path: Path, start: int = 0, lines: int = 20) -> str:
    """The last lines of a Rasa log written after byte `start` (start-up and errors only: it
    never logs parsed texts)."""
    try:
        with path.open("rb") as log_file:
            log_file.seek(start)
            text = log_file.read().decode("utf-8", errors="replace")
    except OSError as error:
        return f"(the log could not be read: {error.strerror})"
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(the log is empty)"


class _PortTaken(Exception):
    """The server could not bind its port (someone took it after `free_port` chose it)."""


class RasaServer:
    """One `rasa run --enable-api` process on 127.0.0.1, for tests, evaluation and serve.sh.

    With `port=None` it takes a free port, and another one if the port was taken before
    Rasa could bind it (up to `PORT_ATTEMPTS` times).
    """

    PORT_ATTEMPTS = 3

    def __init__(
        self, model: Path, port: int | None, token: str, log_file: Path | None = None
    ) -> None:
        self.model = model
        self._choose_port = port is None
        self.port = free_port() if port is None else port
        self.token = token
        self.log_file = log_file
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180.0) -> None:
        """Start the server and wait until `/status` answers; raise if it does not in time."""
        attempts = self.PORT_ATTEMPTS if self._choose_port else 1
        for attempt in range(1, attempts + 1):
            try:
                self._start_once(timeout_s)
                return
            except _PortTaken as taken:
                if attempt == attempts:
                    raise RasaEnvironmentError(str(taken)) from None
                log.warning("rasa.port_taken port=%s attempt=%s", self.port, attempt)
                self.port = free_port()

    def _start_once(self, timeout_s: float) -> None:
        # `--option=value`: a token may begin with "-" (token_urlsafe does, one time in 64),
        # and Rasa's argparse would take "--auth-token -x..." for an option without a value.
        command = [
            str(rasa_bin()), "run", "--enable-api",
            f"--auth-token={self.token}",
            f"--model={self.model}",
            "--interface=127.0.0.1",
            f"--port={self.port}",
        ]  # fmt: skip
        self._workdir = tempfile.TemporaryDirectory(prefix="aftercare-rasa-run-")
        log_path = self.log_file or Path(self._workdir.name) / "server.log"
        self._log = open(log_path, "ab")  # noqa: SIM115  (closed in stop())
        start = self._log.tell()  # a log file given by the caller may hold earlier runs
        self._process = subprocess.Popen(  # noqa: S603  (our own fixed command line)
            command,
            cwd=self._workdir.name,
            env=rasa_process_env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                tail = log_tail(log_path, start)
                self.stop()
                message = (
                    f"The Rasa server on port {self.port} exited early with exit code {code}. "
                    f"The last lines of its log:\n{tail}"
                )
                if "address already in use" in tail.lower():
                    raise _PortTaken(message)
                raise RasaEnvironmentError(message)
            try:
                if httpx.get(
                    self.url + "/status", params={"token": self.token}, timeout=2
                ).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        tail = log_tail(log_path, start)
        self.stop()
        raise RasaEnvironmentError(
            f"The Rasa server on port {self.port} did not answer within {timeout_s:.0f} s. "
            f"The last lines of its log:\n{tail}"
        )

    def stop(self) -> None:
        """Stop the server (politely, then firmly) and remove its working folder."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=15)
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> RasaServer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


@contextmanager
def rasa_server(model: Path, token: str, port: int | None = None) -> Iterator[RasaServer]:
    """A running Rasa server for `model` on a free port; stopped on exit."""
    server = RasaServer(model, port, token)
    with server:
        yield server
