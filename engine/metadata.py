"""PNG files that carry their own recipe.

Every image we write holds its generation parameters in a `parameters` tEXt chunk, in the layout
AUTOMATIC1111 writes, because that is what every SD image viewer, prompt reader and web UI already
parses: a user can drop one of our PNGs into any of them and get the prompt and seed back.
"""

from __future__ import annotations

import io

from PIL import Image, PngImagePlugin

from engine.samplers import SAMPLERS
from engine.types import GenerationRequest


def a1111_parameters(request: GenerationRequest, seed: int, model: str) -> str:
    sampler = SAMPLERS[request.sampler].label if request.sampler in SAMPLERS else request.sampler
    lines = [request.prompt.strip()]
    if request.negative_prompt.strip():
        lines.append(f"Negative prompt: {request.negative_prompt.strip()}")
    fields = [
        f"Steps: {request.steps}",
        f"Sampler: {sampler}",
        f"CFG scale: {request.guidance_scale:g}",
        f"Seed: {seed}",
        f"Size: {request.width}x{request.height}",
        f"Model: {model}",
    ]
    if request.init_image is not None:
        fields.append(f"Denoising strength: {request.strength:g}")
    if request.style:
        fields.append(f"Style: {request.style}")
    if request.tiling:
        fields.append("Tiling: True")
    if request.chaos:
        fields.append(f"Chaos: {request.chaos}")
    lines.append(", ".join(fields))
    return "\n".join(lines)


def encode_png(image: Image.Image, parameters: str | None = None) -> bytes:
    """PNG bytes with the `parameters` chunk; the same pixels and text always give the same bytes."""
    info = None
    if parameters:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG", pnginfo=info, optimize=False, compress_level=6)
    return buffer.getvalue()


def read_parameters(png: bytes) -> str | None:
    with Image.open(io.BytesIO(png)) as image:
        return image.info.get("parameters")
