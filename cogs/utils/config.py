"""The bot's settings, read once from the environment (and `.env`) into one object.

Tests build a `BotConfig` directly, with an engine instance already loaded and a temporary
database, so nothing here is global. The token is kept out of `repr` so that no log line or error
message can ever show it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from engine.base import Engine
from engine.config import EngineConfig, load_dotenv_once
from engine.http_api import HttpApiSettings, read_api_keys
from engine.types import ImagineError

MIB = 1024 * 1024
FILTER_MODES = ("spoiler", "refuse")


class ConfigError(ImagineError):
    """A setting in the environment is malformed; the message names the variable."""


@dataclass
class BotConfig:
    token: str | None = field(default=None, repr=False)
    db_path: Path = Path("data/imagine.db")
    #: Where image files live; None lets storage put them next to the database.
    data_dir: Path | None = None
    engine_config: EngineConfig = field(default_factory=EngineConfig)
    #: An engine built by the caller (tests, embedding); the bot then neither builds nor closes it.
    engine: Engine | None = field(default=None, repr=False)
    #: Sync the commands to this guild only: instant, unlike a global sync.
    dev_guild: int | None = None
    sync_commands: bool = True
    #: Seconds between two progress edits of a job's message, and between two rounds of updating
    #: the places in the queue that waiting jobs show.
    progress_interval: float = 2.0
    user_running: int = 1
    user_waiting: int = 10
    max_queue: int = 100
    #: What to do with an image the engine flags as unsafe: post it behind a spoiler, or refuse it.
    filtered: str = "spoiler"
    #: Largest image prompt accepted, in bytes and in pixels (the decompression-bomb guard).
    max_input_bytes: int = 10 * MIB
    max_input_pixels: int = 4096 * 4096
    #: A permutation prompt making more jobs than this asks for confirmation first.
    confirm_permutations_over: int = 5
    #: Jobs left queued or running by a stop are run again at start (True) or shown as failed.
    resume_jobs: bool = True
    #: Seconds discord.py waits after READY for more servers before `on_ready`; None: its default
    #: (2 s). Tests against a fake Discord with one server set it low.
    guild_ready_timeout: float | None = None
    #: The HTTP image API inside the bot (`GET /?prompt=`): off while None; 0 takes any free port.
    http_port: int | None = None
    #: 127.0.0.1 keeps it to this machine; 0.0.0.0 (behind a proxy, or with keys) opens it up.
    http_host: str = "127.0.0.1"
    #: Seeded images are cached here; None: `http-cache/` next to the database.
    http_cache_dir: Path | None = None
    http_api_keys: tuple[str, ...] = field(default=(), repr=False)
    #: New images per HTTP client per minute, and how many it may ask for at once.
    http_rate: float = 20.0
    http_burst: int = 5
    #: HTTP jobs that may wait before new ones get 503 (Discord's own limits apply as well).
    http_queue: int = 8
    http_trust_forwarded: bool = False
    http_public_url: str = ""

    def http_settings(self) -> HttpApiSettings:
        """The in-bot API's settings, with the same meaning as `imagine serve-http`'s options."""
        return HttpApiSettings(
            cache_dir=self.http_cache_dir or self.db_path.parent / "http-cache",
            api_keys=self.http_api_keys,
            rate_per_minute=self.http_rate,
            burst=self.http_burst,
            queue_size=self.http_queue,
            trust_forwarded=self.http_trust_forwarded,
            server_url=self.http_public_url,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BotConfig:
        """Read every IMAGINE_* setting; `env=None` means the process environment plus `.env`."""
        if env is None:
            load_dotenv_once()
            env = dict(os.environ)
        filtered = env.get("IMAGINE_FILTERED", "spoiler").strip().lower() or "spoiler"
        if filtered not in FILTER_MODES:
            raise ConfigError(f"IMAGINE_FILTERED must be one of {', '.join(FILTER_MODES)}, not {filtered!r}.")
        data_dir = env.get("IMAGINE_DATA_DIR", "").strip()
        http_port = _number(env, "IMAGINE_HTTP_PORT", None, int, 0)
        if http_port is not None and http_port > 65535:
            raise ConfigError(f"IMAGINE_HTTP_PORT must be a port number up to 65535, not {http_port}.")
        http_cache = env.get("IMAGINE_HTTP_CACHE", "").strip()
        try:
            http_api_keys = read_api_keys(env.get("IMAGINE_HTTP_API_KEYS"), env.get("IMAGINE_HTTP_API_KEYS_FILE", "").strip())
        except ImagineError as error:
            raise ConfigError(f"IMAGINE_HTTP_API_KEYS_FILE: {error}") from None
        return cls(
            token=(env.get("DISCORD_TOKEN") or "").strip() or None,
            db_path=Path(env.get("IMAGINE_DB", "").strip() or "data/imagine.db"),
            data_dir=Path(data_dir) if data_dir else None,
            engine_config=EngineConfig.from_env(dict(env)),
            dev_guild=_number(env, "IMAGINE_DEV_GUILD", None, int, 1),
            sync_commands=_flag(env, "IMAGINE_SYNC_COMMANDS", True),
            progress_interval=_number(env, "IMAGINE_PROGRESS_INTERVAL", 2.0, float, 0.0),
            user_running=_number(env, "IMAGINE_USER_RUNNING", 1, int, 1),
            user_waiting=_number(env, "IMAGINE_USER_WAITING", 10, int, 0),
            max_queue=_number(env, "IMAGINE_MAX_QUEUE", 100, int, 0),
            filtered=filtered,
            max_input_bytes=int(_number(env, "IMAGINE_MAX_INPUT_MB", 10.0, float, 0.01) * MIB),
            max_input_pixels=_number(env, "IMAGINE_MAX_INPUT_PIXELS", 4096 * 4096, int, 64 * 64),
            confirm_permutations_over=_number(env, "IMAGINE_CONFIRM_OVER", 5, int, 0),
            resume_jobs=_flag(env, "IMAGINE_RESUME", True),
            http_port=http_port,
            http_host=env.get("IMAGINE_HTTP_HOST", "").strip() or "127.0.0.1",
            http_cache_dir=Path(http_cache) if http_cache else None,
            http_api_keys=http_api_keys,
            http_rate=_number(env, "IMAGINE_HTTP_RATE", 20.0, float, 0.0),
            http_burst=_number(env, "IMAGINE_HTTP_BURST", 5, int, 1),
            http_queue=_number(env, "IMAGINE_HTTP_QUEUE", 8, int, 0),
            http_trust_forwarded=_flag(env, "IMAGINE_HTTP_TRUST_FORWARDED", False),
            http_public_url=env.get("IMAGINE_HTTP_PUBLIC_URL", "").strip(),
        )


def _number(env: Mapping[str, str], name: str, default, kind: type, low: float):  # noqa: ANN001, ANN202
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise ConfigError(f"{name} must be a {'whole ' if kind is int else ''}number, not {text!r}.") from None
    if value < low:
        raise ConfigError(f"{name} must be at least {low:g}, not {text}.")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    text = env.get(name, "").strip().lower()
    if not text:
        return default
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1 or 0 (true or false), not {text!r}.")
