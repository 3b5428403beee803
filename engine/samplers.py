"""Sampler names users type, mapped to diffusers schedulers.

The names follow the community's (AUTOMATIC1111's) labels so that PNG metadata reads the same
everywhere; each maps to a diffusers scheduler class plus the config overrides that make it that
sampler. Schedulers are built `from_config` of the model's own scheduler, so the model's beta
schedule and prediction type are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sampler:
    name: str
    label: str  # as AUTOMATIC1111 writes it in PNG metadata
    scheduler: str  # diffusers class name
    overrides: dict[str, Any] = field(default_factory=dict)


SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        Sampler("euler", "Euler", "EulerDiscreteScheduler"),
        Sampler("euler_a", "Euler a", "EulerAncestralDiscreteScheduler"),
        Sampler("dpmpp_2m", "DPM++ 2M", "DPMSolverMultistepScheduler", {"use_karras_sigmas": False}),
        Sampler("dpmpp_2m_karras", "DPM++ 2M Karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
        Sampler(
            "dpmpp_sde_karras",
            "DPM++ SDE Karras",
            "DPMSolverMultistepScheduler",
            {"use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++"},
        ),
        Sampler("ddim", "DDIM", "DDIMScheduler"),
        Sampler("heun", "Heun", "HeunDiscreteScheduler"),
        Sampler("unipc", "UniPC", "UniPCMultistepScheduler"),
        Sampler("lcm", "LCM", "LCMScheduler"),
    )
}

SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)

#: Spellings people paste from other tools.
SAMPLER_ALIASES: dict[str, str] = {
    "k_euler": "euler",
    "k_euler_a": "euler_a",
    "k_euler_ancestral": "euler_a",
    "euler_ancestral": "euler_a",
    "dpm++_2m": "dpmpp_2m",
    "dpm++_2m_karras": "dpmpp_2m_karras",
    "dpmpp_2m_k": "dpmpp_2m_karras",
    "dpm++_sde_karras": "dpmpp_sde_karras",
    "k_dpmpp_2m": "dpmpp_2m",
}


def normalize_sampler(name: str) -> str | None:
    """The canonical sampler name for a user's spelling, or None if unknown."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    if key in SAMPLERS:
        return key
    return SAMPLER_ALIASES.get(key)


def make_scheduler(sampler: str, base_config: Any, *, turbo: bool = False) -> Any:
    """A diffusers scheduler for `sampler`, built on the model's own scheduler config."""
    import diffusers

    spec = SAMPLERS[sampler]
    cls = getattr(diffusers, spec.scheduler)
    overrides = dict(spec.overrides)
    if turbo:
        # Turbo/LCM-distilled models are trained on the last timesteps; leading spacing ruins 1-step images.
        overrides["timestep_spacing"] = "trailing"
    return cls.from_config(base_config, **overrides)
