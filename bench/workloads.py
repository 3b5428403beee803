"""The workloads of the benchmark, and the two torch variants that run them.

`engine` is our code path: `DiffusersEngine.generate_sync` (or `decode_full_sync` for U) with a
`GenerationRequest`, exactly as the bot calls it, on a pipeline in the engine's own dtype with a
TAESD-shaped tiny decoder. `baseline` is what a plain diffusers program does: a
`StableDiffusionPipeline` in fp32 with its default VAE, same model, sampler and steps, PNGs saved
with PIL. Peers live in bench/peers/.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from typing import Any

from bench.architectures import ARCHITECTURES, build_pipeline, build_tiny_decoder
from bench.flops import FlopReport
from bench.measure import ComponentTimer, counted_run

TORCH_VARIANTS = ("engine", "engine-tuned", "baseline")
PEERS = ("openvino", "sdcpp")
PROMPT = "a lighthouse on a cliff at dawn, oil painting, dramatic light"
SEEDS = (1001, 1002, 1003, 1004)
TINY_SIZE = 64


def prompt_for(index: int) -> str:
    """A new prompt per run (same length), as a new /imagine is: the text-embedding cache misses."""
    return f"{PROMPT}, take {index:03d}"


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    arch: str
    size: int
    count: int
    steps: int
    guidance: float
    kind: str = "txt2img"  # txt2img | upscale (U: full-quality decode of stored latents) | img2img
    strength: float = 1.0
    #: Run by default; `engine-tuned` runs only when asked for (`--variants engine-tuned`).
    variants: tuple[str, ...] = ("engine", "baseline")
    #: Fewer timed runs for a very slow configuration (the table's runs column shows it).
    runs: tuple[tuple[str, int], ...] = ()

    def runs_for(self, variant: str, default: int) -> int:
        return dict(self.runs).get(variant, default)

    def tiny(self) -> Workload:
        """The same workload on the tiny test model: every code path in a fraction of a second."""
        arch = "tiny" if ARCHITECTURES[self.arch].turbo else "tiny-sd"
        return dataclasses.replace(self, arch=arch, size=TINY_SIZE, steps=min(self.steps, 2), runs=())


WORKLOADS = {
    w.name: w
    for w in (
        Workload("grid512", "/imagine grid, 4×512², SD-Turbo, 1 step", "sd-turbo", 512, 4, 1, 0.0,
                 variants=("engine", "baseline", *PEERS), runs=(("baseline", 2), ("sdcpp", 1))),
        Workload("grid256", "/imagine grid, 4×256², SD-Turbo, 1 step", "sd-turbo", 256, 4, 1, 0.0, variants=("engine", "baseline", *PEERS)),
        Workload("sd15-256", "SD1.5, 1×256², 20 steps, guidance 7", "sd15", 256, 1, 20, 7.0, variants=("engine", "baseline")),
        Workload("upscale512", "U: full-quality decode of one 512² grid image", "sd-turbo", 512, 1, 1, 0.0, kind="upscale"),
        Workload("img2img256", "img2img grid, 4×256², SD-Turbo, strength 0.6", "sd-turbo", 256, 4, 2, 0.0, kind="img2img", strength=0.6),
        Workload("sdxl-grid512", "/imagine grid, 4×512², SDXL-Turbo, 1 step", "sdxl-turbo", 512, 4, 1, 0.0, runs=(("baseline", 1),)),
    )
}
DEFAULT_WORKLOADS = ("grid512", "grid256", "sd15-256", "upscale512", "img2img256")
QUICK_WORKLOADS = ("grid256", "img2img256")


def init_png(size: int) -> bytes:
    """A deterministic, structured init image for img2img (a gradient with a disc)."""
    from PIL import Image, ImageDraw

    image = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    ImageDraw.Draw(image).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=(200, 80, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def watch_pipeline(timer: ComponentTimer, pipe: Any, tiny_decoder: Any = None) -> None:
    for name in ("text_encoder", "text_encoder_2"):
        if getattr(pipe, name, None) is not None:
            timer.watch("text_encoder", getattr(pipe, name))
    timer.watch("unet", pipe.unet)
    timer.watch("decoder", pipe.vae.decoder)
    timer.watch("encoder", pipe.vae.encoder)
    if tiny_decoder is not None:
        timer.watch("decoder", tiny_decoder.decoder)


TUNING = "blocked self-attention in the UNet, channels_last VAE and tiny decoder"


def tune(engine: Any) -> None:
    """The changes proposed for the engine (see RESULTS.md), applied to its modules from outside.

    Neither changes what is computed, only the order of bf16 sums. The engine has applied both
    itself since 6ced8fb, so on today's engine this variant measures the same as `engine`; it is
    kept (opt-in) to reproduce RESULTS.md against older engines and as the place for the next
    proposal.
    """
    import torch

    from bench.attention import BlockedAttnProcessor

    model = next(iter(engine._loaded.values()))
    # 1. The UNet's long self-attentions as blocked bf16 matmuls (bench/attention.py).
    model.pipe.unet.set_attn_processor(BlockedAttnProcessor())
    # 2. oneDNN's bf16 convolutions run much faster on NHWC activations here; a convolution whose
    #    weight is channels_last makes PyTorch pick NHWC, so converting the modules is enough.
    model.pipe.vae.to(memory_format=torch.channels_last)
    if model.tiny_decoder is not None:
        model.tiny_decoder.to(memory_format=torch.channels_last)


class EngineRunner:
    """Our engine, called as the bot calls it."""

    def __init__(self, workload: Workload, *, tuned: bool = False) -> None:
        import engine.diffusers_engine as engine_module
        from engine.diffusers_engine import DiffusersEngine
        from engine.models import pick_dtype
        from engine.types import GenerationRequest

        dtype = pick_dtype("cpu")
        arch = ARCHITECTURES[workload.arch]
        self.workload = workload
        self.timer = ComponentTimer()
        pipe = build_pipeline(workload.arch, dtype)
        tiny = build_tiny_decoder(workload.arch, dtype)
        self.engine = DiffusersEngine.from_pipeline(pipe, arch.name, tiny_decoder=tiny)
        if tuned:
            tune(self.engine)
        watch_pipeline(self.timer, pipe, tiny)
        # Time PNG encoding where the engine calls it (module global), without changing what it does.
        plain = getattr(engine_module.encode_png, "__wrapped__", engine_module.encode_png)
        engine_module.encode_png = self.timer.wrap("png", plain)
        profile = self.engine.profile()
        grid = workload.kind == "upscale"  # U decodes one image of a grid of four
        self.request = GenerationRequest(
            prompt=PROMPT,
            width=workload.size,
            height=workload.size,
            seeds=SEEDS if grid else SEEDS[: workload.count],
            steps=workload.steps,
            guidance_scale=workload.guidance,
            sampler=profile.default_sampler,
            model=arch.name,
            init_image=init_png(workload.size) if workload.kind == "img2img" else None,
            strength=workload.strength,
        )
        self.results = self.engine.generate_sync(self.request) if grid else []
        self.notes = f"DiffusersEngine, {str(pipe.unet.dtype).removeprefix('torch.')}, tiny decoder for grids"
        if tuned:
            self.notes += "; + proposed: " + TUNING

    def run(self, index: int) -> list[bytes]:
        if self.workload.kind == "upscale":
            return [self.engine.decode_full_sync(self.request, self.results[index % len(self.results)])]
        return [result.png for result in self.engine.generate_sync(self.request.replace(prompt=prompt_for(index)))]

    def flops(self, index: int) -> FlopReport:
        return counted_run(self, index)


class BaselineRunner:
    """Plain diffusers: fp32, default VAE, the pipeline's own batching, PIL's PNG."""

    def __init__(self, workload: Workload) -> None:
        import torch
        from diffusers import (
            DPMSolverMultistepScheduler,
            StableDiffusionImg2ImgPipeline,
            StableDiffusionXLImg2ImgPipeline,
        )
        from PIL import Image

        self.workload = workload
        self.timer = ComponentTimer()
        self.pipe = build_pipeline(workload.arch, torch.float32)
        self.pipe.set_progress_bar_config(disable=True)
        if not ARCHITECTURES[workload.arch].turbo:  # the engine's default sampler for such models: DPM++ 2M Karras
            self.pipe.scheduler = DPMSolverMultistepScheduler.from_config(self.pipe.scheduler.config, use_karras_sigmas=True)
        watch_pipeline(self.timer, self.pipe)
        self.png = self.timer.wrap("png", _plain_png)
        if workload.kind == "img2img":
            cls = StableDiffusionXLImg2ImgPipeline if "XL" in type(self.pipe).__name__ else StableDiffusionImg2ImgPipeline
            self.img2img = cls(**self.pipe.components)
            self.img2img.set_progress_bar_config(disable=True)
            self.init = Image.open(io.BytesIO(init_png(workload.size))).convert("RGB")
        if workload.kind == "upscale":
            self.latents = self.pipe(**self._arguments(0, count=1), output_type="latent").images
        self.notes = "StableDiffusionPipeline, float32, full VAE"

    def _arguments(self, index: int, count: int) -> dict[str, Any]:
        import torch

        w = self.workload
        return {
            "prompt": prompt_for(index),
            "num_images_per_prompt": count,
            "num_inference_steps": w.steps,
            "guidance_scale": w.guidance,
            "generator": [torch.Generator("cpu").manual_seed(seed) for seed in SEEDS[:count]],
        }

    def run(self, index: int) -> list[bytes]:
        import torch

        w = self.workload
        if w.kind == "upscale":
            with torch.no_grad():
                vae = self.pipe.vae
                pixels = vae.decode(self.latents / vae.config.scaling_factor, return_dict=False)[0]
            return [self.png(image) for image in self.pipe.image_processor.postprocess(pixels, output_type="pil")]
        if w.kind == "img2img":
            images = self.img2img(**self._arguments(index, w.count), image=self.init, strength=w.strength).images
        else:
            images = self.pipe(**self._arguments(index, w.count), height=w.size, width=w.size).images
        return [self.png(image) for image in images]

    def flops(self, index: int) -> FlopReport:
        return counted_run(self, index)


def _plain_png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_runner(workload: Workload, variant: str) -> Any:
    if variant == "engine":
        return EngineRunner(workload)
    if variant == "engine-tuned":
        return EngineRunner(workload, tuned=True)
    if variant == "baseline":
        return BaselineRunner(workload)
    if variant == "openvino":
        from bench.peers.openvino_peer import OpenVinoRunner

        return OpenVinoRunner(workload)
    if variant == "sdcpp":
        from bench.peers.sdcpp_peer import SdCppRunner

        return SdCppRunner(workload)
    raise ValueError(f"unknown variant {variant!r}")
