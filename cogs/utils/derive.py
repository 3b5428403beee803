"""New requests made from old ones: what each button asks the engine for.

Every button starts from a stored request (and sometimes one stored image), so these are plain
functions of those values; the strengths are diffusers' img2img `strength`, the share of the
denoising schedule that is redone (0 keeps the image, 1 ignores it).

- 🔄 reroll: the same request with new seeds.
- V1-V4 and Vary (Strong): four images around one image at 0.7 - same composition, new details.
- Vary (Subtle): 0.35 - the same picture with small changes.
- Upscale (Subtle / Creative): one image at twice the width and height, redrawn at 0.25 / 0.5:
  subtle sharpens what is there, creative lets the model invent finer detail.
- U1-U4: one image of a grid decoded again at full quality; no new generation.
"""

from __future__ import annotations

import random
import re

from engine.types import MAX_PIXELS, MAX_SEED, MAX_SIDE, GenerationRequest, ImagineError, ModelProfile

VARY_STRENGTH = {"subtle": 0.35, "strong": 0.7}
UPSCALE_STRENGTH = {"subtle": 0.25, "creative": 0.5}
VARIATION_STRENGTH = VARY_STRENGTH["strong"]
GRID_SIZE = 4

_SEED_PARAM = re.compile(r"\s*--seed\s+\d+")


def new_seeds(count: int = GRID_SIZE, rng: random.Random | None = None) -> tuple[int, ...]:
    """Consecutive seeds from a random start, as the parser makes them: one number reproduces all."""
    start = (rng or random.SystemRandom()).randint(0, MAX_SEED)
    return tuple((start + i) % (MAX_SEED + 1) for i in range(count))


def reroll(request: GenerationRequest, rng: random.Random | None = None) -> GenerationRequest:
    return request.replace(seeds=new_seeds(request.num_images, rng))


def variation(
    request: GenerationRequest, image_png: bytes, strength: float, rng: random.Random | None = None
) -> GenerationRequest:
    """Four new images drawn around `image_png` with the request's prompt and size."""
    return request.replace(init_image=image_png, mask=None, strength=strength, seeds=new_seeds(GRID_SIZE, rng))


def single(request: GenerationRequest, seed: int) -> GenerationRequest:
    """The request for one image of a grid: what its full-quality decode is filed under."""
    return request.replace(seeds=(seed,))


def upscale(
    request: GenerationRequest, image_png: bytes, width: int, height: int, seed: int, strength: float, profile: ModelProfile
) -> GenerationRequest:
    """One image at twice the size, or a clear refusal when twice the size is over the limits."""
    new_width, new_height = width * 2, height * 2
    step = profile.size_multiple if profile.size_multiple > 0 else 8
    if new_width > MAX_SIDE or new_height > MAX_SIDE or new_width * new_height > MAX_PIXELS:
        raise ImagineError(
            f"This image is already {width}x{height}: twice that, {new_width}x{new_height}, is over the "
            f"{MAX_SIDE}-pixel limit for a side ({MAX_PIXELS:,} pixels in all)."
        )
    new_width = max(step, new_width // step * step)
    new_height = max(step, new_height // step * step)
    return request.replace(
        init_image=image_png, mask=None, strength=strength, seeds=(seed,), width=new_width, height=new_height
    )


def remix_text(prompt_with_parameters: str) -> str:
    """The text a remix modal starts with: the prompt and parameters minus the seed, so new seeds are drawn."""
    return _SEED_PARAM.sub("", prompt_with_parameters).strip()
