"""The in-process engine: diffusers pipelines on this machine's CPU or GPU.

One worker thread owns every pipeline: torch work never runs on the event loop, and jobs never
race for the model's memory. Asyncio callers await `generate`, which hands the job to that thread
and forwards its progress back to the loop.

A job reads top to bottom in `generate_sync`: pick the model, build the prompt embeddings (compel),
pick the scheduler, run the UNet to latents, decode each image, and write PNGs with metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import io
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from engine.base import Engine
from engine.config import EngineConfig, model_name
from engine.metadata import a1111_parameters, encode_png
from engine.models import (
    guess_profile,
    load_pipeline,
    load_tiny_decoder,
    pick_device,
    pick_dtype,
    profile_from_pipeline,
)
from engine.samplers import make_scheduler
from engine.styles import apply_style
from engine.types import (
    FinishReason,
    GenerationRequest,
    ImageResult,
    JobCancelled,
    ModelProfile,
    Progress,
    ProgressCallback,
    PromptError,
)
from engine.weights import to_compel

log = logging.getLogger(__name__)

# Linear maps from the 4 latent channels to RGB: a free preview with no decoder at all.
# Community-measured least-squares fits (the ones every SD UI uses for its live previews).
LATENT_RGB = {
    "sd1": ((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350), (-0.2829, 0.1762, 0.2721), (-0.2120, -0.2616, -0.7177)),
    "sdxl": ((0.3920, 0.4054, 0.4549), (-0.2634, -0.0196, 0.0653), (0.0568, 0.1687, -0.0755), (-0.3112, -0.2359, -0.2076)),
}
EMBEDDING_CACHE_SIZE = 32


@dataclass
class LoadedModel:
    name: str
    spec: str
    pipe: Any  # the text-to-image pipeline; the others share its components
    profile: ModelProfile
    compel: Any
    scheduler_config: Any
    tiny_decoder: Any = None
    variants: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, name: str, spec: str, pipe: Any, profile: ModelProfile, tiny_decoder: Any) -> LoadedModel:
        if "XL" in type(pipe).__name__:
            from compel import CompelForSDXL as compel_cls
        else:
            from compel import CompelForSD as compel_cls
        return cls(name, spec, pipe, profile, compel_cls(pipe), pipe.scheduler.config, tiny_decoder)

    def pipeline(self, kind: str) -> Any:
        """The txt2img, img2img or inpaint pipeline, all over one set of weights."""
        if kind == "txt2img":
            return self.pipe
        if kind not in self.variants:
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

            cls = AutoPipelineForImage2Image if kind == "img2img" else AutoPipelineForInpainting
            self.variants[kind] = cls.from_pipe(self.pipe)
            self.variants[kind].set_progress_bar_config(disable=True)
        return self.variants[kind]


def _open_image(data: bytes, size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.convert(mode).resize(size, Image.Resampling.LANCZOS)


@contextlib.contextmanager
def seamless(modules: list[Any], enabled: bool) -> Iterator[None]:
    """Circular padding in every convolution makes the image wrap around: a seamless tile."""
    import torch

    if not enabled:
        yield
        return
    convs = [m for module in modules for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    before = [m.padding_mode for m in convs]
    for m in convs:
        m.padding_mode = "circular"
    try:
        yield
    finally:
        for m, mode in zip(convs, before, strict=True):
            m.padding_mode = mode


@contextlib.contextmanager
def upcast_to_fp32(module: Any, enabled: bool) -> Iterator[None]:
    import torch

    if not enabled:
        yield
        return
    dtype = module.dtype
    module.to(torch.float32)
    try:
        yield
    finally:
        module.to(dtype)


class DiffusersEngine(Engine):
    slots = 1

    def __init__(self, config: EngineConfig | None = None, *, model: str | None = None) -> None:
        self.config = config or EngineConfig.from_env()
        self.specs = self.config.model_specs()
        self.default_model = model_name(model) if model else next(iter(self.specs))
        if model:
            self.specs = {self.default_model: model, **{k: v for k, v in self.specs.items() if k != self.default_model}}
        self.device = pick_device(self.config.device)
        self.dtype = pick_dtype(self.device, self.config.dtype)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imagine-engine")
        self._loaded: dict[str, LoadedModel] = {}
        self._embeddings: OrderedDict[tuple[str, str, str | None], Any] = OrderedDict()

    @classmethod
    def from_pipeline(
        cls, pipe: Any, name: str, *, tiny_decoder: Any = None, profile: ModelProfile | None = None
    ) -> DiffusersEngine:
        """An engine around a pipeline already in memory (benchmarks build random-weight models this way)."""
        engine = cls(EngineConfig(model=name, device=str(pipe.device), dtype=str(pipe.unet.dtype).removeprefix("torch.")))
        pipe.set_progress_bar_config(disable=True)
        engine._tune(pipe, tiny_decoder)
        profile = profile or profile_from_pipeline(name, name, pipe)
        engine._loaded[name] = LoadedModel.build(name, name, pipe, profile, tiny_decoder)
        return engine

    def _tune(self, pipe: Any, tiny_decoder: Any) -> None:
        """Faster CPU kernels for the same arithmetic (measured in bench/RESULTS.md).

        Long UNet self-attentions run in cache-sized blocks, and the decoders' convolutions in
        channels_last, where oneDNN's bf16 kernels run up to twice as fast here.
        """
        import torch

        if str(pipe.device) != "cpu":
            return
        if self.config.cpu_attention == "blocked":
            from engine.attention import BlockedAttnProcessor

            pipe.unet.set_attn_processor(BlockedAttnProcessor())
        for decoder in (pipe.vae, tiny_decoder):
            if decoder is not None:
                decoder.to(memory_format=torch.channels_last)

    # --- what front-ends ask before a job ---------------------------------------------------------
    def _name(self, model: str | None) -> str:
        name = model or self.default_model
        if name not in self.specs:
            allowed = ", ".join(self.specs)
            raise PromptError(f"Unknown model {name!r}. Available: {allowed}.", "model")
        return name

    def profile(self, model: str | None = None) -> ModelProfile:
        name = self._name(model)
        if name in self._loaded:
            return self._loaded[name].profile
        return guess_profile(name, self.specs[name], self.config.model_config)

    def models(self) -> list[str]:
        return list(self.specs)

    def describe(self) -> dict[str, Any]:
        return {"engine": "local", "model": self.default_model, "device": self.device, "dtype": str(self.dtype).removeprefix("torch.")}

    # --- asyncio side -------------------------------------------------------------------------------
    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def start(self) -> None:
        await self._run(self._model, None)

    async def generate(
        self, request: GenerationRequest, on_progress: ProgressCallback | None = None, preview: bool = False
    ) -> list[ImageResult]:
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        caller = contextvars.copy_context()  # callbacks run in the caller's context, not the worker's
        report = None
        if on_progress is not None:
            def report(progress: Progress) -> None:
                loop.call_soon_threadsafe(on_progress, progress, context=caller)
        try:
            return await self._run(self.generate_sync, request, report, preview, cancel)
        except asyncio.CancelledError:
            cancel.set()  # the worker stops at its next step
            raise

    async def decode_full(self, request: GenerationRequest, result: ImageResult) -> bytes:
        return await self._run(self.decode_full_sync, request, result)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- the worker thread --------------------------------------------------------------------------
    def _model(self, model: str | None) -> LoadedModel:
        name = self._name(model)
        if name not in self._loaded:
            spec = self.specs[name]
            log.info("loading model %s from %s on %s (%s)", name, spec, self.device, self.dtype)
            pipe = load_pipeline(spec, device=self.device, dtype=self.dtype, config_dir=self.config.model_config)
            profile = profile_from_pipeline(name, spec, pipe)
            tiny = load_tiny_decoder(self.config.tiny_decoder, profile.family, spec, device=self.device, dtype=self.dtype)
            self._tune(pipe, tiny)
            self._loaded[name] = LoadedModel.build(name, spec, pipe, profile, tiny)
        return self._loaded[name]

    def _embed(self, model: LoadedModel, positive: str, negative: str | None) -> Any:
        """Prompt embeddings through compel, cached: 🔄 and variations reuse the same prompt.

        `negative` is None when the job runs without guidance: nothing would read its embedding.
        """
        import torch

        key = (model.name, positive, negative)
        if key in self._embeddings:
            self._embeddings.move_to_end(key)
            return self._embeddings[key]
        with torch.inference_mode():
            conditioning = model.compel(positive, negative_prompt=negative)
        self._embeddings[key] = conditioning
        while len(self._embeddings) > EMBEDDING_CACHE_SIZE:
            self._embeddings.popitem(last=False)
        return conditioning

    def generate_sync(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        preview: bool = False,
        cancel: threading.Event | None = None,
    ) -> list[ImageResult]:
        import torch

        model = self._model(request.model)
        profile = model.profile
        request.validate(profile.size_multiple)
        count = request.num_images
        size = (request.width, request.height)

        # 1. Text: weights (A1111 and Midjourney syntax) into compel's syntax, then the style
        # template around it (after, so a style's own words never become a `::` segment).
        weighted, extra_negative = to_compel(request.prompt)
        negative = ", ".join(part for part in (request.negative_prompt, extra_negative) if part)
        negative, _ = to_compel(negative) if negative else ("", "")
        positive, negative = apply_style(weighted, negative, request.style)
        guided = request.guidance_scale > 1  # diffusers' rule for classifier-free guidance
        conditioning = self._embed(model, positive, negative if guided else None)
        embeds = conditioning.embeds.repeat(count, 1, 1)
        negative_embeds = conditioning.negative_embeds.repeat(count, 1, 1) if guided else None
        if request.chaos:
            embeds = self._add_chaos(embeds, request)

        # 2. Scheduler and pipeline for this kind of job.
        kind = "inpaint" if request.mask else "img2img" if request.init_image else "txt2img"
        pipe = model.pipeline(kind)
        pipe.scheduler = make_scheduler(request.sampler, model.scheduler_config, turbo=profile.turbo)
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in request.seeds]

        def on_step(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if cancel is not None and cancel.is_set():
                raise JobCancelled("The job was cancelled.")
            if on_progress is not None:
                image = self._preview(tensors["latents"], profile) if preview else None
                on_progress(Progress(step + 1, pipeline.num_timesteps, image))
            return tensors

        kwargs: dict[str, Any] = {
            "prompt_embeds": embeds,
            "negative_prompt_embeds": negative_embeds,
            "guidance_scale": request.guidance_scale,
            "num_inference_steps": request.steps,
            "generator": generators,
            "output_type": "latent",
            "callback_on_step_end": on_step,
        }
        if conditioning.pooled_embeds is not None:
            kwargs["pooled_prompt_embeds"] = conditioning.pooled_embeds.repeat(count, 1)
            if guided:
                kwargs["negative_pooled_prompt_embeds"] = conditioning.negative_pooled_embeds.repeat(count, 1)
        init = mask = None
        if request.init_image is not None:
            init = _open_image(request.init_image, size)
            kwargs["image"] = init if request.mask is not None else self._encode_once(pipe, init, generators)
            kwargs["strength"] = request.strength
            # img2img runs int(steps * strength) steps; at least one, or diffusers refuses.
            kwargs["num_inference_steps"] = max(request.steps, math.ceil(1 / request.strength))
        if request.mask is not None:
            mask = _open_image(request.mask, size, "L")
            kwargs["mask_image"] = mask
        if kind != "img2img":
            kwargs["width"], kwargs["height"] = size

        # 3. Denoise to latents; 4. decode each image on its own (bounded memory, batch-independent).
        # A grid is a preview to pick from: the tiny decoder does it at a fraction of the full VAE's
        # cost, and U1-U4 later decode the kept latents at full quality. A single image is final.
        fast = count > 1 and model.tiny_decoder is not None
        with torch.inference_mode(), seamless([pipe.unet, pipe.vae], request.tiling):
            latents = pipe(**kwargs).images
        images = [self._decode(model, latents[i : i + 1], init, mask, fast=fast, tiling=request.tiling) for i in range(count)]
        return [self._result(request, model, index, image, latents[index : index + 1]) for index, image in enumerate(images)]

    def _encode_once(self, pipe: Any, init: Image.Image, generators: list[Any]) -> Any:
        """The init image's latents for every seed from ONE VAE encode (diffusers encodes per image).

        Each image still draws its own posterior sample from its own generator, in the order
        diffusers would, so the results are the same as the pipeline's own encode.
        """
        import torch

        vae = pipe.vae
        pixels = pipe.image_processor.preprocess(init).to(vae.device, vae.dtype)
        with torch.inference_mode():
            posterior = vae.encode(pixels).latent_dist
        latents = torch.cat([posterior.sample(generator=generator) for generator in generators])
        return (latents - (getattr(vae.config, "shift_factor", None) or 0.0)) * vae.config.scaling_factor

    def _add_chaos(self, embeds: Any, request: GenerationRequest) -> Any:
        """--chaos: nudge each image's text embedding by seeded noise, so the four differ more."""
        import torch

        scale = request.chaos / 100 * 0.5 * float(embeds.float().std())
        noisy = []
        for i, seed in enumerate(request.seeds):
            generator = torch.Generator("cpu").manual_seed(seed ^ 0xC4A05)
            noise = torch.randn(embeds.shape[1:], generator=generator).to(embeds.device, embeds.dtype)
            noisy.append(embeds[i] + scale * noise)
        return torch.stack(noisy)

    def _decode(
        self,
        model: LoadedModel,
        latents: Any,
        init: Image.Image | None,
        mask: Image.Image | None,
        *,
        fast: bool = False,
        tiling: bool = False,
    ) -> Image.Image:
        import torch

        vae = model.tiny_decoder if fast else model.pipe.vae
        # SDXL's VAE overflows in fp16 (NaN images); its config asks for fp32, as diffusers does.
        upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        with torch.inference_mode(), seamless([vae], tiling), upcast_to_fp32(vae, upcast):
            pixels = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        if torch.isnan(pixels).any():
            raise FloatingPointError("the VAE produced NaNs")
        image = model.pipe.image_processor.postprocess(pixels.float(), output_type="pil")[0]
        if mask is not None and init is not None:
            # Outside the mask the user's pixels come back untouched, not a VAE round trip of them.
            image = model.pipe.image_processor.apply_overlay(mask, init, image)
        return image

    def _result(self, request: GenerationRequest, model: LoadedModel, index: int, image: Image.Image, latents: Any) -> ImageResult:
        from safetensors.torch import save

        seed = request.seeds[index]
        parameters = a1111_parameters(request, seed, model.name)
        return ImageResult(
            png=encode_png(image, parameters),
            seed=seed,
            index=index,
            width=image.width,
            height=image.height,
            finish_reason=FinishReason.OK,
            latents=save({"latents": latents.detach().float().cpu().contiguous()}),
            parameters=parameters,
        )

    def decode_full_sync(self, request: GenerationRequest, result: ImageResult) -> bytes:
        """Decode stored latents with the full VAE: the U buttons' full-quality image, no UNet run."""
        if result.latents is None:
            return result.png
        from safetensors.torch import load

        model = self._model(request.model)
        size = (request.width, request.height)
        init = _open_image(request.init_image, size) if request.init_image and request.mask else None
        mask = _open_image(request.mask, size, "L") if request.mask else None
        latents = load(result.latents)["latents"].to(model.pipe.device)
        image = self._decode(model, latents, init, mask, tiling=request.tiling)
        return encode_png(image, result.parameters or a1111_parameters(request, result.seed, model.name))

    def _preview(self, latents: Any, profile: ModelProfile) -> bytes:
        """A small JPEG of the batch straight from the latents: costs microseconds, no decoder."""
        import torch

        from engine.grid import make_grid

        factors = torch.tensor(LATENT_RGB["sdxl" if profile.family == "sdxl" else "sd1"], dtype=torch.float32)
        rgb = torch.einsum("bchw,cr->bhwr", latents.detach().float().cpu()[:, :4], factors)
        rgb = ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
        tiles = [Image.fromarray(tile).resize((tile.shape[1] * 4, tile.shape[0] * 4), Image.Resampling.BILINEAR) for tile in rgb]
        buffer = io.BytesIO()
        make_grid(tiles).save(buffer, format="JPEG", quality=70)
        return buffer.getvalue()
