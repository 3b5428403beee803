"""The values that cross the engine's boundary: requests, results, progress and errors.

Everything here is plain data with no torch in it, so that the bot, storage, the HTTP API and
remote engines can pass requests around without loading a model.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

MAX_SEED = 4_294_967_295
MAX_STEPS = 150
MAX_IMAGES = 10
MAX_SIDE = 2048
MAX_PIXELS = 2048 * 2048
MAX_PROMPT_CHARS = 6000


class ImagineError(Exception):
    """Base of every error the project raises on purpose.

    Its message is written for the person who typed the command: short, specific, no traceback.
    Front-ends show `str(error)` as it is.
    """


class PromptError(ImagineError, ValueError):
    """The user's prompt or one of its parameters is malformed; `parameter` names it when known."""

    def __init__(self, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


class EngineUnavailable(ImagineError):
    """The engine (a model that cannot load, a dead server, a hosted API refusing us) cannot work now."""


class ContentFiltered(ImagineError):
    """The engine or service refused the prompt or image as unsafe."""


class JobCancelled(ImagineError):
    """The job was cancelled while it ran."""


class FinishReason(StrEnum):
    OK = "ok"
    FILTERED = "filtered"
    ERROR = "error"


@dataclass(frozen=True)
class ModelProfile:
    """What the parser and front-ends need to know about a model before it is loaded.

    `family` decides the pixel budget of `--ar` and which pipeline classes load it.
    """

    name: str
    family: str = "sd1"  # sd1 | sd2 | sdxl
    base_resolution: int = 512
    default_steps: int = 25
    default_guidance: float = 7.0
    default_sampler: str = "dpmpp_2m_karras"
    turbo: bool = False
    size_multiple: int = 64

    @property
    def pixel_budget(self) -> int:
        return self.base_resolution * self.base_resolution


@dataclass(frozen=True)
class GenerationRequest:
    """One generation job: everything needed to reproduce its images exactly.

    `seeds` has one seed per image. `mask` is a PNG in diffusers' convention (white = repaint,
    black = keep); adapters for other conventions convert at the edge. Images are PNG bytes so the
    request stays immutable, hashable and serialisable.
    """

    prompt: str
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    seeds: tuple[int, ...] = (0,)
    steps: int = 25
    guidance_scale: float = 7.0
    sampler: str = "dpmpp_2m_karras"
    model: str | None = None
    style: str | None = None
    tiling: bool = False
    chaos: int = 0
    init_image: bytes | None = field(default=None, repr=False)
    strength: float = 0.75
    mask: bytes | None = field(default=None, repr=False)
    aspect_ratio: str = "1:1"

    @property
    def num_images(self) -> int:
        return len(self.seeds)

    def replace(self, **changes: Any) -> GenerationRequest:
        return dataclasses.replace(self, **changes)

    def validate(self, size_multiple: int = 8) -> None:
        """Raise PromptError naming the first field that is out of bounds."""
        if not self.prompt.strip():
            raise PromptError("The prompt is empty: describe what to draw.", "prompt")
        if len(self.prompt) > MAX_PROMPT_CHARS:
            raise PromptError(f"The prompt is {len(self.prompt)} characters; the limit is {MAX_PROMPT_CHARS}.", "prompt")
        for name, side in (("width", self.width), ("height", self.height)):
            if side < size_multiple or side > MAX_SIDE or side % size_multiple:
                raise PromptError(
                    f"{name} {side} must be a multiple of {size_multiple} between {size_multiple} and {MAX_SIDE}.", name
                )
        if self.width * self.height > MAX_PIXELS:
            raise PromptError(f"{self.width}x{self.height} is over the {MAX_PIXELS:,}-pixel limit.", "size")
        if not 1 <= len(self.seeds) <= MAX_IMAGES:
            raise PromptError(f"A job makes 1 to {MAX_IMAGES} images, not {len(self.seeds)}.", "seeds")
        for seed in self.seeds:
            if not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
                raise PromptError(f"seed {seed} must be a whole number from 0 to {MAX_SEED}.", "seed")
        if not 1 <= self.steps <= MAX_STEPS:
            raise PromptError(f"steps {self.steps} must be from 1 to {MAX_STEPS}.", "steps")
        if not 0 <= self.guidance_scale <= 30:
            raise PromptError(f"guidance {self.guidance_scale} must be from 0 to 30.", "cfg")
        if not 0 <= self.chaos <= 100:
            raise PromptError(f"chaos {self.chaos} must be from 0 to 100.", "chaos")
        if not 0.0 < self.strength <= 1.0:
            raise PromptError(f"strength {self.strength} must be above 0 and at most 1.", "strength")
        if self.mask is not None and self.init_image is None:
            raise PromptError("A mask needs an init image to paint into.", "mask")

    def to_json(self) -> str:
        """Serialise for storage and the wire; images travel as base64."""
        data = dataclasses.asdict(self)
        data["seeds"] = list(self.seeds)
        for key in ("init_image", "mask"):
            if data[key] is not None:
                data[key] = base64.b64encode(data[key]).decode("ascii")
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> GenerationRequest:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["seeds"] = tuple(data.get("seeds", (0,)))
        for key in ("init_image", "mask"):
            if data.get(key) is not None:
                data[key] = base64.b64decode(data[key])
        return cls(**data)


@dataclass(frozen=True)
class ImageResult:
    """One finished image.

    `latents` are the final latents as safetensors bytes (engines that have them), so that a
    later full-quality decode (the U buttons) does not run the UNet again.
    """

    png: bytes = field(repr=False)
    seed: int
    index: int
    width: int
    height: int
    finish_reason: FinishReason = FinishReason.OK
    latents: bytes | None = field(default=None, repr=False)
    parameters: str = ""


@dataclass(frozen=True)
class Progress:
    """A step of a running job. `preview` is a small JPEG of the batch when one was asked for."""

    step: int
    total: int
    preview: bytes | None = field(default=None, repr=False)
    #: Something the user should read, e.g. that a dead engine server's job is being retried elsewhere.
    message: str | None = None

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0


ProgressCallback = Callable[[Progress], None]
