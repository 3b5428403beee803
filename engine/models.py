"""Finding, sizing up and loading Stable Diffusion models.

A model can be a diffusers folder, a single-file `.safetensors`/`.ckpt` checkpoint, or a Hugging
Face hub id. Loading is slow and memory-hungry, so everything a front-end needs before the first
job (the pixel budget for `--ar`, default steps) is read from the small JSON configs instead.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from engine.config import model_name
from engine.types import EngineUnavailable, ModelProfile

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
#: A built-in model spec: the tiny random-weight model, built on first use. It draws noise, fast and
#: offline, which is what a first try, a demo of the bot's workflow and the tests need.
TINY_MODEL = "tiny"


def ensure_tiny_model(cache_dir: Path | None = None) -> Path:
    from engine.testing import build_tiny_model

    folder = cache_dir or Path(os.environ.get("IMAGINE_CACHE", Path.home() / ".cache" / "imagine")) / "tiny-model"
    if not is_diffusers_folder(folder):
        log.info("building the tiny offline model in %s", folder)
        build_tiny_model(folder)
    return folder


def pick_device(requested: str | None = None) -> str:
    import torch

    if requested:
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 dot-product instructions, where bf16 runs about 2x fp32 (measured here)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(device: str, requested: str | None = None):  # -> torch.dtype
    import torch

    names = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if requested:
        if requested.lower() not in names:
            raise EngineUnavailable(f"IMAGINE_DTYPE={requested!r} is not one of fp32, fp16, bf16.")
        return names[requested.lower()]
    if device.startswith("cuda") or device == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def is_diffusers_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file()


def guess_profile(name: str, spec: str, config_dir: str | None = None) -> ModelProfile:
    """A profile from the model's config files when they are on disk, else from its name."""
    lowered = f"{name} {spec}".lower()
    if spec == TINY_MODEL:
        return ModelProfile(name, "sd1", 64, default_steps=4, default_guidance=7.0, default_sampler="euler")
    folder = Path(spec)
    if folder.suffix in CHECKPOINT_SUFFIXES:
        folder = Path(config_dir) if config_dir else folder.parent
    index = _read_json(folder / "model_index.json")
    unet = _read_json(folder / "unet" / "config.json")
    vae = _read_json(folder / "vae" / "config.json")
    if index:
        family = "sdxl" if "XL" in index.get("_class_name", "") else "sd1"
        if family == "sd1" and unet.get("cross_attention_dim") == 1024:
            family = "sd2"
        scale = 2 ** (len(vae.get("block_out_channels", [0, 0, 0, 0])) - 1)
        base = int(unet.get("sample_size", 64)) * scale
    else:
        family = "sdxl" if "xl" in lowered else ("sd2" if "sd-turbo" in lowered or "2-1" in lowered or "sd2" in lowered else "sd1")
        base = 1024 if family == "sdxl" else 512
    if "turbo" in lowered:
        return ModelProfile(name, family, base, default_steps=1, default_guidance=0.0, default_sampler="euler", turbo=True)
    if "lcm" in lowered:
        return ModelProfile(name, family, base, default_steps=4, default_guidance=1.0, default_sampler="lcm", turbo=True)
    if family == "sdxl":
        return ModelProfile(name, family, base, default_steps=30, default_guidance=6.0)
    return ModelProfile(name, family, base)


def local_models(models_dir: Path) -> dict[str, str]:
    """Models found on disk: diffusers folders and checkpoint files under `models_dir`, and the hub cache."""
    found: dict[str, str] = {}
    if models_dir.is_dir():
        for entry in sorted(models_dir.iterdir()):
            if entry.is_dir() and is_diffusers_folder(entry):
                found[entry.name] = str(entry)
            elif entry.suffix in CHECKPOINT_SUFFIXES:
                found[entry.stem] = str(entry)
    try:
        from huggingface_hub import scan_cache_dir

        for repo in scan_cache_dir().repos:
            if repo.repo_type == "model" and any((rev.snapshot_path / "model_index.json").exists() for rev in repo.revisions):
                found.setdefault(model_name(repo.repo_id), repo.repo_id)
    except Exception:  # an empty or unreadable cache is not an error here
        pass
    return found


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect, so an offline machine gets its answer now instead of after minutes of retries."""
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", endpoint.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _offline_help(spec: str) -> str:
    return (
        f"Model {spec!r} is not on this machine and the Hugging Face hub cannot be reached. "
        "Download it once where there is a network (for example `huggingface-cli download "
        f"{spec}`), or set IMAGINE_MODEL to a local diffusers folder or a .safetensors checkpoint "
        "(`--model tiny` runs a built-in random-weight model offline)."
    )


def load_pipeline(spec: str, *, device: str, dtype, config_dir: str | None = None):
    """Load a text-to-image pipeline from a folder, a single file or a hub id."""
    from diffusers import AutoPipelineForText2Image, StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # our own progress bar is the one a user should see
    if spec == TINY_MODEL:
        spec = str(ensure_tiny_model())
    path = Path(spec).expanduser()
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    common: dict[str, Any] = {"dtype": dtype}
    try:
        if path.suffix in CHECKPOINT_SUFFIXES:
            if not path.is_file():
                raise EngineUnavailable(f"Checkpoint {spec!r} does not exist.")
            config = Path(config_dir) if config_dir else path.parent
            kwargs = dict(common)
            if is_diffusers_folder(config):
                kwargs.update(config=str(config), local_files_only=True)
            elif offline:
                raise EngineUnavailable(
                    f"Single-file checkpoint {path.name} needs its model configuration offline: set "
                    "IMAGINE_MODEL_CONFIG to a diffusers folder of the same architecture (model_index.json, "
                    "the component config.json files and the tokenizer; no weights needed)."
                )
            xl = "xl" in path.name.lower()
            cls = StableDiffusionXLPipeline if xl else StableDiffusionPipeline
            pipe = cls.from_single_file(str(path), **kwargs)
        elif path.is_dir():
            if not is_diffusers_folder(path):
                raise EngineUnavailable(f"{spec!r} is a folder but not a diffusers model (no model_index.json).")
            pipe = AutoPipelineForText2Image.from_pretrained(str(path), local_files_only=True, **common)
        elif "/" in spec and not spec.startswith((".", "/")):
            try:  # the hub cache first: no network needed for a model downloaded before
                pipe = AutoPipelineForText2Image.from_pretrained(spec, local_files_only=True, **common)
            except OSError:
                if offline or not hub_reachable():
                    raise
                pipe = AutoPipelineForText2Image.from_pretrained(spec, **common)
        else:
            raise EngineUnavailable(
                f"Model {spec!r} is neither a local folder, a .safetensors file nor a hub id like 'stabilityai/sd-turbo'."
            )
    except EngineUnavailable:
        raise
    except OSError as error:
        log.debug("could not load model %s: %s", spec, error)
        raise EngineUnavailable(_offline_help(spec)) from error
    except Exception as error:  # diffusers raises many types for a broken model
        log.exception("could not load model %s", spec)
        raise EngineUnavailable(f"Model {spec!r} could not be loaded: {type(error).__name__}: {error}"[:400]) from error
    if getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None  # we report filtering ourselves; the checker doubles memory on CPU
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def profile_from_pipeline(name: str, spec: str, pipe) -> ModelProfile:
    """Refine the guessed profile with what the loaded pipeline really is."""
    guess = guess_profile(name, spec)
    family = "sdxl" if "XL" in type(pipe).__name__ else "sd1"
    if family == "sd1" and pipe.unet.config.cross_attention_dim == 1024:
        family = "sd2"
    base = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    return ModelProfile(
        name=name,
        family=family,
        base_resolution=base,
        default_steps=guess.default_steps,
        default_guidance=guess.default_guidance,
        default_sampler=guess.default_sampler,
        turbo=guess.turbo,
    )


TINY_DECODERS = {"sdxl": "madebyollin/taesdxl", "sd1": "madebyollin/taesd", "sd2": "madebyollin/taesd"}
OFF = ("off", "none", "0", "false", "no")


def load_tiny_decoder(setting: str | None, family: str, model_spec: str, *, device: str, dtype):  # -> AutoencoderTiny | None
    """The tiny decoder (TAESD) that decodes grids at 1/18 of the full VAE's cost, or None.

    `setting` is IMAGINE_TINY_DECODER: a folder or hub id, "off", or unset for automatic (a `taesd/`
    folder beside the model's components, else the family's TAESD from the hub cache or the hub).
    Missing weights are not an error: grids then decode with the full VAE, and the log says so.
    """
    from diffusers import AutoencoderTiny

    if setting is not None and setting.strip().lower() in OFF:
        return None
    source = setting
    if not source:
        folder = Path(model_spec)
        folder = folder.parent if folder.suffix in CHECKPOINT_SUFFIXES else folder
        if model_spec == TINY_MODEL:
            folder = ensure_tiny_model()
        source = str(folder / "taesd") if (folder / "taesd" / "config.json").is_file() else TINY_DECODERS[family]
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or Path(source).is_dir() or not hub_reachable()
    try:
        decoder = AutoencoderTiny.from_pretrained(source, dtype=dtype, local_files_only=offline)
    except Exception as error:  # missing weights, no network, a broken folder: all mean "use the full VAE"
        log.warning(
            "tiny decoder %s not available (%s); grids will decode with the full VAE, which is slower. "
            "Set IMAGINE_TINY_DECODER to a local AutoencoderTiny folder, or to 'off' to silence this.",
            source, type(error).__name__,
        )
        return None
    log.info("grids decode with the tiny decoder %s; U buttons use the full VAE", source)
    return decoder.to(device).eval()
