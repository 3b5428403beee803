"""Real Stable Diffusion architectures with random weights, built offline from their published configs.

A model's cost on a CPU depends on its shapes, not on its weights, so a random-weight copy of
SD1.5, SD-Turbo (the SD2.1-base UNet with the OpenCLIP-H text encoder) or SDXL-Turbo costs what the
real one costs. PyTorch's default initialisation keeps activations in a normal range (no NaNs, no
denormals), which a fill with arbitrary numbers would not. The tokenizer is engine/testing's
character-level CLIP tokenizer with `model_max_length=77`: the text encoder's cost is per 77-token
window, and its embedding table keeps the real 49408 rows so memory is real too.

`tiny` is the test model of engine/testing: the same code paths in milliseconds, for smoke tests.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLIP_VOCAB = 49408
SEED = 20240
COMPONENTS = ("unet", "text_encoder", "text_encoder_2", "vae")


@dataclass(frozen=True)
class Architecture:
    """What a benchmark needs to know to build a model and to ask for images from it."""

    name: str  # the engine's model name; "turbo" in it makes the engine's profile a Turbo one
    family: str  # sd1 | sd2 | sdxl
    turbo: bool
    latent_scale: int = 8


ARCHITECTURES = {
    "sd15": Architecture("sd15", "sd1", turbo=False),
    "sd-turbo": Architecture("sd-turbo", "sd2", turbo=True),
    "sdxl-turbo": Architecture("sdxl-turbo", "sdxl", turbo=True),
    "tiny": Architecture("tiny-turbo", "sd1", turbo=True),
    "tiny-sd": Architecture("tiny-sd", "sd1", turbo=False),
}

# --- published configurations -------------------------------------------------------------------
SD_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
}
SD15_UNET = {"block_out_channels": (320, 640, 1280, 1280), "attention_head_dim": 8, "cross_attention_dim": 768, "sample_size": 64}
SD21_UNET = {
    "block_out_channels": (320, 640, 1280, 1280),
    "attention_head_dim": (5, 10, 20, 20),
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
    "sample_size": 64,
}
SDXL_UNET = {
    "sample_size": 64,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (5, 10, 20),
    "transformer_layers_per_block": (1, 2, 10),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
          "hidden_act": "quick_gelu", "projection_dim": 768}
OPENCLIP_H = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23, "num_attention_heads": 16,
              "hidden_act": "gelu", "projection_dim": 512}
OPENCLIP_BIGG = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
                 "hidden_act": "gelu", "projection_dim": 1280}
SD_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
                "steps_offset": 1}


def _tokenizer() -> Any:
    from transformers import CLIPTokenizer

    from engine.testing import write_tiny_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_tiny_tokenizer(Path(tmp))
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=77)


def _text_encoder(config: dict[str, Any], tokenizer: Any, projection: bool = False) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(
        CLIPTextConfig(
            vocab_size=CLIP_VOCAB,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **config,
        )
    ).eval()


def cache_dir() -> Path:
    return Path(os.environ.get("IMAGINE_BENCH_CACHE", Path.home() / ".cache" / "imagine-bench"))


def build_pipeline(arch: str, dtype: Any = None) -> Any:
    """A text-to-image pipeline of `arch` with random weights, in `dtype` (fp32 when None).

    The weights are drawn once (seeded) and kept in a safetensors file under `cache_dir()`: drawing
    1.3 billion random numbers takes half a minute here, loading them a few seconds. Every variant
    of a benchmark therefore runs the very same weights. Tensors are cast one by one as they load,
    so a bf16 model never holds an fp32 copy and its memory is what loading a real bf16 model takes.
    """
    import torch

    dtype = dtype or torch.float32
    if arch.startswith("tiny"):
        from engine.testing import build_tiny_pipeline

        return build_tiny_pipeline().to(dtype)
    from accelerate import init_empty_weights
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = cache_dir() / f"{arch}-{SEED}.safetensors"
    if not path.is_file():
        torch.manual_seed(SEED)
        pipe = _construct(arch, torch.float32)
        state = {f"{name}.{key}": tensor.contiguous() for name in COMPONENTS if getattr(pipe, name, None) is not None
                 for key, tensor in getattr(pipe, name).state_dict().items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        save_file(state, str(partial))
        partial.replace(path)
        del pipe, state
    with init_empty_weights(include_buffers=False):
        pipe = _construct(arch, dtype)
    with safe_open(str(path), framework="pt") as weights:
        keys = list(weights.keys())
        for name in COMPONENTS:
            module = getattr(pipe, name, None)
            if module is None:
                continue
            prefix = name + "."
            state = {key[len(prefix):]: weights.get_tensor(key).to(dtype) for key in keys if key.startswith(prefix)}
            module.load_state_dict(state, strict=True, assign=True)
    return pipe


def _construct(arch: str, dtype: Any) -> Any:
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        tokenizer = _tokenizer()
        scheduler_config = dict(SD_SCHEDULER)
        if ARCHITECTURES[arch].turbo:
            scheduler_config["timestep_spacing"] = "trailing"
        scheduler = EulerDiscreteScheduler(**scheduler_config)
        if arch == "sdxl-turbo":
            return StableDiffusionXLPipeline(
                vae=AutoencoderKL(**SD_VAE, scaling_factor=0.13025).eval(),
                text_encoder=_text_encoder(CLIP_L, tokenizer),
                text_encoder_2=_text_encoder(OPENCLIP_BIGG, tokenizer, projection=True),
                tokenizer=tokenizer,
                tokenizer_2=tokenizer,
                unet=UNet2DConditionModel(**SDXL_UNET).eval(),
                scheduler=scheduler,
            )
        unet, text = (SD15_UNET, CLIP_L) if arch == "sd15" else (SD21_UNET, OPENCLIP_H)
        return StableDiffusionPipeline(
            vae=AutoencoderKL(**SD_VAE).eval(),
            text_encoder=_text_encoder(text, tokenizer),
            tokenizer=tokenizer,
            unet=UNet2DConditionModel(**unet).eval(),
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    finally:
        torch.set_default_dtype(before)


def build_tiny_decoder(arch: str, dtype: Any = None) -> Any:
    """A TAESD-shaped `AutoencoderTiny` (its default config is TAESD's) with random weights."""
    import torch

    dtype = dtype or torch.float32
    if arch.startswith("tiny"):
        from engine.testing import build_tiny_decoder as build_test_decoder

        return build_test_decoder().to(dtype)
    from diffusers import AutoencoderTiny

    torch.manual_seed(SEED + 1)
    return AutoencoderTiny().to(dtype).eval()


def latent_shape(pipe: Any, count: int, size: int) -> tuple[int, int, int, int]:
    """The UNet's input shape for `count` images of `size` pixels."""
    scale = int(pipe.vae_scale_factor)
    return (count, int(pipe.unet.config.in_channels), size // scale, size // scale)


def parameter_count(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())
