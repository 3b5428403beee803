"""IMAGINE_ENGINE=stability against a local aiohttp server that answers as Stability's v2beta docs say."""

from __future__ import annotations

import io
import logging
import time

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image

from engine.config import EngineConfig
from engine.stability import StabilityEngine, nearest_aspect_ratio, retry_after_seconds
from engine.types import ContentFiltered, EngineUnavailable, FinishReason, GenerationRequest, PromptError
from tests.engine.netfixtures import png_of

KEY = "sk-test-0123456789"
ASPECT_RATIOS = {"16:9", "1:1", "21:9", "2:3", "3:2", "4:5", "5:4", "9:16", "9:21"}
STYLES = {"3d-model", "analog-film", "anime", "cinematic", "comic-book", "digital-art", "enhance", "fantasy-art",
          "isometric", "line-art", "low-poly", "modeling-compound", "neon-punk", "origami", "photographic",
          "pixel-art", "tile-texture"}
ERRORS = {
    400: ("bad_request", "prompt: cannot be blank"),
    401: ("unauthorized", "authorization: missing or invalid API key " + KEY),
    402: ("payment_required", "You lack sufficient credits to make this request."),
    403: ("content_moderation", "Your request was flagged by our content moderation system."),
    413: ("payload_too_large", "Your request was larger than 10MiB."),
    422: ("invalid_language", "English is the only supported language for this service."),
    500: ("internal_error", "An unexpected server error has occurred."),
}


class FakeStability:
    """The parts of v2beta we use: multipart in, raw image out (accept: image/*), documented errors."""

    def __init__(self) -> None:
        self.forms: list[dict] = []
        self.rate_limited = 0
        self.retry_after = "0.2"
        self.calls = 0

    def error(self, status: int, name: str, message: str) -> web.Response:
        body = {"id": "a1b2c3", "name": name, "errors": [message]}
        return web.json_response(body, status=status)

    async def generate(self, request: web.Request) -> web.Response:
        self.calls += 1
        endpoint = request.match_info["endpoint"]
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return self.error(401, *ERRORS[401])
        if request.headers.get("accept") not in ("image/*", "application/json"):
            return self.error(400, "bad_request", "accept: must be image/* or application/json")
        form = await request.post()
        fields = {k: (v.file.read() if hasattr(v, "file") else v) for k, v in form.items()}
        self.forms.append({"endpoint": endpoint, **fields})
        problem = self.validate(endpoint, fields)
        if problem:
            return self.error(400, "bad_request", problem)
        prompt = fields["prompt"]
        for status, (name, message) in ERRORS.items():
            if prompt == f"status {status}":
                return self.error(status, name, message)
        if prompt == "busy":
            if self.rate_limited > 0:
                self.rate_limited -= 1
                response = self.error(429, "rate_limit_exceeded", "You have exceeded the rate limit of 150 requests within a 10 second period.")
                response.headers["retry-after"] = self.retry_after
                return response
        seed = int(fields.get("seed", "0")) or 987654
        reason = "CONTENT_FILTERED" if prompt == "something unsafe" else "SUCCESS"
        size = {"1:1": (64, 64), "16:9": (112, 64), "9:16": (64, 112)}.get(fields.get("aspect_ratio", "1:1"), (96, 64))
        image = io.BytesIO()
        Image.new("RGB", size, (seed % 256, 90, 30)).save(image, format="PNG")
        return web.Response(body=image.getvalue(), content_type="image/png", headers={"finish-reason": reason, "seed": str(seed)})

    @staticmethod
    def validate(endpoint: str, fields: dict) -> str | None:
        if endpoint not in ("core", "ultra", "sd3"):
            return f"unknown endpoint {endpoint}"
        if not fields.get("prompt") or len(fields["prompt"]) > 10000:
            return "prompt: required, at most 10000 characters"
        if fields.get("output_format") not in ("png", "jpeg", "webp"):
            return "output_format: must be png, jpeg or webp"
        if "seed" in fields and not 0 <= int(fields["seed"]) <= 4294967294:
            return "seed: must be in 0..4294967294"
        if "style_preset" in fields and fields["style_preset"] not in STYLES:
            return "style_preset: unknown"
        if "image" in fields:
            if endpoint == "core":
                return "image: not accepted by core"
            if "aspect_ratio" in fields:
                return "aspect_ratio: not accepted with image"
            if not 0 <= float(fields.get("strength", -1)) <= 1:
                return "strength: required with image, 0..1"
            if endpoint == "sd3" and fields.get("mode") != "image-to-image":
                return "mode: must be image-to-image with an image"
        elif fields.get("aspect_ratio", "1:1") not in ASPECT_RATIOS:
            return "aspect_ratio: unknown"
        if "cfg_scale" in fields and (endpoint != "sd3" or not 1 <= float(fields["cfg_scale"]) <= 10):
            return "cfg_scale: sd3 only, 1..10"
        if "model" in fields and endpoint != "sd3":
            return "model: sd3 only"
        return None


@pytest.fixture
async def stability():
    fake = FakeStability()
    app = web.Application()
    app.router.add_post("/v2beta/stable-image/generate/{endpoint}", fake.generate)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("")).rstrip("/")
    yield fake
    await server.close()


def engine_for(fake: FakeStability, key: str = KEY, model: str = "core", **options) -> StabilityEngine:
    return StabilityEngine(EngineConfig(engine="stability", model=model, stability_api_key=key), base_url=fake.url, **options)


def request(prompt: str = "a fox in snow", **changes) -> GenerationRequest:
    fields = {"width": 1024, "height": 1024, "seeds": (11,), **changes}
    return GenerationRequest(prompt=prompt, **fields)


async def test_txt2img_sends_the_documented_fields_and_reads_seed_and_metadata(stability):
    engine = engine_for(stability)
    results = await engine.generate(request(negative_prompt="blurry", style="anime", seeds=(11, 12), aspect_ratio="16:9", width=1344, height=768))
    await engine.close()
    assert [r.seed for r in results] == [11, 12]
    assert all(r.finish_reason is FinishReason.OK for r in results)
    assert (results[0].width, results[0].height) == (112, 64)
    form = stability.forms[0]
    assert form["endpoint"] == "core"
    assert {k: form[k] for k in ("prompt", "negative_prompt", "aspect_ratio", "seed", "style_preset", "output_format")} == {
        "prompt": "a fox in snow", "negative_prompt": "blurry", "aspect_ratio": "16:9", "seed": "11",
        "style_preset": "anime", "output_format": "png",
    }
    assert "Seed: 11" in results[0].parameters and "Model: stability-core" in results[0].parameters


async def test_img2img_on_sd3_and_random_seed_from_the_header(stability):
    engine = engine_for(stability, model="sd3.5-large")
    results = await engine.generate(request(init_image=png_of((10, 20, 30)), strength=0.35, seeds=(0,), guidance_scale=30))
    await engine.close()
    form = stability.forms[0]
    assert form["endpoint"] == "sd3" and form["model"] == "sd3.5-large" and form["mode"] == "image-to-image"
    assert form["strength"] == "0.35" and form["image"] == png_of((10, 20, 30)) and form["cfg_scale"] == "10"
    assert results[0].seed == 987654  # seed 0 asks the service for a random one; the header says which


async def test_content_filtered_header_is_a_filtered_result(stability):
    engine = engine_for(stability)
    results = await engine.generate(request("something unsafe"))
    await engine.close()
    assert results[0].finish_reason is FinishReason.FILTERED


@pytest.mark.parametrize(
    ("status", "error", "words"),
    [
        (400, PromptError, "Stability rejected the request: prompt: cannot be blank"),
        (402, EngineUnavailable, "out of credits"),
        (403, ContentFiltered, "content moderation"),
        (413, PromptError, "10 MiB"),
        (422, PromptError, "English is the only supported language"),
        (500, EngineUnavailable, "internal error (500)"),
    ],
)
async def test_each_documented_error_is_a_clear_message(stability, status, error, words):
    engine = engine_for(stability)
    with pytest.raises(error) as caught:
        await engine.generate(request(f"status {status}"))
    await engine.close()
    assert words in str(caught.value)
    assert KEY not in str(caught.value)


async def test_bad_key_is_401_and_the_key_never_appears(stability, caplog):
    caplog.set_level(logging.DEBUG)
    engine = engine_for(stability, key="sk-wrong-key")
    with pytest.raises(EngineUnavailable, match="refused the API key") as caught:
        await engine.generate(request())
    await engine.close()
    assert "sk-wrong-key" not in str(caught.value) and "sk-wrong-key" not in caplog.text
    assert "sk-wrong-key" not in repr(engine.config)


async def test_429_waits_the_retry_time_then_succeeds(stability):
    stability.rate_limited = 2
    engine = engine_for(stability)
    started = time.monotonic()
    results = await engine.generate(request("busy"))
    await engine.close()
    assert results[0].seed == 11
    assert stability.calls == 3
    assert time.monotonic() - started >= 0.4  # two waits of the 0.2 s the service asked for


async def test_429_gives_up_after_bounded_retries_or_a_long_wait(stability):
    stability.rate_limited = 10
    engine = engine_for(stability, max_retries=1)
    with pytest.raises(EngineUnavailable, match="rate-limiting"):
        await engine.generate(request("busy"))
    assert stability.calls == 2
    stability.retry_after = "600"
    with pytest.raises(EngineUnavailable, match="try again in 600 s"):
        await engine.generate(request("busy"))
    assert stability.calls == 3  # a 10-minute wait is not worth holding the job: fail at once
    await engine.close()


async def test_what_the_api_cannot_do_is_refused_before_sending(stability):
    engine = engine_for(stability)
    with pytest.raises(PromptError, match="cannot start from an image") as caught:
        await engine.generate(request(init_image=png_of((1, 2, 3))))
    assert caught.value.parameter == "model"
    with pytest.raises(PromptError, match="Inpainting"):
        await engine.generate(request(init_image=png_of((1, 2, 3)), mask=png_of((0, 0, 0))))
    with pytest.raises(PromptError, match="Unknown model"):
        await engine.generate(request(model="sdxl"))
    await engine.close()
    assert stability.calls == 0


async def test_unreachable_service_is_engine_unavailable():
    engine = StabilityEngine(EngineConfig(engine="stability", stability_api_key=KEY), base_url="http://127.0.0.1:9")
    with pytest.raises(EngineUnavailable, match="Cannot reach Stability"):
        await engine.generate(request())
    await engine.close()


def test_no_key_is_a_clear_startup_error():
    with pytest.raises(EngineUnavailable, match="STABILITY_API_KEY"):
        StabilityEngine(EngineConfig(engine="stability"))


def test_aspect_ratio_and_retry_after_parsing():
    assert nearest_aspect_ratio(request(aspect_ratio="3:2")) == "3:2"
    assert nearest_aspect_ratio(request(aspect_ratio="7:4", width=1344, height=768)) == "16:9"
    assert nearest_aspect_ratio(request(aspect_ratio="1:3", width=576, height=1728)) == "9:21"
    assert retry_after_seconds("12") == 12 and retry_after_seconds(None) is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0
