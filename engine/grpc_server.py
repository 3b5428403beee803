"""`imagine serve-grpc`: our engine behind Stability's gRPC protocol (`gooseai.GenerationService`).

Speaking the protocol the stock stability-sdk client speaks lets that client, every other client of
the protocol, and our own `GrpcEngine` use a self-hosted Stable Diffusion. The request is read the
way `StabilityInference.generate` builds it (see `to_generation_request`); anything the protocol
cannot say (our sampler names, tiling, chaos, live progress) travels in `extras["imagine"]`, which
stock clients never send, so they get exactly the images they asked for and nothing else.

The generated protobuf modules are the SDK's own: a second copy of `generation.proto` in the same
process fails with "duplicate file name".
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import io
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import stability_sdk  # noqa: F401  (puts the generated modules on sys.path)
from google.protobuf.json_format import MessageToDict
from PIL import Image, ImageOps, UnidentifiedImageError
from stability_sdk.interfaces.gooseai.generation import generation_pb2 as generation
from stability_sdk.interfaces.gooseai.generation import generation_pb2_grpc as generation_grpc

from engine.base import Engine
from engine.params import dimensions
from engine.samplers import normalize_sampler
from engine.styles import STYLE_NAMES, normalize_style
from engine.types import (
    MAX_IMAGES,
    MAX_SEED,
    ContentFiltered,
    EngineUnavailable,
    FinishReason,
    GenerationRequest,
    ImageResult,
    ImagineError,
    JobCancelled,
    ModelProfile,
    Progress,
    PromptError,
)

log = logging.getLogger(__name__)

DEFAULT_PORT = 50051
#: Init images and masks arrive inside one message; gRPC's 4 MB default refuses a large PNG.
MAX_RECEIVE_BYTES = 64 * 1024 * 1024
#: The stock client refuses messages over 10 MB (its MAX_MESSAGE_SIZE); leave room for the envelope.
MAX_ANSWER_BYTES = 10 * 1024 * 1024 - 64 * 1024
DEFAULT_KEEPALIVE_S = 10.0
#: The key in `extras` for what only our own client sends.
EXTRAS_KEY = "imagine"
PROGRESS_MIME = "application/vnd.imagine.progress+json"

# The protocol's sampler enum, mapped to our samplers where diffusers has the same algorithm.
SAMPLERS_BY_ENUM: dict[int, str] = {
    generation.SAMPLER_DDIM: "ddim",
    generation.SAMPLER_K_EULER: "euler",
    generation.SAMPLER_K_EULER_ANCESTRAL: "euler_a",
    generation.SAMPLER_K_HEUN: "heun",
    generation.SAMPLER_K_DPMPP_2M: "dpmpp_2m",
    generation.SAMPLER_K_DPMPP_SDE: "dpmpp_sde_karras",
}
ENUM_BY_SAMPLER: dict[str, int] = {name: value for value, name in SAMPLERS_BY_ENUM.items()} | {
    "dpmpp_2m_karras": generation.SAMPLER_K_DPMPP_2M,
}
FINISH_REASONS = {
    FinishReason.OK: generation.NULL,
    FinishReason.FILTERED: generation.FILTER,
    FinishReason.ERROR: generation.ERROR,
}


@dataclass(frozen=True)
class WireOptions:
    """What a request asks of the stream besides images (only our own client asks)."""

    progress: bool = False
    preview: bool = False


# --- reading a request ------------------------------------------------------------------------------


def _png(data: bytes, what: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise PromptError(f"The {what} is not a readable image.", what.replace(" ", "_")) from error


def _encode(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def sdk_mask_to_diffusers(data: bytes) -> bytes:
    """The SDK's mask paints where it is black (0 = change, 255 = keep); diffusers paints white."""
    return _encode(ImageOps.invert(_png(data, "mask").convert("L")))


def _weighted(text: str, weight: float) -> str:
    return text if weight == 1.0 else f"{text}::{weight:g}"


def _seeds(image: Any) -> tuple[int, ...]:
    given = [int(seed) for seed in image.seed]
    count = image.samples if image.HasField("samples") and image.samples > 0 else max(1, len(given))
    if count > MAX_IMAGES:
        raise PromptError(f"A job makes 1 to {MAX_IMAGES} images, not {count}: lower samples.", "samples")
    if not given:
        given = [0]
    seeds = given[:count]
    while len(seeds) < count:  # one seed for many samples: the next ones count up from it
        seeds.append((seeds[-1] + 1) % (MAX_SEED + 1))
    return tuple(seeds)


def to_generation_request(message: Any, model: str | None, profile: ModelProfile) -> tuple[GenerationRequest, WireOptions]:
    """A `gooseai.Request` as `StabilityInference.generate` builds it, as one of our requests.

    Raises PromptError (naming the SDK's parameter) for anything we cannot honour.
    """
    extras = MessageToDict(message.extras) if message.HasField("extras") else {}
    ours = _our_extras(extras)

    positive: list[str] = []
    negative: list[str] = []
    init_image = mask = None
    for prompt in message.prompt:
        weight = prompt.parameters.weight if prompt.HasField("parameters") and prompt.parameters.HasField("weight") else 1.0
        kind = prompt.WhichOneof("prompt")
        if kind == "text":
            if weight > 0:
                positive.append(_weighted(prompt.text.strip(), weight))
            elif weight < 0:  # the protocol's negative prompt
                negative.append(prompt.text.strip())
        elif kind == "artifact" and prompt.artifact.type == generation.ARTIFACT_IMAGE:
            init_image = _encode(_png(prompt.artifact.binary, "init image").convert("RGB"))
        elif kind == "artifact" and prompt.artifact.type == generation.ARTIFACT_MASK:
            mask = sdk_mask_to_diffusers(prompt.artifact.binary)
        elif kind == "artifact":
            name = generation.ArtifactType.Name(prompt.artifact.type)
            raise PromptError(f"Prompt artifacts of type {name} are not supported; send ARTIFACT_IMAGE or ARTIFACT_MASK.", "prompt")
        else:
            raise PromptError("Token prompts are not supported; send text prompts.", "prompt")

    image = message.image
    if image.HasField("width") != image.HasField("height"):
        width, height = (image.width, image.width) if image.HasField("width") else (image.height, image.height)
    elif image.HasField("width"):
        width, height = image.width, image.height
    else:
        width, height = dimensions((1, 1), profile)

    step = image.parameters[0] if image.parameters else None
    guidance = profile.default_guidance
    if step is not None and step.HasField("sampler") and step.sampler.HasField("cfg_scale"):
        guidance = round(step.sampler.cfg_scale, 4)
    strength = 0.75
    if step is not None and step.HasField("schedule") and step.schedule.HasField("start"):
        strength = round(step.schedule.start, 4)
    if init_image is not None and not 0.0 < strength <= 1.0:
        raise PromptError(f"start_schedule {strength:g} must be above 0 and at most 1: it is the img2img strength.", "start_schedule")

    sampler = profile.default_sampler
    if "sampler" in ours:
        sampler = normalize_sampler(str(ours["sampler"])) or ""
        if not sampler:
            raise PromptError(f'extras["{EXTRAS_KEY}"]["sampler"] {ours["sampler"]!r} is not a known sampler.', "sampler")
    elif image.HasField("transform") and image.transform.HasField("diffusion"):
        if image.transform.diffusion not in SAMPLERS_BY_ENUM:
            name = generation.DiffusionSampler.Name(image.transform.diffusion)
            allowed = ", ".join(generation.DiffusionSampler.Name(v) for v in SAMPLERS_BY_ENUM)
            raise PromptError(f"Sampler {name} is not available here; use one of {allowed}.", "sampler")
        sampler = SAMPLERS_BY_ENUM[image.transform.diffusion]
    elif image.HasField("transform") and image.transform.HasField("upscaler"):
        raise PromptError("This engine does not upscale; send a diffusion request.", "transform")

    style = None
    preset = (extras.get("$IPC") or {}).get("preset") if isinstance(extras.get("$IPC"), dict) else None
    if preset and str(preset).lower() != "none":
        style = normalize_style(str(preset))
        if style is None:
            raise PromptError(f"Style preset {preset!r} is not one of {', '.join(STYLE_NAMES)}.", "style_preset")

    request = GenerationRequest(
        prompt=" ".join(positive),
        negative_prompt=", ".join(part for part in negative if part),
        width=width,
        height=height,
        seeds=_seeds(image),
        steps=image.steps if image.HasField("steps") and image.steps > 0 else profile.default_steps,
        guidance_scale=guidance,
        sampler=sampler,
        model=model,
        style=style,
        tiling=ours["tiling"],
        chaos=ours["chaos"],
        init_image=init_image,
        strength=strength if init_image is not None else 0.75,
        mask=mask,
        aspect_ratio=ours["aspect_ratio"],
    )
    request.validate(profile.size_multiple)
    return request, WireOptions(progress=ours["progress"], preview=ours["preview"])


def _our_extras(extras: dict[str, Any]) -> dict[str, Any]:
    """`extras["imagine"]` with types checked: a bad value is the client's error, not a crash."""
    given = extras.get(EXTRAS_KEY) or {}
    types = {"sampler": str, "tiling": bool, "chaos": (int, float), "aspect_ratio": str, "progress": bool, "preview": bool}
    if not isinstance(given, dict):
        raise PromptError(f'extras["{EXTRAS_KEY}"] must be an object.', "extras")
    for key, value in given.items():
        if key not in types or not isinstance(value, types[key]):
            raise PromptError(f'extras["{EXTRAS_KEY}"]["{key}"] is not a known option of the right type.', "extras")
    chaos = given.get("chaos", 0)
    if chaos != int(chaos):
        raise PromptError(f'extras["{EXTRAS_KEY}"]["chaos"] must be a whole number.', "extras")
    return {
        "tiling": False, "aspect_ratio": "1:1", "progress": False, "preview": False, **given, "chaos": int(chaos)
    }


# --- writing answers ----------------------------------------------------------------------------------


def _fit(result: ImageResult, limit: int) -> tuple[bytes, str]:
    """The PNG, or a JPEG of it when the PNG would break the client's message limit."""
    if len(result.png) <= limit:
        return result.png, "image/png"
    image = _png(result.png, "result").convert("RGB")
    for quality in (95, 90, 80, 70, 50):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        if buffer.tell() <= limit:
            log.warning("image %d was %d bytes as PNG; sent as JPEG (quality %d)", result.index, len(result.png), quality)
            return buffer.getvalue(), "image/jpeg"
    raise EngineUnavailable(f"Image {result.index} does not fit in a {limit}-byte answer even as a JPEG.")


def image_answer(request_id: str, engine_id: str, result: ImageResult, limit: int = MAX_ANSWER_BYTES) -> Any:
    binary, mime = _fit(result, limit)
    artifact = generation.Artifact(
        id=result.index,
        type=generation.ARTIFACT_IMAGE,
        mime=mime,
        binary=binary,
        index=result.index,
        finish_reason=FINISH_REASONS[result.finish_reason],
        seed=result.seed,
        uuid=str(uuid.uuid4()),
        size=len(binary),
    )
    return _answer(request_id, engine_id, [artifact])


def progress_answer(request_id: str, engine_id: str, progress: Progress) -> Any:
    artifacts = [
        generation.Artifact(
            type=generation.ARTIFACT_TEXT,
            mime=PROGRESS_MIME,
            text=json.dumps({"step": progress.step, "total": progress.total}),
        )
    ]
    if progress.preview is not None:
        artifacts.append(generation.Artifact(type=generation.ARTIFACT_IMAGE, mime="image/jpeg", binary=progress.preview))
    return _answer(request_id, engine_id, artifacts)


def _answer(request_id: str, engine_id: str, artifacts: list[Any]) -> Any:
    now = int(time.time())
    return generation.Answer(
        answer_id=str(uuid.uuid4()),
        request_id=request_id,
        received=now,
        created=now,
        meta=generation.AnswerMeta(engine_id=engine_id),
        artifacts=artifacts,
    )


# --- the service ------------------------------------------------------------------------------------


class GenerationService(generation_grpc.GenerationServiceServicer):
    """`Generate`: one Answer per image, empty keepalive Answers while the engine works."""

    def __init__(
        self,
        engine: Engine,
        engine_ids: dict[str, str] | None = None,
        api_keys: Iterable[str] = (),
        keepalive_s: float = DEFAULT_KEEPALIVE_S,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self.engine = engine
        self.engine_ids = engine_ids or {name: name for name in engine.models()}
        self.api_keys = tuple(key.encode() for key in api_keys if key)
        self.keepalive_s = keepalive_s
        self.max_answer_bytes = max_answer_bytes

    def _authorized(self, context: grpc.aio.ServicerContext) -> bool:
        if not self.api_keys:
            return True
        metadata = dict(context.invocation_metadata() or ())
        scheme, _, token = str(metadata.get("authorization", "")).partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        return any(hmac.compare_digest(token.encode(), key) for key in self.api_keys)

    async def Generate(self, message: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:  # noqa: N802 (the protocol's name)
        if not self._authorized(context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "A valid API key is required: send 'authorization: Bearer <key>' over TLS.")
        engine_id = message.engine_id or next(iter(self.engine_ids))
        if engine_id not in self.engine_ids:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"Unknown engine {engine_id!r}. Available: {', '.join(self.engine_ids)}."
            )
        request_id = message.request_id or str(uuid.uuid4())
        try:
            model = self.engine_ids[engine_id]
            request, options = to_generation_request(message, model, self.engine.profile(model))
        except PromptError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))

        events: asyncio.Queue[Progress | None] = asyncio.Queue()
        on_progress = events.put_nowait if options.progress else None
        job = asyncio.create_task(self.engine.generate(request, on_progress, options.preview))
        job.add_done_callback(lambda _: events.put_nowait(None))
        log.info("request %s: %d image(s) on %s", request_id, request.num_images, engine_id)
        try:
            while True:  # until the job's end marker, so no progress queued before it is lost
                try:
                    event = await asyncio.wait_for(events.get(), self.keepalive_s)
                except TimeoutError:
                    yield _answer(request_id, engine_id, [])  # keepalive: the client and proxies see life
                    continue
                if event is None:
                    break
                yield progress_answer(request_id, engine_id, event)
            results = await job
        except asyncio.CancelledError:
            log.info("request %s: cancelled by the client", request_id)
            raise
        except ImagineError as error:
            await context.abort(_status_for(error), str(error))
        except Exception:
            log.exception("request %s failed", request_id)
            await context.abort(grpc.StatusCode.INTERNAL, "The engine failed on this request; the server log has the details.")
        finally:
            if not job.done():
                job.cancel()  # the client went away: stop the engine at its next step
        for result in results:
            try:
                yield image_answer(request_id, engine_id, result, self.max_answer_bytes)
            except ImagineError as error:
                await context.abort(_status_for(error), str(error))


def _status_for(error: ImagineError) -> grpc.StatusCode:
    if isinstance(error, PromptError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(error, ContentFiltered):
        return grpc.StatusCode.PERMISSION_DENIED
    if isinstance(error, JobCancelled):
        return grpc.StatusCode.CANCELLED
    if isinstance(error, EngineUnavailable):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.FAILED_PRECONDITION


# --- the server -------------------------------------------------------------------------------------


@dataclass
class TlsFiles:
    cert: Path
    key: Path

    def credentials(self) -> grpc.ServerCredentials:
        try:
            pair = (self.key.read_bytes(), self.cert.read_bytes())
        except OSError as error:
            raise ImagineError(f"Cannot read the TLS file {error.filename!r}: {error.strerror}.") from error
        return grpc.ssl_server_credentials([pair])


async def start_server(
    service: GenerationService, host: str = "127.0.0.1", port: int = DEFAULT_PORT, tls: TlsFiles | None = None
) -> tuple[grpc.aio.Server, int]:
    """Start serving; returns the server and the port it bound (useful with port 0)."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
            ("grpc.max_send_message_length", MAX_RECEIVE_BYTES),
            # Our client pings idle connections to notice a dead server; allow it.
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
    )
    generation_grpc.add_GenerationServiceServicer_to_server(service, server)
    address = f"{host}:{port}"
    bound = server.add_secure_port(address, tls.credentials()) if tls else server.add_insecure_port(address)
    if not bound:
        raise EngineUnavailable(f"Cannot listen on {address}: the port is taken or the address is not local.")
    await server.start()
    return server, bound


def parse_engine_ids(items: Iterable[str], models: list[str]) -> dict[str, str]:
    """Engine ids clients send, each mapped to a model name; every model is its own id too."""
    ids = {name: name for name in models}
    for item in items:
        engine_id, sep, model = item.partition("=")
        if not sep or not engine_id.strip() or model.strip() not in models:
            raise ImagineError(f"--engine-id {item!r} must look like ID=MODEL with MODEL one of {', '.join(models)}.")
        ids[engine_id.strip()] = model.strip()
    return ids


def read_api_keys(env_value: str | None, path: str | None) -> list[str]:
    """Keys from IMAGINE_GRPC_API_KEYS (comma-separated) and/or a file with one key per line.

    Keys are never command-line arguments: those show up in `ps` for every user of the machine.
    """
    keys = [key.strip() for key in (env_value or "").split(",") if key.strip()]
    if path:
        try:
            keys += [line.strip() for line in Path(path).read_text().splitlines() if line.strip() and not line.startswith("#")]
        except OSError as error:
            raise ImagineError(f"Cannot read the API keys file {path!r}: {error.strerror}.") from error
    return keys


async def _serve(args: argparse.Namespace) -> None:
    import os

    from engine.config import EngineConfig, parse_blocklist
    from engine.content_filter import with_blocklist
    from engine.diffusers_engine import DiffusersEngine

    config = EngineConfig.from_env()
    # Always the in-process engine: an IMAGINE_ENGINE=grpc://... shared with the bot must not loop back here.
    local = DiffusersEngine(config, model=args.model)
    blocklist = parse_blocklist(args.blocklist) if args.blocklist is not None else config.blocklist
    engine = with_blocklist(local, blocklist)
    engine_ids = parse_engine_ids(args.engine_id, engine.models())
    api_keys = read_api_keys(os.environ.get("IMAGINE_GRPC_API_KEYS"), args.api_keys_file)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ImagineError("--tls-cert and --tls-key go together.")
    tls = TlsFiles(Path(args.tls_cert), Path(args.tls_key)) if args.tls_cert else None
    if api_keys and tls is None:
        log.warning("API keys are set without TLS: the stock stability-sdk client only sends its key over TLS")
    print(f"loading {engine.profile().name} ...", flush=True)
    await engine.start()
    service = GenerationService(engine, engine_ids, api_keys, keepalive_s=args.keepalive)
    server, port = await start_server(service, args.host, args.port, tls)
    scheme = "TLS" if tls else "plaintext"
    print(f"serving gooseai.GenerationService on {args.host}:{port} ({scheme}); engine ids: {', '.join(engine_ids)}", flush=True)
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(grace=5)
        await engine.close()


def cmd_serve_grpc(args: argparse.Namespace) -> int:
    logging.getLogger("engine").setLevel(logging.INFO)
    asyncio.run(_serve(args))
    return 0


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve-grpc",
        help="serve the engine over Stability's gRPC protocol (stability-sdk clients, IMAGINE_ENGINE=grpc://)",
        description="API keys come from IMAGINE_GRPC_API_KEYS (comma-separated) or --api-keys-file; "
        "the word blocklist from IMAGINE_BLOCKLIST or --blocklist.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; end it in 443 for the stock client's TLS)")
    parser.add_argument("--model", help="default model (folder, .safetensors, hub id or 'tiny'); else IMAGINE_MODEL")
    parser.add_argument("--engine-id", action="append", default=[], metavar="ID=MODEL", help="an extra engine id clients may send")
    parser.add_argument("--tls-cert", help="PEM certificate chain for TLS")
    parser.add_argument("--tls-key", help="PEM private key for TLS")
    parser.add_argument("--api-keys-file", help="file with one accepted API key per line")
    parser.add_argument("--blocklist", help="comma-separated words whose prompts are answered FILTER")
    parser.add_argument("--keepalive", type=float, default=DEFAULT_KEEPALIVE_S, help="seconds between keepalive answers")
    parser.set_defaults(func=cmd_serve_grpc)
