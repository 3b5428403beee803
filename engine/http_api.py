"""`imagine serve-http`: `GET /?prompt=<text>` answers with a PNG, for Slack, Markdown and <img> tags.

An image URL is the whole API, so it must behave like a static file where it can: with a seed the
image is deterministic, so it is computed once, kept in a content-addressed disk cache, and served
with an ETag and `immutable` caching; without a seed every view draws a new picture (`no-store`).
Parameters go through the same parser as Discord (`engine.params.parse_prompt`), so `ar=16:9` here
means what `--ar 16:9` means there.

`create_app` builds the aiohttp application around any Engine, so the bot can mount it in its own
process (one engine, one queue: pass the bot's queue as `run`; IMAGINE_HTTP_PORT does that), or
`imagine serve-http` runs it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import logging
import math
import os
import random
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from engine.base import Engine
from engine.grid import make_grid
from engine.metadata import encode_png
from engine.params import parse_prompt
from engine.styles import STYLE_NAMES
from engine.types import (
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_STEPS,
    ContentFiltered,
    EngineUnavailable,
    FinishReason,
    GenerationRequest,
    ImageResult,
    ImagineError,
    PromptError,
)

log = logging.getLogger(__name__)

#: `run(request, client)`: makes the images; `client` is who asked (an address or a hashed API key),
#: so a shared queue can take turns between clients.
Runner = Callable[[GenerationRequest, str], Awaitable[list[ImageResult]]]

DEFAULT_PORT = 8080
IMMUTABLE = "public, max-age=31536000, immutable"
CACHE_VERSION = 1
PARAMETERS = ("prompt", "seed", "ar", "steps", "cfg", "negative", "style", "grid", "key")
#: The parser's names for what it complains about, as this API's query parameters.
QUERY_NAME = {"no": "negative", "ar": "ar", "seed": "seed", "steps": "steps", "cfg": "cfg", "style": "style", "prompt": "prompt"}
_FLAG_LIKE = re.compile(r"(?<!\S)[-\u2013\u2014]+[A-Za-z]")
_TRUE, _FALSE = ("1", "true", "yes"), ("", "0", "false", "no")
#: A 6000-character prompt, percent-encoded, is far over aiohttp's 8 KiB request line.
HANDLER_ARGS = {"max_line_size": 128 * 1024, "max_field_size": 16 * 1024}


@dataclass
class HttpApiSettings:
    cache_dir: Path = Path("data/http-cache")
    api_keys: tuple[str, ...] = ()
    #: Generations per client per minute (cache hits and 304s are free), and the burst allowed.
    rate_per_minute: float = 20.0
    burst: int = 5
    #: Jobs that may wait behind the running ones before new work gets 503.
    queue_size: int = 8
    #: Behind a reverse proxy, identify clients by the first X-Forwarded-For address.
    trust_forwarded: bool = False
    server_url: str = ""


class ApiError(Exception):
    """A refusal with its HTTP status; the body is JSON naming the parameter when there is one."""

    def __init__(self, status: int, message: str, parameter: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.parameter = parameter
        self.retry_after = retry_after

    def response(self) -> web.Response:
        body: dict[str, Any] = {"error": str(self)}
        if self.parameter:
            body["parameter"] = self.parameter
        headers = {"Cache-Control": "no-store"}
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return web.json_response(body, status=self.status, headers=headers)


# --- parameters -----------------------------------------------------------------------------------


class _SeedDraw(random.Random):
    """Notices whether the parser had to draw a seed, i.e. whether the request is unseeded."""

    drew = False

    def randint(self, a: int, b: int) -> int:
        self.drew = True
        return super().randint(a, b)


@dataclass(frozen=True)
class ImageQuery:
    request: GenerationRequest
    grid: bool
    seeded: bool

    def cache_key(self, engine: Engine) -> str:
        """Everything that decides the bytes: the full request, the grid flag, the engine and model."""
        identity = {
            "v": CACHE_VERSION,
            "request": json.loads(self.request.to_json()),
            "grid": self.grid,
            "engine": engine.describe().get("engine"),
            "model": engine.profile(self.request.model).name,
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _single(query: Any, name: str) -> str | None:
    values = query.getall(name, [])
    if len(values) > 1:
        raise ApiError(400, f"{name} is given {len(values)} times; give it once.", name)
    return values[0] if values else None


def parse_query(query: Any, engine: Engine) -> ImageQuery:
    """Query parameters -> the prompt text Discord users would type -> the shared parser."""
    for name in query:
        if name not in PARAMETERS:
            raise ApiError(400, f"Unknown parameter {name[:40]!r}. Allowed: {', '.join(PARAMETERS)}.", name[:40])
    prompt = (_single(query, "prompt") or "").strip()
    if not prompt:
        raise ApiError(400, "prompt is required: describe what to draw, e.g. /?prompt=a+fox+in+snow.", "prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ApiError(400, f"prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}.", "prompt")
    parts = [prompt]
    for name, flag in (("ar", "--ar"), ("seed", "--seed"), ("steps", "--steps"), ("cfg", "--cfg"), ("style", "--style")):
        value = _single(query, name)
        if value is None:
            continue
        if not value.strip() or len(value.split()) > 1 or _FLAG_LIKE.search(value):
            raise ApiError(400, f"{name} {value[:40]!r} is not a single value.", name)
        parts.append(f"{flag} {value.strip()}")
    negative = _single(query, "negative")
    if negative is not None and negative.strip():
        if _FLAG_LIKE.search(negative):
            raise ApiError(400, "negative must not contain --parameters.", "negative")
        parts.append(f"--no {negative.strip()}")
    grid_text = (_single(query, "grid") or "").strip().lower()
    if grid_text not in _TRUE + _FALSE:
        raise ApiError(400, f"grid must be 1 or 0, not {grid_text[:20]!r}.", "grid")
    grid = grid_text in _TRUE
    draw = _SeedDraw(secrets.randbits(64))
    try:
        request = parse_prompt(" ".join(parts), engine.profile, num_images=4 if grid else 1, rng=draw)
    except PromptError as error:
        raise ApiError(400, str(error), QUERY_NAME.get(error.parameter or "", "prompt")) from None
    return ImageQuery(request, grid, seeded=not draw.drew)


# --- rate limit, cache, queue ---------------------------------------------------------------------


class RateLimiter:
    """A token bucket per client: `burst` at once, then `rate_per_minute`."""

    def __init__(self, rate_per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate_per_minute / 60.0
        self.burst = max(1, burst)
        self.clock = clock
        self.buckets: dict[str, tuple[float, float]] = {}

    def take(self, client: str) -> float:
        """0 when allowed (and a token is spent), else the seconds until the next token."""
        now = self.clock()
        tokens, last = self.buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens >= 1:
            self.buckets[client] = (tokens - 1, now)
            self._prune(now)
            return 0.0
        self.buckets[client] = (tokens, now)
        return (1 - tokens) / self.rate if self.rate > 0 else 3600.0

    def _prune(self, now: float) -> None:
        if len(self.buckets) > 10_000:  # forget clients whose buckets have refilled
            full = [c for c, (t, last) in self.buckets.items() if t + (now - last) * self.rate >= self.burst]
            for client in full:
                del self.buckets[client]


class DiskCache:
    """PNG bytes by key, written atomically, so a crash never leaves half an image to serve."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.png"

    def get(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except OSError:
            return None

    def put(self, key: str, data: bytes) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, path)


@dataclass
class Rendered:
    png: bytes
    seeds: tuple[int, ...]
    finish_reason: FinishReason


def render(query: ImageQuery, results: list[ImageResult]) -> Rendered:
    """One image, or the 2x2 grid Discord shows; filtered if any image was."""
    filtered = any(r.finish_reason is FinishReason.FILTERED for r in results)
    reason = FinishReason.FILTERED if filtered else FinishReason.OK
    seeds = tuple(r.seed for r in results)
    if not query.grid:
        return Rendered(results[0].png, seeds, reason)
    return Rendered(encode_png(make_grid([r.png for r in results]), results[0].parameters), seeds, reason)


class ImageApi:
    """The handlers and the state they share: cache, rate limiter, queue, in-flight generations."""

    def __init__(self, engine: Engine, settings: HttpApiSettings, run: Runner | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.run = run or self._run_on_engine
        self.cache = DiskCache(settings.cache_dir)
        self.limiter = RateLimiter(settings.rate_per_minute, settings.burst)
        self.api_keys = tuple(key.encode() for key in settings.api_keys if key)
        self.capacity = max(1, engine.slots) + max(0, settings.queue_size)
        # Our own queue feeds the engine one job per slot; an outside queue (`run`) schedules
        # itself, so every admitted job goes straight to it and takes its turn there.
        self.slots = asyncio.Semaphore(max(1, engine.slots) if run is None else self.capacity)
        self.pending = 0
        self.inflight: dict[str, asyncio.Task[Rendered]] = {}
        self.seconds_per_job = 10.0  # a running estimate, for Retry-After

    # --- checks ---
    def _client(self, request: web.Request, key: str | None) -> str:
        if key:
            return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]
        forwarded = request.headers.get("X-Forwarded-For", "") if self.settings.trust_forwarded else ""
        return forwarded.split(",")[0].strip() or request.remote or "unknown"

    def _key(self, request: web.Request) -> str | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else None
        key = key or request.query.get("key")
        if not self.api_keys:
            return None
        if not key or not any(hmac.compare_digest(key.encode(), allowed) for allowed in self.api_keys):
            raise ApiError(401, "A valid API key is required: add &key=... or an 'Authorization: Bearer' header.", "key")
        return key

    def _admit(self, client: str) -> None:
        """Reserve a place in the queue for a new generation, or refuse it (429 or 503)."""
        if self.pending >= self.capacity:
            estimate = self.seconds_per_job * self.pending / max(1, self.engine.slots)
            raise ApiError(503, "The image queue is full; try again shortly.", retry_after=estimate)
        wait = self.limiter.take(client)
        if wait > 0:
            raise ApiError(429, f"Too many new images from this client; try again in {math.ceil(wait)} s.", retry_after=wait)
        self.pending += 1  # released when the generation ends, in _generate

    # --- handlers ---
    async def image(self, request: web.Request) -> web.StreamResponse:
        try:
            key = self._key(request)
            query = parse_query(request.query, self.engine)
            client = self._client(request, key)
            if not query.seeded:
                self._admit(client)
                rendered = await self._generate(None, query, client)
                return self._png(rendered, {"Cache-Control": "no-store"})
            digest = query.cache_key(self.engine)
            headers = {"ETag": f'"{digest}"', "Cache-Control": IMMUTABLE}
            if _matches(request.headers.get("If-None-Match"), digest):
                return web.Response(status=304, headers=headers)
            cached = await asyncio.to_thread(self.cache.get, digest)
            if cached is not None:
                return web.Response(body=cached, content_type="image/png", headers={**headers, "X-Cache": "hit"})
            task = self.inflight.get(digest)
            if task is None:
                self._admit(client)
                task = self._start_shared(digest, query, client)
            rendered = await asyncio.shield(task)
            return self._png(rendered, {**headers, "X-Cache": "miss"})
        except ApiError as error:
            return error.response()

    def _png(self, rendered: Rendered, headers: dict[str, str]) -> web.Response:
        headers = {**headers, "X-Seed": ",".join(str(s) for s in rendered.seeds), "X-Finish-Reason": rendered.finish_reason.value}
        return web.Response(body=rendered.png, content_type="image/png", headers=headers)

    def _start_shared(self, digest: str, query: ImageQuery, client: str) -> asyncio.Task[Rendered]:
        """One generation for every identical request that arrives while it runs (queued as the first asker's)."""
        task = asyncio.create_task(self._generate(digest, query, client))
        self.inflight[digest] = task
        task.add_done_callback(lambda _: self.inflight.pop(digest, None))
        return task

    async def _run_on_engine(self, request: GenerationRequest, client: str) -> list[ImageResult]:
        return await self.engine.generate(request)

    async def _generate(self, digest: str | None, query: ImageQuery, client: str) -> Rendered:
        try:
            async with self.slots:
                started = time.monotonic()
                results = await self.run(query.request, client)
                self.seconds_per_job = 0.8 * self.seconds_per_job + 0.2 * (time.monotonic() - started)
        except PromptError as error:
            raise ApiError(400, str(error), QUERY_NAME.get(error.parameter or "", "prompt")) from None
        except ContentFiltered as error:
            raise ApiError(403, str(error), "prompt") from None
        except EngineUnavailable as error:
            raise ApiError(503, str(error), retry_after=30) from None
        except ImagineError as error:
            raise ApiError(503, str(error)) from None
        finally:
            self.pending -= 1
        rendered = await asyncio.to_thread(render, query, results)  # grids decode and encode PNGs
        if digest is not None:
            await asyncio.to_thread(self.cache.put, digest, rendered.png)
        return rendered

    async def healthz(self, request: web.Request) -> web.Response:
        body = {"status": "ok", "engine": self.engine.describe(), "pending": self.pending, "capacity": self.capacity}
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document(self.engine, self.settings.server_url, bool(self.api_keys)))


def _matches(if_none_match: str | None, digest: str) -> bool:
    if not if_none_match:
        return False
    tags = [tag.strip().removeprefix("W/").strip('"') for tag in if_none_match.split(",")]
    return "*" in tags or digest in tags


@web.middleware
async def _json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Every failure is JSON and no traceback leaves the server."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return web.json_response({"error": error.reason}, status=error.status)
    except Exception:
        log.exception("request %s %s failed", request.method, request.path)
        return web.json_response({"error": "Internal error; the server log has the details."}, status=500)


API_KEY: web.AppKey[ImageApi] = web.AppKey("imagine.api", ImageApi)


def create_app(
    engine: Engine, settings: HttpApiSettings | None = None, *, run: Runner | None = None, manage_engine: bool = False
) -> web.Application:
    """The image API as an aiohttp app.

    `run(request, client)` replaces `engine.generate` (the bot passes its queue, so the API and
    Discord share one queue and take turns); `manage_engine` starts and closes the engine with the app (standalone use). Serve it with
    `access_log_class=AccessLogger`: the default access log prints query strings, API keys included.
    """
    api = ImageApi(engine, settings or HttpApiSettings(), run)
    app = web.Application(middlewares=[_json_errors])
    app[API_KEY] = api
    app.router.add_get("/", api.image)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/openapi.json", api.openapi)
    if manage_engine:
        async def start(_: web.Application) -> None:
            await engine.start()

        async def close(_: web.Application) -> None:
            await engine.close()

        app.on_startup.append(start)
        app.on_cleanup.append(close)
    return app


class AccessLogger(AbstractAccessLogger):
    """Method, path, status and time only: the query string may carry an API key."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s %.3fs", request.method, request.path, response.status, time)


# --- OpenAPI --------------------------------------------------------------------------------------


def openapi_document(engine: Engine, server_url: str = "", keyed: bool = False) -> dict[str, Any]:
    error = {"$ref": "#/components/schemas/Error"}

    def json_error(description: str, retry: bool = False) -> dict[str, Any]:
        response: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": error}}}
        if retry:
            response["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
        return response

    parameters = [
        {"name": "prompt", "in": "query", "required": True, "description": "What to draw; Midjourney-style --parameters allowed.",
         "schema": {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS}},
        {"name": "seed", "in": "query", "description": "Same seed, same image (cached, immutable). Without it every view is new.",
         "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SEED}},
        {"name": "ar", "in": "query", "description": "Aspect ratio W:H, from 1:4 to 4:1.", "schema": {"type": "string", "pattern": "^[1-9][0-9]{0,3}:[1-9][0-9]{0,3}$"}},
        {"name": "steps", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_STEPS}},
        {"name": "cfg", "in": "query", "description": "Guidance scale.", "schema": {"type": "number", "minimum": 0, "maximum": 30}},
        {"name": "negative", "in": "query", "description": "What to leave out.", "schema": {"type": "string"}},
        {"name": "style", "in": "query", "schema": {"type": "string", "enum": list(STYLE_NAMES)}},
        {"name": "grid", "in": "query", "description": "1: the 2x2 grid of four images.", "schema": {"type": "string", "enum": ["0", "1"]}},
    ]
    if keyed:
        parameters.append({"name": "key", "in": "query", "description": "API key (or an Authorization: Bearer header).", "schema": {"type": "string"}})
    document: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": "imagine image API", "version": "1", "description": f"Images from {engine.describe().get('model')}."},
        "paths": {
            "/": {
                "get": {
                    "summary": "An image for a prompt",
                    "operationId": "image",
                    "parameters": parameters,
                    "responses": {
                        "200": {
                            "description": "The PNG (one image, or a 2x2 grid).",
                            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                            "headers": {
                                "ETag": {"schema": {"type": "string"}},
                                "Cache-Control": {"schema": {"type": "string"}},
                                "X-Seed": {"schema": {"type": "string"}, "description": "the seeds used, comma-separated"},
                            },
                        },
                        "304": {"description": "Not modified (If-None-Match matched the ETag)."},
                        "400": json_error("A parameter is wrong; `parameter` names it."),
                        "401": json_error("A valid API key is required."),
                        "403": json_error("The prompt was refused."),
                        "429": json_error("Rate limited.", retry=True),
                        "503": json_error("The queue is full or the engine is unavailable.", retry=True),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness and queue depth",
                    "operationId": "healthz",
                    "responses": {"200": {"description": "Up.", "content": {"application/json": {"schema": {"type": "object"}}}}},
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "responses": {"200": {"description": "OpenAPI 3.0", "content": {"application/json": {"schema": {"type": "object"}}}}},
                }
            },
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}, "parameter": {"type": "string"}},
                }
            }
        },
    }
    if server_url:
        document["servers"] = [{"url": server_url}]
    return document


# --- the command ----------------------------------------------------------------------------------


def read_api_keys(env_value: str | None, path: str | None) -> tuple[str, ...]:
    """Keys from IMAGINE_HTTP_API_KEYS (comma-separated) and/or a file, one per line (never argv)."""
    keys = [key.strip() for key in (env_value or "").split(",") if key.strip()]
    if path:
        try:
            keys += [line.strip() for line in Path(path).read_text().splitlines() if line.strip() and not line.startswith("#")]
        except OSError as error:
            raise ImagineError(f"Cannot read the API keys file {path!r}: {error.strerror}.") from error
    return tuple(keys)


def settings_from_args(args: argparse.Namespace, env: dict[str, str] | Iterable[tuple[str, str]] | None = None) -> HttpApiSettings:
    env = dict(env if env is not None else os.environ)
    return HttpApiSettings(
        cache_dir=Path(args.cache_dir or env.get("IMAGINE_HTTP_CACHE", "data/http-cache")),
        api_keys=read_api_keys(env.get("IMAGINE_HTTP_API_KEYS"), args.api_keys_file),
        rate_per_minute=args.rate,
        burst=args.burst,
        queue_size=args.queue,
        trust_forwarded=args.trust_forwarded,
        server_url=args.public_url or "",
    )


def cmd_serve_http(args: argparse.Namespace) -> int:
    from engine.config import EngineConfig, parse_blocklist
    from engine.factory import build_engine

    logging.getLogger("engine").setLevel(logging.INFO)
    logging.getLogger("aiohttp.access").setLevel(logging.INFO)
    config = EngineConfig.from_env()
    if args.blocklist is not None:
        config.blocklist = parse_blocklist(args.blocklist)
    engine = build_engine(config)
    app = create_app(engine, settings_from_args(args), manage_engine=True)
    print(f"loading {engine.profile().name} ...", flush=True)
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        access_log_class=AccessLogger,
        **HANDLER_ARGS,
        print=lambda _: print(f"serving images on http://{args.host}:{args.port}/?prompt=...", flush=True),
    )
    return 0


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve-http",
        help="serve GET /?prompt=... as PNG images (the engine is IMAGINE_ENGINE's)",
        description="API keys come from IMAGINE_HTTP_API_KEYS (comma-separated) or --api-keys-file.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--cache-dir", help="where seeded images are cached (default IMAGINE_HTTP_CACHE or data/http-cache)")
    parser.add_argument("--rate", type=float, default=20.0, help="new images per client per minute (default 20)")
    parser.add_argument("--burst", type=int, default=5, help="new images a client may ask for at once (default 5)")
    parser.add_argument("--queue", type=int, default=8, help="jobs that may wait before 503 (default 8)")
    parser.add_argument("--trust-forwarded", action="store_true", help="identify clients by X-Forwarded-For (behind a proxy)")
    parser.add_argument("--public-url", help="the URL clients use, for /openapi.json")
    parser.add_argument("--api-keys-file", help="file with one accepted API key per line")
    parser.add_argument("--blocklist", help="comma-separated words whose prompts get a grey placeholder")
    parser.set_defaults(func=cmd_serve_http)
