"""The image's HEALTHCHECK: asks whichever server the container runs whether it answers.

One image runs the bot, the gRPC engine server, the HTTP API or a one-off `imagine generate`, so
the check reads the container's command line (PID 1, tini, and the command after it) to know what
to ask. It imports nothing of imagine: a check must stay quick and small next to a loaded model.
  serve-http  GET /healthz on its port must answer 200;
  serve-grpc  its port must accept a connection;
  otherwise   the process is alive, which is all a running container already proves.
Exit status 0 is healthy, 1 unhealthy (Docker's convention).
"""

from __future__ import annotations

import socket
import sys
import urllib.request
from pathlib import Path

PORTS = {"serve-http": 8080, "serve-grpc": 50051}
TIMEOUT_S = 5.0


def container_command(cmdline: Path = Path("/proc/1/cmdline")) -> list[str]:
    return [arg for arg in cmdline.read_bytes().decode(errors="replace").split("\0") if arg]


def option(args: list[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE`, the last one winning as in argparse."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.partition("=")[2]
    return value


def check(args: list[str]) -> str | None:
    """None when healthy, else why not."""
    server = next((arg for arg in args if arg in PORTS), None)
    if server is None:
        return None
    port = int(option(args, "--port") or PORTS[server])
    try:
        if server == "serve-http":
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=TIMEOUT_S) as reply:
                return None if reply.status == 200 else f"/healthz answered {reply.status}"
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S):
            return None
    except OSError as error:
        return f"{server} on port {port} does not answer: {error}"


def main() -> int:
    problem = check(container_command())
    if problem:
        print(problem)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
