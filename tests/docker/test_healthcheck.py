"""The image's HEALTHCHECK script, against real servers on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "docker" / "healthcheck.py"
spec = importlib.util.spec_from_file_location("imagine_healthcheck", SCRIPT)
assert spec is not None and spec.loader is not None
healthcheck = importlib.util.module_from_spec(spec)
spec.loader.exec_module(healthcheck)


def serve(status: int) -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def healthy_http() -> Iterator[int]:
    yield from serve(200)


@pytest.fixture
def failing_http() -> Iterator[int]:
    yield from serve(503)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_reads_the_command_after_tini(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_bytes(b"/usr/bin/tini\0--\0imagine\0serve-http\0--port\0" b"9000\0")
    assert healthcheck.container_command(cmdline) == ["/usr/bin/tini", "--", "imagine", "serve-http", "--port", "9000"]


def test_port_option_both_spellings_last_wins() -> None:
    assert healthcheck.option(["serve-http", "--port", "1", "--port=2"], "--port") == "2"
    assert healthcheck.option(["serve-http", "--port=2", "--port", "3"], "--port") == "3"
    assert healthcheck.option(["serve-http", "--portal", "4"], "--port") is None


def test_serve_http_healthy_when_healthz_answers_200(healthy_http: int) -> None:
    assert healthcheck.check(["tini", "--", "imagine", "serve-http", "--port", str(healthy_http)]) is None


def test_serve_http_unhealthy_on_an_error_status(failing_http: int) -> None:
    problem = healthcheck.check(["imagine", "serve-http", f"--port={failing_http}"])
    assert problem is not None and "503" in problem


def test_serve_http_unhealthy_when_nothing_listens() -> None:
    port = free_port()
    problem = healthcheck.check(["imagine", "serve-http", "--port", str(port)])
    assert problem is not None and f"127.0.0.1:{port}" in problem


def test_serve_grpc_healthy_when_its_port_accepts() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert healthcheck.check(["imagine", "serve-grpc", "--host", "0.0.0.0", "--port", str(port)]) is None
    assert healthcheck.check(["imagine", "serve-grpc", "--port", str(port)]) is not None


def test_serve_http_on_a_single_address_is_asked_there(healthy_http: int) -> None:
    args = ["imagine", "serve-http", "--host", "127.0.0.1", "--port", str(healthy_http)]
    assert healthcheck.check(args) is None
    problem = healthcheck.check(["imagine", "serve-http", "--host", "127.0.0.2", "--port", str(healthy_http)])
    assert problem is not None and "127.0.0.2" in problem


def test_the_bot_and_one_off_commands_are_healthy_while_they_run() -> None:
    assert healthcheck.check(["/usr/bin/tini", "--", "imagine-bot"], env={}) is None
    assert healthcheck.check(["/usr/bin/tini", "--", "imagine", "generate", "a fox"], env={}) is None


def test_the_bot_with_its_image_api_is_asked_on_imagine_http_port(healthy_http: int, failing_http: int) -> None:
    bot = ["/usr/bin/tini", "--", "/opt/imagine/bin/imagine-bot"]
    assert healthcheck.check(bot, env={"IMAGINE_HTTP_PORT": str(healthy_http), "IMAGINE_HTTP_HOST": "0.0.0.0"}) is None
    problem = healthcheck.check(bot, env={"IMAGINE_HTTP_PORT": str(failing_http)})
    assert problem is not None and "image API" in problem and "503" in problem
    # Port 0 is "any free port": nothing to ask.
    assert healthcheck.check(bot, env={"IMAGINE_HTTP_PORT": "0"}) is None


def test_main_exit_status(monkeypatch: pytest.MonkeyPatch, failing_http: int, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(healthcheck, "container_command", lambda: ["imagine", "serve-http", "--port", str(failing_http)])
    assert healthcheck.main() == 1
    assert "503" in capsys.readouterr().out
    monkeypatch.setattr(healthcheck, "container_command", lambda: ["imagine-bot"])
    assert healthcheck.main() == 0
