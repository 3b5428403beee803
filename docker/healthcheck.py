"""The image's HEALTHCHECK: asks whichever server the container runs whether it answers.

One image runs the bot, the gRPC engine server, the HTTP API or a one-off `imagine generate`, so
the check reads the container's command line (PID 1, tini, and the command after it) to know what
to ask. It imports nothing of imagine: a check must stay quick and small next to a loaded model.
  serve-http  GET /healthz on its port must answer 200;
  serve-grpc  its port must accept a connection;
  imagine-bot with IMAGINE_HTTP_PORT set: its image API's /healthz must answer 200;
  otherwise   the process is alive, which is all a running container already proves.
Exit status 0 is healthy, 1 unhealthy (Docker's convention).
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.request
from pathlib import Path

PORTS = {"serve-http": 8080, "serve-grpc": 50051}
BOT_COMMANDS = ("imagine-bot", "bot.py")
WILDCARDS = ("0.0.0.0", "::", "[::]")
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


def check(args: list[str], env: dict[str, str] | None = None) -> str | None:
    """None when healthy, else why not."""
    env = dict(os.environ) if env is None else env
    host = "127.0.0.1"
    server = next((arg for arg in args if arg in PORTS), None)
    if server is not None:
        port = option(args, "--port") or str(PORTS[server])
        # --host of a single address other than the wildcard is where the server listens.
        address = option(args, "--host")
        host = address if address and address not in WILDCARDS else host
    elif any(Path(arg).name in BOT_COMMANDS for arg in args) and env.get("IMAGINE_HTTP_PORT", "").strip() not in ("", "0"):
        server, port = "the bot's image API", env["IMAGINE_HTTP_PORT"].strip()
        address = env.get("IMAGINE_HTTP_HOST", "").strip()
        host = address if address and address not in WILDCARDS else host
    else:
        return None
    try:
        if server == "serve-grpc":
            with socket.create_connection((host, int(port)), timeout=TIMEOUT_S):
                return None
        with urllib.request.urlopen(f"http://{host}:{int(port)}/healthz", timeout=TIMEOUT_S) as reply:
            return None if reply.status == 200 else f"/healthz answered {reply.status}"
    except (OSError, ValueError) as error:
        return f"{server} on {host}:{port} does not answer: {error}"


def main() -> int:
    problem = check(container_command())
    if problem:
        print(problem)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
