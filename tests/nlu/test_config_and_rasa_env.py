"""Settings and the Rasa environment helpers that need no Rasa."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from nlu import NluConfig, RasaEnvironmentError
from nlu.config import parse_rasa_urls
from nlu.rasa_env import (
    RasaServer,
    free_port,
    model_path,
    pipeline_config,
    rasa_bin,
    rasa_venv,
    run_streaming,
)


def test_one_url_serves_every_language() -> None:
    urls = parse_rasa_urls("http://rasa:5005/", ("nl", "en"))
    assert urls == {"nl": "http://rasa:5005", "en": "http://rasa:5005"}


def test_one_server_per_language() -> None:
    urls = NluConfig(rasa_url="nl=http://a:5005, en=http://b:5006/").rasa_urls()
    assert urls == {"nl": "http://a:5005", "en": "http://b:5006"}


def test_the_default_is_one_server_per_language() -> None:
    assert set(NluConfig().rasa_urls()) == {"nl", "en"}
    assert len(set(NluConfig().rasa_urls().values())) == 2


def test_the_pipeline_gets_the_language_of_the_model() -> None:
    assert "language: en" in pipeline_config("en")
    assert "language: nl" in pipeline_config("nl")


def test_models_are_cached_per_language_and_data(tmp_path: Path) -> None:
    nl, en = model_path("nl", tmp_path), model_path("en", tmp_path)
    assert nl != en and nl == model_path("nl", tmp_path)
    assert nl.parent == tmp_path / "rasa"


def test_a_missing_environment_says_how_to_make_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AFTERCARE_RASA_VENV", "/nonexistent/rasa-env")
    assert rasa_venv() == Path("/nonexistent/rasa-env")
    with pytest.raises(RasaEnvironmentError, match="make rasa"):
        rasa_bin()


FAKE_RASA = """#!{python}
import argparse, http.server, pathlib, sys, urllib.parse
# The command line as `rasa run` reads it (argparse: it exits with 2 on a bad one).
parser = argparse.ArgumentParser(prog="rasa run")
parser.add_argument("command")
parser.add_argument("--enable-api", action="store_true")
parser.add_argument("-t", "--auth-token")
parser.add_argument("-m", "--model")
parser.add_argument("-i", "--interface")
parser.add_argument("-p", "--port", type=int)
args = parser.parse_args()
calls = pathlib.Path(sys.argv[0]).with_name("calls")
calls.write_text(calls.read_text() + "x" if calls.exists() else "x")
if len(calls.read_text()) <= {failures}:
    print("{failure}")
    sys.exit(3)
class Status(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        self.send_response(200 if query.get("token") == [args.auth_token] else 401)
        self.end_headers()
http.server.HTTPServer((args.interface, args.port), Status).serve_forever()
"""


PORT_TAKEN = "OSError: [Errno 98] error while attempting to bind: address already in use"


def fake_rasa(
    monkeypatch: pytest.MonkeyPatch, folder: Path, failures: int, failure: str = PORT_TAKEN
) -> Path:
    """A stand-in `rasa` that fails `failures` times (printing `failure`), then serves
    /status."""
    venv = folder / "rasa-env"
    (venv / "bin").mkdir(parents=True)
    fake = venv / "bin" / "rasa"
    fake.write_text(FAKE_RASA.format(python=sys.executable, failures=failures, failure=failure))
    fake.chmod(0o755)
    (venv / ".aftercare-rasa-complete").write_text("test")
    monkeypatch.setenv("AFTERCARE_RASA_VENV", str(venv))
    return venv / "bin" / "calls"


def test_a_server_that_exits_at_once_says_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = fake_rasa(monkeypatch, tmp_path, failures=5)
    server = RasaServer(tmp_path / "model.tar.gz", free_port(), "s3cr3t-value")
    with pytest.raises(RasaEnvironmentError) as raised:
        server.start(timeout_s=30)
    message = str(raised.value)
    assert "exit code 3" in message
    assert "address already in use" in message
    assert "s3cr3t-value" not in message
    assert calls.read_text() == "x", "a port the caller chose is not changed"


def test_a_server_on_a_port_of_its_own_choosing_takes_another_when_it_is_taken(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = fake_rasa(monkeypatch, tmp_path, failures=1)
    with RasaServer(tmp_path / "model.tar.gz", None, "s3cr3t-value") as server:
        assert httpx.get(server.url + "/status", params={"token": "s3cr3t-value"}).is_success
    assert calls.read_text() == "xx"


def test_a_token_that_begins_with_a_dash_reaches_the_server_intact(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # secrets.token_urlsafe gives such a token one time in 64 (CI failed on one, twice).
    fake_rasa(monkeypatch, tmp_path, failures=0)
    with RasaServer(tmp_path / "model.tar.gz", None, "-dash-first") as server:
        assert httpx.get(server.url + "/status", params={"token": "-dash-first"}).is_success
        assert httpx.get(server.url + "/status", params={"token": "x"}).status_code == 401


def test_free_ports_are_below_the_range_of_outgoing_connections() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert all(10_000 <= free_port() < low for _ in range(20))


def test_a_failing_rasa_command_is_named_with_its_last_lines(tmp_path: Path) -> None:
    lines: list[str] = []
    script = "print('fold 1/2: training'); print('MemoryError'); raise SystemExit(2)"
    with pytest.raises(RasaEnvironmentError) as raised:
        run_streaming(
            [sys.executable, "-c", script], tmp_path, lines.append, what="Rasa cross-validation"
        )
    assert lines == ["fold 1/2: training", "MemoryError"]
    assert str(raised.value) == (
        "Rasa cross-validation failed with exit code 2. Its last lines:\n"
        "fold 1/2: training\nMemoryError"
    )


def test_an_earlier_run_in_the_same_log_file_is_not_taken_for_this_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = fake_rasa(monkeypatch, tmp_path, failures=5, failure="ImportError: no module tf")
    log = tmp_path / "server.log"
    log.write_text(PORT_TAKEN + "\n")
    server = RasaServer(tmp_path / "model.tar.gz", None, "s3cr3t-value", log_file=log)
    with pytest.raises(RasaEnvironmentError) as raised:
        server.start(timeout_s=30)
    assert "ImportError: no module tf" in str(raised.value)
    assert "address already in use" not in str(raised.value)
    assert calls.read_text() == "x", "not a taken port: no second try"
