"""IMAGINE_ENGINE=grpc://host:port[,host:port...]: engine servers that speak Stability's gRPC protocol.

The bot runs where Discord is and the GPUs may be elsewhere, so this engine sends each job to one of
our `imagine serve-grpc` servers (or any server of the protocol) with the stability-sdk's own
protobuf modules and stub. Three things the stock client gets wrong for a bot are handled here:

- Deadlines. The stock client waits forever for a dead server (`wait_for_ready=True`, no
  deadline); here connecting has `connect_timeout` and a whole job `job_timeout`.
- Blocking. The stub is synchronous; each call streams on a worker thread and hands its answers to
  the event loop, so the bot never blocks, and cancelling the awaiting task cancels the call (our
  server then stops the model).
- Several servers. One channel balances calls with gRPC's own `round_robin` policy over every
  address; when a server dies mid-job the job is retried once on another and the user is told.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import stability_sdk  # noqa: F401  (puts the generated modules on sys.path)
from PIL import Image, ImageOps
from stability_sdk.interfaces.gooseai.generation import generation_pb2 as generation
from stability_sdk.interfaces.gooseai.generation import generation_pb2_grpc as generation_grpc

from engine.base import Engine
from engine.config import EngineConfig
from engine.grpc_server import DEFAULT_PORT, ENUM_BY_SAMPLER, EXTRAS_KEY, MAX_RECEIVE_BYTES, PROGRESS_MIME
from engine.metadata import read_parameters
from engine.models import guess_profile
from engine.types import (
    ContentFiltered,
    EngineUnavailable,
    FinishReason,
    GenerationRequest,
    ImageResult,
    ModelProfile,
    Progress,
    ProgressCallback,
    PromptError,
)

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_JOB_TIMEOUT_S = 900.0
FINISH_REASONS = {generation.NULL: FinishReason.OK, generation.FILTER: FinishReason.FILTERED, generation.ERROR: FinishReason.ERROR}
#: Codes that mean "that server is gone", not "this request is wrong": worth one more try elsewhere.
SERVER_LOST = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


# --- addresses ------------------------------------------------------------------------------------


def parse_grpc_url(url: str) -> tuple[list[tuple[str, int]], bool]:
    """`grpc://a:1,b:2` -> ([("a", 1), ("b", 2)], tls=False); `grpcs://` asks for TLS."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep or scheme not in ("grpc", "grpcs") or not rest.strip(" ,/"):
        raise EngineUnavailable(f"IMAGINE_ENGINE={url!r} must look like grpc://host:port[,host:port...].")
    addresses = []
    for item in rest.strip("/").split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):  # [ipv6]:port
            host, _, port_text = item[1:].partition("]")
            port_text = port_text.lstrip(":")
        else:
            host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
        if not host or (port_text and not port_text.isdigit()) or not 0 < int(port_text or DEFAULT_PORT) < 65536:
            raise EngineUnavailable(f"{item!r} in IMAGINE_ENGINE is not host:port.")
        addresses.append((host, int(port_text or DEFAULT_PORT)))
    return addresses, scheme == "grpcs"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def channel_target(addresses: list[tuple[str, int]]) -> tuple[str, str | None]:
    """One gRPC target for every server, and the host name TLS should verify (when there is one).

    A single name uses the DNS resolver, so round_robin spreads over all its A records (scaled
    containers); several names are resolved here into one `ipv4:`/`ipv6:` address list, which is the
    only way to put different hosts behind one balanced channel.
    """
    names = [host for host, _ in addresses if not _is_ip(host)]
    if len(addresses) == 1 and names:
        host, port = addresses[0]
        return f"dns:///{host}:{port}", host
    v4: list[str] = []
    v6: list[str] = []
    for host, port in addresses:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise EngineUnavailable(f"Cannot resolve the engine server {host!r}: {error.strerror}.") from error
        for family, _, _, _, sockaddr in infos:
            if family == socket.AF_INET and f"{sockaddr[0]}:{port}" not in v4:
                v4.append(f"{sockaddr[0]}:{port}")
            elif family == socket.AF_INET6 and f"[{sockaddr[0]}]:{port}" not in v6:
                v6.append(f"[{sockaddr[0]}]:{port}")
    if v4 and v6:
        log.warning("engine servers mix IPv4 and IPv6; using the IPv4 ones: %s", ", ".join(v4))
    target = "ipv4:" + ",".join(v4) if v4 else "ipv6:" + ",".join(v6)
    return target, names[0] if names else None


# --- requests out, results back ----------------------------------------------------------------------


def diffusers_mask_to_sdk(png: bytes) -> bytes:
    """Ours paints where white; the protocol paints where black (0 = change, 255 = keep)."""
    with Image.open(io.BytesIO(png)) as mask:
        inverted = ImageOps.invert(mask.convert("L"))
    buffer = io.BytesIO()
    inverted.save(buffer, format="PNG")
    return buffer.getvalue()


def to_proto(request: GenerationRequest, engine_id: str, progress: bool = False, preview: bool = False) -> Any:
    """The request as `StabilityInference.generate` would build it, plus our extras."""
    prompts = [generation.Prompt(text=request.prompt, parameters=generation.PromptParameters(weight=1.0))]
    if request.negative_prompt:
        prompts.append(generation.Prompt(text=request.negative_prompt, parameters=generation.PromptParameters(weight=-1.0)))
    step = generation.StepParameter(scaled_step=0, sampler=generation.SamplerParameters(cfg_scale=request.guidance_scale))
    if request.init_image is not None:
        prompts.append(generation.Prompt(artifact=generation.Artifact(type=generation.ARTIFACT_IMAGE, binary=request.init_image)))
        step.schedule.CopyFrom(generation.ScheduleParameters(start=request.strength, end=0.01))
    if request.mask is not None:
        mask = diffusers_mask_to_sdk(request.mask)
        prompts.append(generation.Prompt(artifact=generation.Artifact(type=generation.ARTIFACT_MASK, binary=mask)))
    image = generation.ImageParameters(
        width=request.width,
        height=request.height,
        seed=list(request.seeds),
        samples=request.num_images,
        steps=request.steps,
        parameters=[step],
    )
    if request.sampler in ENUM_BY_SAMPLER:
        image.transform.CopyFrom(generation.TransformType(diffusion=ENUM_BY_SAMPLER[request.sampler]))
    message = generation.Request(engine_id=engine_id, prompt=prompts, image=image)
    extras: dict[str, Any] = {
        EXTRAS_KEY: {
            "sampler": request.sampler,
            "tiling": request.tiling,
            "chaos": request.chaos,
            "aspect_ratio": request.aspect_ratio,
            "progress": progress,
            "preview": preview,
        }
    }
    if request.style:
        extras["$IPC"] = {"preset": request.style}
    message.extras.update(extras)
    return message


def _as_png(binary: bytes, mime: str) -> tuple[bytes, int, int]:
    with Image.open(io.BytesIO(binary)) as image:
        image.load()
        if mime == "image/png":
            return binary, image.width, image.height
        buffer = io.BytesIO()  # a server that shrank a huge image to JPEG; we hand out PNGs only
        image.convert("RGB").save(buffer, format="PNG")
        return buffer.getvalue(), image.width, image.height


def _result(artifact: Any) -> ImageResult:
    png, width, height = _as_png(artifact.binary, artifact.mime)
    parameters = read_parameters(png) if artifact.mime == "image/png" else None
    return ImageResult(
        png=png,
        seed=artifact.seed,
        index=artifact.index,
        width=width,
        height=height,
        finish_reason=FINISH_REASONS.get(artifact.finish_reason, FinishReason.ERROR),
        parameters=parameters or "",
    )


def _progress(answer: Any) -> Progress | None:
    texts = [a for a in answer.artifacts if a.type == generation.ARTIFACT_TEXT and a.mime == PROGRESS_MIME]
    if not texts:
        return None
    data = json.loads(texts[0].text)
    previews = [a.binary for a in answer.artifacts if a.type == generation.ARTIFACT_IMAGE]
    return Progress(int(data["step"]), int(data["total"]), previews[0] if previews else None)


def _notice(total: int, text: str) -> Progress:
    """A progress reset that carries a message for the user."""
    return Progress(0, total, message=text)


class _Call:
    """The in-flight gRPC call, cancellable from the event loop before or after it starts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._call: Any = None
        self.cancelled = False

    def started(self, call: Any) -> bool:
        with self._lock:
            self._call = call
            return not self.cancelled

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            if self._call is not None:
                self._call.cancel()


_END = object()


class GrpcEngine(Engine):
    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        job_timeout: float = DEFAULT_JOB_TIMEOUT_S,
        retries: int = 1,
    ) -> None:
        self.config = config or EngineConfig.from_env()
        self.addresses, tls = parse_grpc_url(self.config.engine)
        self.tls = tls or bool(self.config.grpc_api_key)  # a key never travels in plaintext
        self.connect_timeout = connect_timeout
        self.job_timeout = job_timeout
        self.retries = retries
        self.specs = self.config.model_specs()
        self.default_model = next(iter(self.specs))
        self.slots = len(self.addresses)  # one queue worker per server keeps every server busy
        self.channel = self._open_channel()
        self.stub = generation_grpc.GenerationServiceStub(self.channel)
        self._executor = ThreadPoolExecutor(max_workers=4 * self.slots + 2, thread_name_prefix="imagine-grpc")

    def _open_channel(self) -> grpc.Channel:
        target, server_name = channel_target(self.addresses)
        options: list[tuple[str, Any]] = [
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
            ("grpc.max_send_message_length", MAX_RECEIVE_BYTES),
            ("grpc.keepalive_time_ms", 30_000),  # notice a server that vanished without closing
            ("grpc.keepalive_timeout_ms", 10_000),
        ]
        if not self.tls:
            return grpc.insecure_channel(target, options=options)
        if server_name and not target.startswith("dns:"):
            options.append(("grpc.ssl_target_name_override", server_name))
        credentials = grpc.ssl_channel_credentials()  # roots: GRPC_DEFAULT_SSL_ROOTS_FILE_PATH or the system's
        if self.config.grpc_api_key:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(self.config.grpc_api_key)
            )
        return grpc.secure_channel(target, credentials, options=options)

    # --- what front-ends ask before a job ---------------------------------------------------------
    def _name(self, model: str | None) -> str:
        name = model or self.default_model
        if name not in self.specs:
            raise PromptError(f"Unknown model {name!r}. Available: {', '.join(self.specs)}.", "model")
        return name

    def profile(self, model: str | None = None) -> ModelProfile:
        name = self._name(model)
        return guess_profile(name, self.specs[name], self.config.model_config)

    def models(self) -> list[str]:
        return list(self.specs)

    def describe(self) -> dict[str, Any]:
        servers = [f"{host}:{port}" for host, port in self.addresses]
        return {"engine": "grpc", "model": self.default_model, "servers": servers, "tls": self.tls}

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close_channel)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _close_channel(self) -> None:
        # grpcio's connectivity poller (started by channel_ready_future) lingers up to 0.2 s after
        # its last subscriber and raises "Channel closed!" in its thread if the channel closes first.
        state = getattr(self.channel, "_connectivity_state", None)
        deadline = time.monotonic() + 1.0
        while state is not None and getattr(state, "polling", False) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.channel.close()

    # --- a job ------------------------------------------------------------------------------------
    async def generate(
        self, request: GenerationRequest, on_progress: ProgressCallback | None = None, preview: bool = False
    ) -> list[ImageResult]:
        message = to_proto(request, self._name(request.model), progress=on_progress is not None, preview=preview)
        for attempt in range(self.retries + 1):
            await self._wait_for_a_server()
            try:
                return await self._call(message, request, on_progress)
            except grpc.RpcError as error:
                if error.code() in SERVER_LOST and attempt < self.retries:
                    log.warning("engine server lost mid-job (%s: %s); retrying once", error.code().name, error.details())
                    if on_progress is not None:
                        on_progress(_notice(request.steps, "The engine server went away; retrying on another server."))
                    continue
                raise self._user_error(error) from None
        raise AssertionError("unreachable")

    async def _wait_for_a_server(self) -> None:
        """Fail within `connect_timeout` when no server answers, rather than wait forever."""
        ready = grpc.channel_ready_future(self.channel)
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, ready.result, self.connect_timeout)
        except grpc.FutureTimeoutError:
            ready.cancel()
            servers = ", ".join(f"{host}:{port}" for host, port in self.addresses)
            raise EngineUnavailable(f"No engine server answered at {servers} within {self.connect_timeout:g} s.") from None

    async def _call(self, message: Any, request: GenerationRequest, on_progress: ProgressCallback | None) -> list[ImageResult]:
        loop = asyncio.get_running_loop()
        answers: asyncio.Queue[Any] = asyncio.Queue()
        call = _Call()

        def hand_over(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(answers.put_nowait, item)
            except RuntimeError:  # the loop closed while the call ran; nobody is waiting
                pass

        def stream() -> None:
            try:
                rendezvous = self.stub.Generate(message, timeout=self.job_timeout, wait_for_ready=False)
                if not call.started(rendezvous):
                    rendezvous.cancel()
                for answer in rendezvous:
                    hand_over(answer)
                hand_over(_END)
            except grpc.RpcError as error:
                hand_over(error)

        worker = loop.run_in_executor(self._executor, stream)
        results: list[ImageResult] = []
        try:
            while (item := await answers.get()) is not _END:
                if isinstance(item, grpc.RpcError):
                    if item.code() == grpc.StatusCode.CANCELLED and call.cancelled:
                        raise asyncio.CancelledError
                    raise item
                progress = _progress(item)
                if progress is not None:
                    if on_progress is not None:
                        on_progress(progress)
                    continue
                results += [_result(a) for a in item.artifacts if a.type == generation.ARTIFACT_IMAGE]
        except asyncio.CancelledError:
            call.cancel()  # the server sees the cancellation and stops the model
            raise
        await worker
        if len(results) != request.num_images:
            raise EngineUnavailable(f"The engine server sent {len(results)} of {request.num_images} images.")
        return sorted(results, key=lambda result: result.index)

    def _user_error(self, error: grpc.RpcError) -> Exception:
        code, details = error.code(), error.details() or ""
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return PromptError(details)
        if code == grpc.StatusCode.NOT_FOUND:
            return PromptError(f"The engine server does not have this model: {details}", "model")
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return EngineUnavailable("The engine server refused our API key: check IMAGINE_GRPC_API_KEY.")
        if code == grpc.StatusCode.PERMISSION_DENIED:
            return ContentFiltered(details or "The engine server refused this prompt.")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return EngineUnavailable(f"The engine server did not finish the job within {self.job_timeout:g} s.")
        if code in SERVER_LOST:
            return EngineUnavailable("The engine servers went away during the job; try again shortly.")
        # Anything else may carry the server's exception text: log it, show the user only the code.
        log.warning("engine server failed: %s: %s", code.name, details)
        return EngineUnavailable(f"The engine server failed ({code.name}); the bot's log has the details.")
