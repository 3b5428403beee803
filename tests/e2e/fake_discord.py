"""A small fake Discord on loopback, so tests can drive the real discord.py transport.

simcord replaces discord.py's HTTP and gateway layers, so it cannot show that the bot survives
what only the wire does: multipart uploads, the exact callback payloads discord.py parses, 429s.
This fake speaks just enough of Discord's REST API (v10) and gateway for one bot in one guild:
login, command sync, interactions (slash commands, component clicks, modal submits) and their
callbacks, webhook followups and edits, plain channel messages. It keeps the messages it is sent,
so a click can carry the full message the way Discord's does, and it records every request for
assertions.

Use it with `point_discord_at(fake)`, which patches `discord.http.Route.BASE` and
`discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY` and puts them back afterwards.

What it deliberately does like Discord, because discord.py depends on it:
- JSON responses carry `Content-Type: application/json` exactly (with a charset discord.py reads
  them as text);
- the interaction callback answers `?with_response=1` with 200 and `{"interaction", "resource"}`;
- a 429 carries `retry_after` in the body and a `Via` header (without it discord.py assumes a
  Cloudflare ban and gives up), plus the `X-RateLimit-*` headers;
- an interaction can be answered once (a second callback is 400, code 40060), and an unknown
  interaction or message is 404;
- the gateway sends zlib-stream frames when the client asks for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import re
import secrets
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

API_PREFIX = "/api/v10"
GATEWAY_PATH = "/gateway"
DISCORD_EPOCH_MS = 1420070400000
#: Discord's default upload limit for an interaction, sent as `attachment_size_limit`.
DEFAULT_ATTACHMENT_LIMIT = 10 * 1024 * 1024
#: What a member of the fake guild may do (View Channel, Send Messages, Attach Files, Use Application Commands...).
MEMBER_PERMISSIONS = str((1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16) | (1 << 31))
ALL_PERMISSIONS = str((1 << 41) - 1)

# Interaction types, callback types and option types from Discord's documentation.
PING, APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 1, 2, 3, 4, 5
CALLBACK_PONG, CALLBACK_MESSAGE, CALLBACK_DEFERRED_MESSAGE = 1, 4, 5
CALLBACK_DEFERRED_UPDATE, CALLBACK_UPDATE, CALLBACK_AUTOCOMPLETE, CALLBACK_MODAL = 6, 7, 8, 9
STRING_OPTION, INTEGER_OPTION, BOOLEAN_OPTION, NUMBER_OPTION, ATTACHMENT_OPTION = 3, 4, 5, 10, 11
EPHEMERAL_FLAG, LOADING_FLAG = 1 << 6, 1 << 7


@dataclass
class UploadedFile:
    """One `files[n]` part of a multipart request."""

    field: str
    filename: str
    content_type: str
    data: bytes


@dataclass
class RecordedRequest:
    """A request the fake answered, with the status it answered with."""

    method: str
    #: The API path without the `/api/v10` prefix, e.g. `/interactions/1/abc/callback`.
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    #: The JSON body, or the `payload_json` part of a multipart body; None when there was neither.
    json: Any
    files: list[UploadedFile]
    status: int
    #: The JSON the fake answered with (None for an empty answer).
    response: Any = None
    at: float = field(default_factory=time.monotonic)

    @property
    def multipart(self) -> bool:
        return self.headers.get("Content-Type", "").startswith("multipart/")

    def __str__(self) -> str:
        extra = f" files={[f.filename for f in self.files]}" if self.files else ""
        return f"{self.method} {self.path} -> {self.status}{extra}"


@dataclass
class RateLimitRule:
    method: str
    path: re.Pattern[str]
    remaining: int
    retry_after: float
    is_global: bool
    via: bool
    when: Callable[[RecordedRequest], bool] | None = None
    #: The requests this rule answered with a 429.
    hits: list[RecordedRequest] = field(default_factory=list)


@dataclass
class InteractionState:
    """What the fake remembers of an interaction it dispatched, to check and answer its callbacks."""

    id: int
    token: str
    type: int
    channel_id: int
    guild_id: int | None
    payload: dict[str, Any]
    #: The message a component or modal came from (the one an UPDATE edits).
    source_message_id: int | None = None
    callback_type: int | None = None
    original_message_id: int | None = None


class FakeDiscord:
    """Discord's REST API and gateway for one bot in one guild, on 127.0.0.1 with an ephemeral port."""

    def __init__(
        self,
        *,
        token: str = "fake-bot-token",
        application_id: int = 900000000000000001,
        bot_id: int | None = None,
        guild_id: int = 900000000000000100,
        channel_id: int = 900000000000000200,
        user_id: int = 900000000000000300,
        attachment_size_limit: int = DEFAULT_ATTACHMENT_LIMIT,
    ) -> None:
        self.token = token
        self.application_id = application_id
        self.bot_id = bot_id or application_id
        self.guild_id = guild_id
        self.channel_id = channel_id
        self.user_id = user_id
        self.attachment_size_limit = attachment_size_limit

        self.requests: list[RecordedRequest] = []
        #: Registered application commands by scope: None for global, else the guild id.
        self.commands: dict[int | None, list[dict[str, Any]]] = {}
        self.messages: dict[int, dict[str, Any]] = {}
        self.interactions: dict[str, InteractionState] = {}
        #: Everything sent over the gateway by the client (HEARTBEAT, IDENTIFY, PRESENCE...).
        self.gateway_received: list[dict[str, Any]] = []
        #: The `compress` query of each gateway connection ("" when none was asked for).
        self.gateway_compression: list[str] = []
        self.identified = asyncio.Event()
        self.ready_sent = asyncio.Event()

        self._ids = itertools.count(1)
        self._attachments: dict[int, tuple[str, bytes]] = {}
        #: Ids of the attachments downloaded from the fake's CDN, in order.
        self.downloads: list[int] = []
        self._rate_limits: list[RateLimitRule] = []
        self._sockets: list[_GatewayConnection] = []
        self._sequence = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._routes = self._route_table()

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get(GATEWAY_PATH, self._gateway)
        app.router.add_get("/attachments/{attachment_id}/{filename}", self._serve_attachment)
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self._api)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        for connection in list(self._sockets):
            await connection.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{GATEWAY_PATH}"

    # --- test controls --------------------------------------------------------------------------

    def rate_limit(
        self,
        method: str,
        path: str,
        *,
        times: int = 1,
        retry_after: float = 0.3,
        is_global: bool = False,
        via: bool = True,
        when: Callable[[RecordedRequest], bool] | None = None,
    ) -> RateLimitRule:
        """Answer the next `times` requests whose path fully matches the regex `path` with a 429.

        `when` narrows it further (e.g. only the request that uploads a PNG); `via=False` leaves
        out the `Via` header, which discord.py takes for a Cloudflare ban.
        """
        rule = RateLimitRule(method.upper(), re.compile(path), times, retry_after, is_global, via, when)
        self._rate_limits.append(rule)
        return rule

    def find(
        self, method: str, path: str, *, status: int | None = None, since: int = 0
    ) -> list[RecordedRequest]:
        """The recorded requests (from index `since`) whose method matches and path fully matches the regex."""
        pattern = re.compile(path)
        return [
            r
            for r in self.requests[since:]
            if r.method == method.upper()
            and pattern.fullmatch(r.path)
            and (status is None or r.status == status)
        ]

    async def wait_for(
        self,
        method: str,
        path: str,
        *,
        status: int | None = None,
        since: int = 0,
        predicate: Callable[[RecordedRequest], bool] | None = None,
        within: float = 10.0,
    ) -> RecordedRequest:
        """The first matching request, waiting for it; TimeoutError lists what did arrive."""
        try:
            async with asyncio.timeout(within):
                while True:
                    for request in self.find(method, path, status=status, since=since):
                        if predicate is None or predicate(request):
                            return request
                    await asyncio.sleep(0.01)
        except TimeoutError:
            raise TimeoutError(
                f"no {method} {path} (status {status}) within {within}s; the fake got:\n" + self.describe()
            ) from None

    def describe(self) -> str:
        return "\n".join(f"  {r}" for r in self.requests) or "  (no requests)"

    async def wait_until_ready(self, within: float = 10.0) -> None:
        """Until a client identified and got READY and GUILD_CREATE."""
        async with asyncio.timeout(within):
            await self.ready_sent.wait()

    def add_attachment(self, data: bytes, filename: str, content_type: str = "image/png") -> dict[str, Any]:
        """An attachment the fake serves, in the form an ATTACHMENT option's `resolved` entry takes."""
        attachment_id = self._snowflake()
        self._attachments[attachment_id] = (content_type, data)
        return self._attachment_payload(attachment_id, filename, len(data), content_type)

    async def send_command(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        user_id: int | None = None,
        in_guild: bool = True,
    ) -> InteractionState:
        """Dispatch INTERACTION_CREATE for a slash command as a user would run it.

        Option types come from the registered command (so the call reads like the user's input);
        an attachment option takes the dict `add_attachment` returned.
        """
        command = self._registered(name)
        declared = {o["name"]: o for o in command.get("options", [])}
        data: dict[str, Any] = {"id": command["id"], "name": name, "type": command.get("type", 1)}
        resolved_attachments: dict[str, Any] = {}
        sent_options = []
        for key, value in (options or {}).items():
            kind = declared.get(key, {}).get("type", STRING_OPTION)
            if kind == ATTACHMENT_OPTION:
                resolved_attachments[str(value["id"])] = value
                value = str(value["id"])
            sent_options.append({"name": key, "type": kind, "value": value})
        if sent_options:
            data["options"] = sent_options
        if resolved_attachments:
            data["resolved"] = {"attachments": resolved_attachments}
        return await self._dispatch_interaction(APPLICATION_COMMAND, data, user_id=user_id, in_guild=in_guild)

    async def click(
        self,
        custom_id: str,
        message_id: int,
        *,
        values: list[str] | None = None,
        user_id: int | None = None,
    ) -> InteractionState:
        """Dispatch a component interaction (a button, or a select when `values` is given) on a stored message."""
        message = self._stored(message_id)
        known = {
            c.get("custom_id") for row in message.get("components", []) for c in row.get("components", [])
        }
        if custom_id not in known:
            raise AssertionError(
                f"message {message_id} has no component {custom_id!r}; it has {sorted(map(str, known))}"
            )
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": 2 if values is None else 3}
        if values is not None:
            data["values"] = values
        in_guild = message.get("guild_id") is not None
        return await self._dispatch_interaction(
            MESSAGE_COMPONENT, data, user_id=user_id, in_guild=in_guild, message=message
        )

    async def submit_modal(
        self,
        custom_id: str,
        values: dict[str, str],
        *,
        message_id: int | None = None,
        user_id: int | None = None,
    ) -> InteractionState:
        """Dispatch a modal submit with one text input per `values` entry."""
        rows = [
            {"type": 1, "components": [{"type": 4, "custom_id": k, "value": v}]} for k, v in values.items()
        ]
        message = self._stored(message_id) if message_id is not None else None
        return await self._dispatch_interaction(
            MODAL_SUBMIT, {"custom_id": custom_id, "components": rows}, user_id=user_id, message=message
        )

    def original_message(self, interaction: InteractionState) -> dict[str, Any] | None:
        if interaction.original_message_id is None:
            return None
        return self.messages.get(interaction.original_message_id)

    # --- REST -----------------------------------------------------------------------------------

    def _route_table(self) -> list[tuple[str, re.Pattern[str], Callable[..., Any]]]:
        table = [
            ("GET", r"/users/@me", self._get_me),
            ("GET", r"/oauth2/applications/@me", self._get_application),
            ("GET", r"/applications/@me", self._get_application),
            ("GET", r"/gateway", self._get_gateway),
            ("GET", r"/gateway/bot", self._get_gateway_bot),
            ("PUT", r"/applications/(?P<app>\d+)/commands", self._put_commands),
            ("GET", r"/applications/(?P<app>\d+)/commands", self._get_commands),
            ("PUT", r"/applications/(?P<app>\d+)/guilds/(?P<guild>\d+)/commands", self._put_commands),
            ("GET", r"/applications/(?P<app>\d+)/guilds/(?P<guild>\d+)/commands", self._get_commands),
            ("POST", r"/interactions/(?P<id>\d+)/(?P<token>[^/]+)/callback", self._callback),
            ("POST", r"/webhooks/(?P<app>\d+)/(?P<token>[^/]+)", self._followup),
            (
                "GET",
                r"/webhooks/(?P<app>\d+)/(?P<token>[^/]+)/messages/(?P<message>@original|\d+)",
                self._get_webhook_message,
            ),
            (
                "PATCH",
                r"/webhooks/(?P<app>\d+)/(?P<token>[^/]+)/messages/(?P<message>@original|\d+)",
                self._edit_webhook_message,
            ),
            (
                "DELETE",
                r"/webhooks/(?P<app>\d+)/(?P<token>[^/]+)/messages/(?P<message>@original|\d+)",
                self._delete_webhook_message,
            ),
            ("GET", r"/channels/(?P<channel>\d+)", self._get_channel),
            ("POST", r"/channels/(?P<channel>\d+)/messages", self._create_channel_message),
            ("GET", r"/channels/(?P<channel>\d+)/messages/(?P<message>\d+)", self._get_channel_message),
            ("PATCH", r"/channels/(?P<channel>\d+)/messages/(?P<message>\d+)", self._edit_channel_message),
            ("DELETE", r"/channels/(?P<channel>\d+)/messages/(?P<message>\d+)", self._delete_channel_message),
            ("POST", r"/users/@me/channels", self._create_dm),
        ]
        return [(method, re.compile(pattern), handler) for method, pattern, handler in table]

    async def _api(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        body, files = await _read_body(request)
        recorded = RecordedRequest(
            method=request.method,
            path=path,
            query=dict(request.query),
            headers=dict(request.headers),
            json=body,
            files=files,
            status=0,
        )
        response = self._answer(request, recorded)
        recorded.status = response.status
        recorded.response = json.loads(response.body) if response.body else None  # type: ignore[arg-type]
        self.requests.append(recorded)
        return response

    def _answer(self, request: web.Request, recorded: RecordedRequest) -> web.Response:
        limited = self._take_rate_limit(recorded)
        if limited is not None:
            return limited
        needs_auth = not recorded.path.startswith(("/interactions/", "/webhooks/"))
        if needs_auth and request.headers.get("Authorization") != f"Bot {self.token}":
            return _json({"message": "401: Unauthorized", "code": 0}, status=401)
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(recorded.path)
            if match and method == recorded.method:
                try:
                    return handler(recorded, **match.groupdict())
                except _Reply as reply:
                    return reply.response
        return _json({"message": "404: Not Found", "code": 0}, status=404)

    def _take_rate_limit(self, recorded: RecordedRequest) -> web.Response | None:
        for rule in self._rate_limits:
            if (
                rule.remaining <= 0
                or rule.method != recorded.method
                or not rule.path.fullmatch(recorded.path)
            ):
                continue
            if rule.when is None or rule.when(recorded):
                rule.remaining -= 1
                rule.hits.append(recorded)
                headers = {
                    "Retry-After": str(math.ceil(rule.retry_after)),
                    "X-RateLimit-Limit": "5",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": f"{time.time() + rule.retry_after:.3f}",
                    "X-RateLimit-Reset-After": f"{rule.retry_after:.3f}",
                    "X-RateLimit-Bucket": "fakebucket" + str(abs(hash(rule.path.pattern)) % 10**8),
                    "X-RateLimit-Scope": "shared" if not rule.is_global else "user",
                }
                if rule.is_global:
                    headers["X-RateLimit-Global"] = "true"
                if rule.via:
                    headers["Via"] = "1.1 google"
                body = {
                    "message": "You are being rate limited.",
                    "retry_after": rule.retry_after,
                    "global": rule.is_global,
                }
                return _json(body, status=429, headers=headers)
        return None

    def _get_me(self, recorded: RecordedRequest) -> web.Response:
        return _json(self._bot_user())

    def _get_application(self, recorded: RecordedRequest) -> web.Response:
        return _json(
            {
                "id": str(self.application_id),
                "name": "imagine-test",
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": self._user(self.user_id),
                "verify_key": "0" * 64,
                "flags": 0,
                "bot": self._bot_user(),
            }
        )

    def _get_gateway(self, recorded: RecordedRequest) -> web.Response:
        return _json({"url": self.gateway_url})

    def _get_gateway_bot(self, recorded: RecordedRequest) -> web.Response:
        limit = {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}
        return _json({"url": self.gateway_url, "shards": 1, "session_start_limit": limit})

    def _put_commands(self, recorded: RecordedRequest, app: str, guild: str | None = None) -> web.Response:
        self._check_application(app)
        scope = int(guild) if guild is not None else None
        if scope is not None and scope != self.guild_id:
            raise _Reply(_json({"message": "Missing Access", "code": 50001}, status=403))
        previous = {c["name"]: c["id"] for c in self.commands.get(scope, [])}
        registered = []
        for command in recorded.json or []:
            entry = {
                "type": 1,
                "description": "",
                "options": [],
                "default_member_permissions": None,
                "nsfw": False,
                **command,
                "id": previous.get(command["name"]) or str(self._snowflake()),
                "application_id": str(self.application_id),
                "version": str(self._snowflake()),
            }
            if scope is not None:
                entry["guild_id"] = str(scope)
            registered.append(entry)
        self.commands[scope] = registered
        return _json(registered)

    def _get_commands(self, recorded: RecordedRequest, app: str, guild: str | None = None) -> web.Response:
        self._check_application(app)
        return _json(self.commands.get(int(guild) if guild is not None else None, []))

    def _callback(self, recorded: RecordedRequest, id: str, token: str) -> web.Response:
        interaction = self.interactions.get(token)
        if interaction is None or interaction.id != int(id):
            raise _Reply(_json({"message": "Unknown interaction", "code": 10062}, status=404))
        if interaction.callback_type is not None:
            body = {"message": "Interaction has already been acknowledged.", "code": 40060}
            raise _Reply(_json(body, status=400))
        payload = recorded.json or {}
        kind = payload.get("type")
        data = payload.get("data") or {}
        message: dict[str, Any] | None = None
        if kind == CALLBACK_MESSAGE:
            message = self._new_message(interaction.channel_id, data, recorded.files, interaction=interaction)
        elif kind == CALLBACK_DEFERRED_MESSAGE:
            flags = LOADING_FLAG | (data.get("flags", 0) & EPHEMERAL_FLAG)
            message = self._new_message(
                interaction.channel_id, {"content": "", "flags": flags}, [], interaction=interaction
            )
        elif kind in (CALLBACK_DEFERRED_UPDATE, CALLBACK_UPDATE):
            if interaction.source_message_id is None:
                raise _Reply(
                    _json({"message": "Invalid interaction application command", "code": 50035}, status=400)
                )
            message = self._message(interaction.source_message_id)
            if kind == CALLBACK_UPDATE:
                message = self._edit(message, data, recorded.files)
        elif kind == CALLBACK_MODAL:
            if interaction.type == MODAL_SUBMIT:
                raise _Reply(
                    _json({"message": "Cannot send a modal in reply to a modal", "code": 50035}, status=400)
                )
            if not data.get("custom_id") or not data.get("components"):
                raise _Reply(_json({"message": "Invalid Form Body", "code": 50035}, status=400))
        elif kind not in (CALLBACK_PONG, CALLBACK_AUTOCOMPLETE):
            raise _Reply(_json({"message": "Invalid Form Body", "code": 50035}, status=400))
        interaction.callback_type = kind
        answer: dict[str, Any] = {
            "interaction": {
                "id": str(interaction.id),
                "type": interaction.type,
                "response_message_loading": kind == CALLBACK_DEFERRED_MESSAGE,
                "response_message_ephemeral": bool(message and message.get("flags", 0) & EPHEMERAL_FLAG),
            }
        }
        if message is not None:
            interaction.original_message_id = int(message["id"])
            answer["interaction"]["response_message_id"] = message["id"]
            answer["resource"] = {"type": kind, "message": message}
        else:
            answer["resource"] = {"type": kind}
        return _json(answer)

    def _followup(self, recorded: RecordedRequest, app: str, token: str) -> web.Response:
        interaction = self._interaction_for_webhook(app, token)
        if interaction.callback_type is None:
            raise _Reply(_json({"message": "Unknown Webhook", "code": 10015}, status=404))
        original = self.original_message(interaction)
        if (
            interaction.callback_type == CALLBACK_DEFERRED_MESSAGE
            and original
            and original["flags"] & LOADING_FLAG
        ):
            # Like Discord: the first followup after a "thinking" defer replaces the loading message.
            message = self._edit(original, recorded.json or {}, recorded.files)
        else:
            message = self._new_message(
                interaction.channel_id, recorded.json or {}, recorded.files, interaction=interaction
            )
        if recorded.query.get("wait", "").lower() in ("1", "true"):
            return _json(message)
        return web.Response(status=204)

    def _webhook_target(self, app: str, token: str, message: str) -> dict[str, Any]:
        interaction = self._interaction_for_webhook(app, token)
        if message == "@original":
            if interaction.original_message_id is None:
                raise _Reply(_json({"message": "Unknown Message", "code": 10008}, status=404))
            return self._message(interaction.original_message_id)
        return self._message(int(message))

    def _get_webhook_message(
        self, recorded: RecordedRequest, app: str, token: str, message: str
    ) -> web.Response:
        return _json(self._webhook_target(app, token, message))

    def _edit_webhook_message(
        self, recorded: RecordedRequest, app: str, token: str, message: str
    ) -> web.Response:
        target = self._webhook_target(app, token, message)
        return _json(self._edit(target, recorded.json or {}, recorded.files))

    def _delete_webhook_message(
        self, recorded: RecordedRequest, app: str, token: str, message: str
    ) -> web.Response:
        target = self._webhook_target(app, token, message)
        del self.messages[int(target["id"])]
        return web.Response(status=204)

    def _get_channel(self, recorded: RecordedRequest, channel: str) -> web.Response:
        return _json(self._channel(int(channel)))

    def _create_channel_message(self, recorded: RecordedRequest, channel: str) -> web.Response:
        self._channel(int(channel))
        return _json(self._new_message(int(channel), recorded.json or {}, recorded.files))

    def _get_channel_message(self, recorded: RecordedRequest, channel: str, message: str) -> web.Response:
        return _json(self._message(int(message), channel=int(channel)))

    def _edit_channel_message(self, recorded: RecordedRequest, channel: str, message: str) -> web.Response:
        target = self._message(int(message), channel=int(channel))
        return _json(self._edit(target, recorded.json or {}, recorded.files))

    def _delete_channel_message(self, recorded: RecordedRequest, channel: str, message: str) -> web.Response:
        self._message(int(message), channel=int(channel))
        del self.messages[int(message)]
        return web.Response(status=204)

    def _create_dm(self, recorded: RecordedRequest) -> web.Response:
        recipient = int((recorded.json or {}).get("recipient_id", self.user_id))
        return _json(self._dm_channel(recipient))

    async def _serve_attachment(self, request: web.Request) -> web.Response:
        try:
            attachment_id = int(request.match_info["attachment_id"])
            content_type, data = self._attachments[attachment_id]
        except (KeyError, ValueError):
            return web.Response(status=404)
        self.downloads.append(attachment_id)
        return web.Response(body=data, headers={"Content-Type": content_type})

    # --- stored state ---------------------------------------------------------------------------

    def _new_message(
        self,
        channel_id: int,
        data: dict[str, Any],
        files: list[UploadedFile],
        *,
        interaction: InteractionState | None = None,
    ) -> dict[str, Any]:
        message_id = self._snowflake()
        message: dict[str, Any] = {
            "id": str(message_id),
            "channel_id": str(channel_id),
            "author": self._bot_user(),
            "content": "",
            "timestamp": _now(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "components": [],
            "pinned": False,
            "type": 0,
            "flags": 0,
        }
        if channel_id == self.channel_id:
            message["guild_id"] = str(self.guild_id)
        if interaction is not None:
            message["type"] = 20 if interaction.type == APPLICATION_COMMAND else 19
            message["webhook_id"] = str(self.application_id)
            message["application_id"] = str(self.application_id)
            message["interaction_metadata"] = {
                "id": str(interaction.id),
                "type": interaction.type,
                "user": interaction.payload.get("member", {}).get("user") or interaction.payload.get("user"),
                "authorizing_integration_owners": {},
            }
        self._apply(
            message, data, files, creating=True
        )  # may refuse it, like Discord: then nothing is stored
        self.messages[message_id] = message
        return message

    def _edit(
        self, message: dict[str, Any], data: dict[str, Any], files: list[UploadedFile]
    ) -> dict[str, Any]:
        edited = dict(message)
        self._apply(edited, data, files, creating=False)  # a refused edit leaves the message as it was
        edited["edited_timestamp"] = _now()
        edited["flags"] = edited.get("flags", 0) & ~LOADING_FLAG
        message.update(edited)
        return message

    def _apply(
        self, message: dict[str, Any], data: dict[str, Any], files: list[UploadedFile], *, creating: bool
    ) -> None:
        """Discord's rules for a message body: given fields replace, and `attachments` lists what stays."""
        for key in ("content", "embeds", "components", "tts"):
            if key in data and data[key] is not None:
                message[key] = data[key]
        if creating and data.get("flags") is not None:
            message["flags"] = data["flags"]
        uploads = {f.field: f for f in files}
        if "attachments" in data or files:
            kept = {a["id"]: a for a in message.get("attachments", [])}
            attachments = []
            described = data.get("attachments")
            if described is None:
                described = [{"id": index} for index in range(len(files))]
            for entry in described:
                upload = uploads.get(f"files[{entry['id']}]")
                if upload is not None:
                    attachment_id = self._snowflake()
                    self._attachments[attachment_id] = (upload.content_type, upload.data)
                    name = entry.get("filename") or upload.filename
                    attachment = self._attachment_payload(
                        attachment_id, name, len(upload.data), _sniff(upload.data)
                    )
                    if entry.get("description"):
                        attachment["description"] = entry["description"]
                    attachments.append(attachment)
                elif str(entry["id"]) in kept:
                    attachments.append(kept[str(entry["id"])])
                else:
                    raise _Reply(
                        _json({"message": "Invalid Form Body (attachments)", "code": 50035}, status=400)
                    )
            message["attachments"] = attachments
        content = message.get("content") or ""
        if len(content) > 2000:
            raise _Reply(
                _json({"message": "Invalid Form Body (content over 2000)", "code": 50035}, status=400)
            )
        for attachment in message["attachments"]:
            if attachment["size"] > self.attachment_size_limit:
                raise _Reply(_json({"message": "Request entity too large", "code": 40005}, status=413))
        _check_components(message.get("components") or [])

    def _attachment_payload(
        self, attachment_id: int, filename: str, size: int, content_type: str
    ) -> dict[str, Any]:
        url = f"{self.base_url}/attachments/{attachment_id}/{filename}"
        return {
            "id": str(attachment_id),
            "filename": filename,
            "size": size,
            "url": url,
            "proxy_url": url,
            "content_type": content_type,
        }

    def _message(self, message_id: int, *, channel: int | None = None) -> dict[str, Any]:
        message = self.messages.get(message_id)
        if message is None or (channel is not None and int(message["channel_id"]) != channel):
            raise _Reply(_json({"message": "Unknown Message", "code": 10008}, status=404))
        return message

    def _stored(self, message_id: int) -> dict[str, Any]:
        """A message for a test to act on; a wrong id is the test's mistake, not an HTTP answer."""
        try:
            return self.messages[message_id]
        except KeyError:
            raise AssertionError(f"the fake holds no message {message_id}") from None

    def _interaction_for_webhook(self, app: str, token: str) -> InteractionState:
        self._check_application(app)
        interaction = self.interactions.get(token)
        if interaction is None:
            raise _Reply(_json({"message": "Unknown Webhook", "code": 10015}, status=404))
        return interaction

    def _check_application(self, app: str) -> None:
        if int(app) != self.application_id:
            raise _Reply(_json({"message": "Unknown Application", "code": 10002}, status=404))

    def _registered(self, name: str) -> dict[str, Any]:
        for scope in (self.guild_id, None):
            for command in self.commands.get(scope, []):
                if command["name"] == name:
                    return command
        raise AssertionError(f"no command {name!r} was synced; synced: {self.commands}")

    def _snowflake(self) -> int:
        return ((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22) | (next(self._ids) % (1 << 22))

    # --- payloads -------------------------------------------------------------------------------

    def _bot_user(self) -> dict[str, Any]:
        return {
            **self._user(self.bot_id, "imagine"),
            "bot": True,
            "verified": True,
            "mfa_enabled": False,
            "flags": 0,
        }

    def _user(self, user_id: int, name: str | None = None) -> dict[str, Any]:
        name = name or f"user{user_id % 10000}"
        return {
            "id": str(user_id),
            "username": name,
            "discriminator": "0",
            "global_name": name.title(),
            "avatar": None,
            "public_flags": 0,
        }

    def _member(self, user_id: int) -> dict[str, Any]:
        return {
            "user": self._user(user_id),
            "roles": [],
            "joined_at": "2025-01-01T00:00:00.000000+00:00",
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "permissions": MEMBER_PERMISSIONS,
        }

    def _channel(self, channel_id: int) -> dict[str, Any]:
        if channel_id != self.channel_id:
            raise _Reply(_json({"message": "Unknown Channel", "code": 10003}, status=404))
        return {
            "id": str(self.channel_id),
            "type": 0,
            "guild_id": str(self.guild_id),
            "name": "general",
            "position": 0,
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "topic": None,
            "rate_limit_per_user": 0,
            "last_message_id": None,
        }

    def _dm_channel(self, user_id: int) -> dict[str, Any]:
        return {
            "id": str(user_id + 1),
            "type": 1,
            "last_message_id": None,
            "recipients": [self._user(user_id)],
        }

    def _guild(self) -> dict[str, Any]:
        everyone = {
            "id": str(self.guild_id),
            "name": "@everyone",
            "permissions": MEMBER_PERMISSIONS,
            "position": 0,
            "color": 0,
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }
        bot_member = {**self._member(self.bot_id), "user": self._bot_user()}
        return {
            "id": str(self.guild_id),
            "name": "Fake Guild",
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "owner_id": str(self.user_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "system_channel_id": None,
            "system_channel_flags": 0,
            "features": [],
            "roles": [everyone],
            "emojis": [],
            "stickers": [],
            "channels": [self._channel(self.channel_id)],
            "threads": [],
            "members": [bot_member],
            "member_count": 2,
            "presences": [],
            "voice_states": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "large": False,
            "unavailable": False,
            "joined_at": "2025-01-01T00:00:00.000000+00:00",
        }

    async def _dispatch_interaction(
        self,
        kind: int,
        data: dict[str, Any],
        *,
        user_id: int | None,
        in_guild: bool = True,
        message: dict[str, Any] | None = None,
    ) -> InteractionState:
        user_id = user_id or self.user_id
        interaction_id = self._snowflake()
        token = "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(48)
        payload: dict[str, Any] = {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": kind,
            "data": data,
            "token": token,
            "version": 1,
            "locale": "en-US",
            "attachment_size_limit": self.attachment_size_limit,
            "entitlements": [],
            "app_permissions": ALL_PERMISSIONS,
        }
        if in_guild:
            channel_id = self.channel_id
            payload.update(
                guild_id=str(self.guild_id),
                guild_locale="en-US",
                channel_id=str(channel_id),
                channel=self._channel(channel_id),
                member=self._member(user_id),
                context=0,
                authorizing_integration_owners={"0": str(self.guild_id)},
            )
        else:
            dm = self._dm_channel(user_id)
            channel_id = int(dm["id"])
            payload.update(
                channel_id=dm["id"],
                channel=dm,
                user=self._user(user_id),
                context=1,
                authorizing_integration_owners={"0": str(user_id)},
            )
        if message is not None:
            payload["message"] = message
        state = InteractionState(
            id=interaction_id,
            token=token,
            type=kind,
            channel_id=channel_id,
            guild_id=self.guild_id if in_guild else None,
            payload=payload,
            source_message_id=int(message["id"]) if message is not None else None,
        )
        self.interactions[token] = state
        await self.dispatch("INTERACTION_CREATE", payload)
        return state

    # --- gateway --------------------------------------------------------------------------------

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send a gateway DISPATCH (op 0) to every identified connection."""
        connections = [c for c in self._sockets if c.identified]
        if not connections:
            raise AssertionError(f"no identified gateway connection to send {event} to")
        for connection in connections:
            await connection.send({"op": 0, "t": event, "s": next(self._sequence), "d": data})

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        compression = request.query.get("compress", "")
        self.gateway_compression.append(compression)
        connection = _GatewayConnection(ws, compress=compression == "zlib-stream")
        self._sockets.append(connection)
        try:
            await connection.send({"op": 10, "d": {"heartbeat_interval": 41250}})
            async for frame in ws:
                if frame.type is not aiohttp.WSMsgType.TEXT:
                    continue
                message = json.loads(frame.data)
                self.gateway_received.append(message)
                await self._gateway_message(connection, message)
        finally:
            self._sockets.remove(connection)
        return ws

    async def _gateway_message(self, connection: _GatewayConnection, message: dict[str, Any]) -> None:
        op, data = message.get("op"), message.get("d")
        if op == 1:
            await connection.send({"op": 11})
        elif op == 2:
            if data.get("token") != self.token:
                await connection.ws.close(code=4004, message=b"Authentication failed.")
                return
            connection.identified = True
            self.identified.set()
            shard = data.get("shard") or [0, 1]
            ready = {
                "v": 10,
                "user": self._bot_user(),
                "guilds": [{"id": str(self.guild_id), "unavailable": True}],
                "session_id": secrets.token_hex(16),
                "resume_gateway_url": self.gateway_url,
                "shard": shard,
                "application": {"id": str(self.application_id), "flags": 0},
                "private_channels": [],
                "relationships": [],
                "presences": [],
                "user_settings": {},
                "guild_join_requests": [],
                "geo_ordered_rtc_regions": [],
            }
            await connection.send({"op": 0, "t": "READY", "s": next(self._sequence), "d": ready})
            await connection.send(
                {"op": 0, "t": "GUILD_CREATE", "s": next(self._sequence), "d": self._guild()}
            )
            self.ready_sent.set()
        elif op == 6:
            connection.identified = True
            await connection.send({"op": 0, "t": "RESUMED", "s": next(self._sequence), "d": {}})


class _GatewayConnection:
    def __init__(self, ws: web.WebSocketResponse, *, compress: bool) -> None:
        self.ws = ws
        self.identified = False
        self._compressor = zlib.compressobj() if compress else None

    async def send(self, message: dict[str, Any]) -> None:
        text = json.dumps(message)
        if self._compressor is None:
            await self.ws.send_str(text)
        else:
            frame = self._compressor.compress(text.encode()) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
            await self.ws.send_bytes(frame)


class _Reply(Exception):
    """Ends a route handler early with an error response."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


@contextlib.contextmanager
def point_discord_at(fake: FakeDiscord) -> Iterator[None]:
    """Send discord.py's REST calls and gateway connection to `fake`, and put things back afterwards.

    Routes build their URL when created, so this must wrap the bot's whole life (login to close).
    """
    import discord.gateway
    import discord.http
    import yarl

    old_base = discord.http.Route.BASE
    old_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = fake.api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    try:
        yield
    finally:
        discord.http.Route.BASE = old_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway


@contextlib.asynccontextmanager
async def running(client: Any, token: str, *, within: float = 15.0) -> AsyncIterator[Any]:
    """Run a discord.py client until it is ready, yield it, then close it and surface its crash, if any.

    `Client.start` runs until close, so it goes in a task; a crash in it (a failed login, an
    exception in `setup_hook`) ends the wait at once instead of after the timeout.
    """
    task = asyncio.create_task(client.start(token), name="discord-client")
    try:
        async with asyncio.timeout(within):
            while not client.is_ready():
                if task.done():
                    task.result()
                    raise AssertionError("the client stopped before it was ready")
                await asyncio.sleep(0.01)
        yield client
    finally:
        async with asyncio.timeout(within):
            await client.close()
            await asyncio.wait([task])
    if not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]


async def _read_body(request: web.Request) -> tuple[Any, list[UploadedFile]]:
    """The JSON body, or a multipart body's `payload_json` and `files[n]` parts."""
    if request.content_type.startswith("multipart/"):
        payload: Any = None
        files: list[UploadedFile] = []
        reader = await request.multipart()
        async for part in reader:
            data = await part.read()  # type: ignore[union-attr]
            if part.name == "payload_json":
                payload = json.loads(data)
            elif part.filename is not None:
                content_type = part.headers.get("Content-Type", "application/octet-stream")
                files.append(UploadedFile(part.name or "", part.filename, content_type, bytes(data)))
        return payload, files
    raw = await request.read()
    if not raw:
        return None, []
    return json.loads(raw), []


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response whose Content-Type is exactly `application/json`, as discord.py requires."""
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={**(headers or {}), "Content-Type": "application/json"},
    )


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _sniff(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def _check_components(rows: list[dict[str, Any]]) -> None:
    """Discord's component limits: 5 rows of 5, custom_ids of 1-100 characters, unique per message."""
    if len(rows) > 5:
        raise _Reply(
            _json({"message": "Invalid Form Body (more than 5 action rows)", "code": 50035}, status=400)
        )
    seen: set[str] = set()
    for row in rows:
        children = row.get("components", [])
        if row.get("type") == 1 and len(children) > 5:
            raise _Reply(
                _json(
                    {"message": "Invalid Form Body (more than 5 components in a row)", "code": 50035},
                    status=400,
                )
            )
        for child in children:
            custom_id = child.get("custom_id")
            if custom_id is None:
                continue
            if not 1 <= len(custom_id) <= 100 or custom_id in seen:
                raise _Reply(
                    _json(
                        {"message": f"Invalid Form Body (custom_id {custom_id!r})", "code": 50035}, status=400
                    )
                )
            seen.add(custom_id)
