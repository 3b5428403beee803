"""IMAGINE_ENGINE=stability: Stability AI's hosted REST API (v2beta `stable-image/generate`).

Stability's current hosted API is REST (its gRPC service is legacy), so this engine posts one
multipart request per image to `/v2beta/stable-image/generate/{core|ultra|sd3}` and maps every
documented error to a sentence a Discord user can act on. What the API cannot do (several samples,
steps, exact sizes, inpainting here) is either mapped (size -> the nearest supported aspect ratio)
or refused with a PromptError naming the parameter. The API key goes only into the authorization
header: it is kept out of every message and log line, even when the service echoes it back.
"""

from __future__ import annotations

import asyncio
import email.utils
import io
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from PIL import Image

from engine.base import Engine
from engine.config import EngineConfig
from engine.metadata import a1111_parameters, encode_png
from engine.types import (
    ContentFiltered,
    EngineUnavailable,
    FinishReason,
    GenerationRequest,
    ImageResult,
    ImagineError,
    ModelProfile,
    Progress,
    ProgressCallback,
    PromptError,
)

log = logging.getLogger(__name__)

API_URL = "https://api.stability.ai"
ASPECT_RATIOS = ("21:9", "16:9", "3:2", "5:4", "1:1", "4:5", "2:3", "9:16", "9:21")
MAX_REST_SEED = 4_294_967_294  # 0 means "random" to the API
MAX_PROMPT_CHARS = 10_000
DEFAULT_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class HostedModel:
    endpoint: str  # core | ultra | sd3
    model: str | None = None  # the sd3 endpoint's `model` field
    image_to_image: bool = True
    negative_prompt: bool = True
    cfg_scale: bool = False


MODELS: dict[str, HostedModel] = {
    "core": HostedModel("core", image_to_image=False),
    "ultra": HostedModel("ultra"),
    "sd3.5-large": HostedModel("sd3", "sd3.5-large", cfg_scale=True),
    "sd3.5-large-turbo": HostedModel("sd3", "sd3.5-large-turbo", negative_prompt=False, cfg_scale=True),
    "sd3.5-medium": HostedModel("sd3", "sd3.5-medium", cfg_scale=True),
}
DEFAULT_MODEL = "core"


def nearest_aspect_ratio(request: GenerationRequest) -> str:
    """The API takes only its nine ratios: use the request's when it is one, else the closest."""
    if request.aspect_ratio in ASPECT_RATIOS:
        return request.aspect_ratio
    wanted = request.width / request.height

    def distance(ratio: str) -> float:
        w, h = ratio.split(":")
        return abs(int(w) / int(h) - wanted)

    return min(ASPECT_RATIOS, key=distance)


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class StabilityEngine(Engine):
    slots = 2  # the API runs jobs in parallel; two keeps well under its 150 requests / 10 s

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = 2,
        max_retry_wait: float = 60.0,
    ) -> None:
        self.config = config or EngineConfig.from_env()
        if not self.config.stability_api_key:
            raise EngineUnavailable("IMAGINE_ENGINE=stability needs STABILITY_API_KEY (from platform.stability.ai).")
        self._key = self.config.stability_api_key
        self.base_url = (base_url or os.environ.get("IMAGINE_STABILITY_URL") or API_URL).rstrip("/")
        self.default_model = self.config.model if self.config.model in MODELS else DEFAULT_MODEL
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self._session: aiohttp.ClientSession | None = None

    # --- what front-ends ask before a job ---------------------------------------------------------
    def _name(self, model: str | None) -> str:
        name = model or self.default_model
        if name not in MODELS:
            raise PromptError(f"Unknown model {name!r}. Available on Stability: {', '.join(MODELS)}.", "model")
        return name

    def profile(self, model: str | None = None) -> ModelProfile:
        name = self._name(model)
        guidance = 4.0 if MODELS[name].cfg_scale else 7.0
        return ModelProfile(name, "sdxl", 1024, default_steps=25, default_guidance=guidance, default_sampler="euler")

    def models(self) -> list[str]:
        return list(MODELS)

    def describe(self) -> dict[str, Any]:
        return {"engine": "stability", "model": self.default_model, "url": self.base_url}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "[key]") if self._key else text

    # --- a job ------------------------------------------------------------------------------------
    async def generate(
        self, request: GenerationRequest, on_progress: ProgressCallback | None = None, preview: bool = False
    ) -> list[ImageResult]:
        name = self._name(request.model)
        hosted = MODELS[name]
        if request.mask is not None:
            raise PromptError("Inpainting (a mask) is not available with Stability's hosted engine.", "mask")
        if request.init_image is not None and not hosted.image_to_image:
            others = ", ".join(n for n, m in MODELS.items() if m.image_to_image)
            raise PromptError(f"Stability's {name} model cannot start from an image; use --model with one of {others}.", "model")
        if len(request.prompt) > MAX_PROMPT_CHARS:
            raise PromptError(f"Stability takes prompts up to {MAX_PROMPT_CHARS} characters.", "prompt")
        results = []
        for index, seed in enumerate(request.seeds):  # the API makes one image per request
            results.append(await self._one(request, name, hosted, index, seed))
            if on_progress is not None:
                on_progress(Progress(index + 1, request.num_images))
        return results

    def _form(self, request: GenerationRequest, hosted: HostedModel, seed: int) -> aiohttp.FormData:
        form = aiohttp.FormData()
        form.add_field("prompt", request.prompt)
        if request.negative_prompt and hosted.negative_prompt:
            form.add_field("negative_prompt", request.negative_prompt)
        if request.init_image is not None:
            form.add_field("image", request.init_image, filename="init.png", content_type="image/png")
            form.add_field("strength", f"{request.strength:g}")
            if hosted.endpoint == "sd3":
                form.add_field("mode", "image-to-image")
        else:
            form.add_field("aspect_ratio", nearest_aspect_ratio(request))
        form.add_field("seed", str(seed % (MAX_REST_SEED + 1)))
        if request.style:
            form.add_field("style_preset", request.style)
        if hosted.model:
            form.add_field("model", hosted.model)
        if hosted.cfg_scale:
            form.add_field("cfg_scale", f"{min(10.0, max(1.0, request.guidance_scale)):g}")
        form.add_field("output_format", "png")
        return form

    async def _one(self, request: GenerationRequest, name: str, hosted: HostedModel, index: int, seed: int) -> ImageResult:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        url = f"{self.base_url}/v2beta/stable-image/generate/{hosted.endpoint}"
        headers = {"authorization": f"Bearer {self._key}", "accept": "image/*"}
        for attempt in range(self.max_retries + 1):
            try:
                async with self._session.post(url, data=self._form(request, hosted, seed), headers=headers) as response:
                    body = await response.read()
                    if response.status == 200:
                        return self._result(request, name, index, seed, body, response.headers)
                    wait = retry_after_seconds(response.headers.get("retry-after"))
                    if response.status == 429 and attempt < self.max_retries and (wait or 0) <= self.max_retry_wait:
                        wait = 10.0 if wait is None else wait
                        log.warning("Stability rate limit (429); retrying in %.1f s", wait)
                        await asyncio.sleep(wait)
                        continue
                    raise self._error(response.status, body, wait)
            except (aiohttp.ClientError, TimeoutError) as error:
                raise EngineUnavailable(f"Cannot reach Stability's API: {self._redact(str(error)) or type(error).__name__}.") from None
        raise AssertionError("unreachable")

    def _result(self, request: GenerationRequest, name: str, index: int, seed: int, body: bytes, headers: Any) -> ImageResult:
        try:
            with Image.open(io.BytesIO(body)) as image:
                image.load()
                image = image.convert("RGB")
        except OSError as error:
            raise EngineUnavailable("Stability answered with something that is not an image.") from error
        reason = headers.get("finish-reason", "SUCCESS").upper()
        used_seed = int(headers["seed"]) if headers.get("seed", "").isdigit() else seed
        parameters = a1111_parameters(request.replace(width=image.width, height=image.height), used_seed, f"stability-{name}")
        return ImageResult(
            png=encode_png(image, parameters),
            seed=used_seed,
            index=index,
            width=image.width,
            height=image.height,
            finish_reason=FinishReason.FILTERED if reason == "CONTENT_FILTERED" else FinishReason.ERROR if reason == "ERROR" else FinishReason.OK,
            parameters=parameters,
        )

    def _error(self, status: int, body: bytes, retry_after: float | None) -> ImagineError:
        """One sentence per documented status; the service's own words where it gives some."""
        detail = self._redact(_error_text(body))
        said = f": {detail}" if detail else "."
        if status == 400:
            return PromptError(f"Stability rejected the request{said}")
        if status == 401:
            return EngineUnavailable("Stability refused the API key (401): check STABILITY_API_KEY.")
        if status == 402:
            return EngineUnavailable("The Stability account is out of credits (402): add credits at platform.stability.ai.")
        if status == 403:
            return ContentFiltered("Stability's content moderation refused this request (403).")
        if status == 413:
            return PromptError("The request is over Stability's 10 MiB limit (413): use a smaller init image.", "image")
        if status == 422:
            return PromptError(f"Stability could not accept this request (422){said}")
        if status == 429:
            when = f"in {retry_after:.0f} s" if retry_after is not None else "in a minute"
            return EngineUnavailable(f"Stability is rate-limiting this bot (429); try again {when}.")
        if status >= 500:
            return EngineUnavailable(f"Stability had an internal error ({status}); try again later.")
        return EngineUnavailable(f"Stability answered {status}{said}")


def _error_text(body: bytes, limit: int = 300) -> str:
    """The `errors` list of Stability's `{id, name, errors}` error body, short."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    errors = data.get("errors") if isinstance(data, dict) else None
    text = "; ".join(str(e) for e in errors) if isinstance(errors, list) else ""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
