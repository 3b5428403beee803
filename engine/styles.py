"""Style presets for `--style`: a prompt template plus words to keep out.

The names are Stability AI's `style_preset` values, so a remote Stability engine can pass the name
through as it is while local engines expand the same name with these templates. The templates are
the widely shared "sai-*" set from StabilityAI's SDXL styles (as popularised by Fooocus), which
people already know the look of.
"""

from __future__ import annotations

from .types import PromptError

#: name -> (positive template with "{prompt}", negative prompt addition)
STYLES: dict[str, tuple[str, str]] = {
    "3d-model": (
        "professional 3d model {prompt} . octane render, highly detailed, volumetric, dramatic lighting",
        "ugly, deformed, noisy, low poly, blurry, painting",
    ),
    "analog-film": (
        "analog film photo {prompt} . faded film, desaturated, 35mm photo, grainy, vignette, vintage, "
        "Kodachrome, Lomography, stained, highly detailed, found footage",
        "painting, drawing, illustration, glitch, deformed, mutated, cross-eyed, ugly, disfigured",
    ),
    "anime": (
        "anime artwork {prompt} . anime style, key visual, vibrant, studio anime, highly detailed",
        "photo, deformed, black and white, realism, disfigured, low contrast",
    ),
    "cinematic": (
        "cinematic film still {prompt} . shallow depth of field, vignette, highly detailed, high budget, "
        "bokeh, cinemascope, moody, epic, gorgeous, film grain, grainy",
        "anime, cartoon, graphic, text, painting, crayon, graphite, abstract, glitch, deformed, mutated, "
        "ugly, disfigured",
    ),
    "comic-book": (
        "comic {prompt} . graphic illustration, comic art, graphic novel art, vibrant, highly detailed",
        "photograph, deformed, glitch, noisy, realistic, stock photo",
    ),
    "digital-art": (
        "concept art {prompt} . digital artwork, illustrative, painterly, matte painting, highly detailed",
        "photo, photorealistic, realism, ugly",
    ),
    "enhance": (
        "breathtaking {prompt} . award-winning, professional, highly detailed",
        "ugly, deformed, noisy, blurry, distorted, grainy",
    ),
    "fantasy-art": (
        "ethereal fantasy concept art of {prompt} . magnificent, celestial, ethereal, painterly, epic, "
        "majestic, magical, fantasy art, cover art, dreamy",
        "photographic, realistic, realism, 35mm film, dslr, cropped, frame, text, deformed, glitch, noise, "
        "noisy, off-center, cross-eyed, closed eyes, bad anatomy, ugly, disfigured, sloppy, duplicate, "
        "mutated, black and white",
    ),
    "isometric": (
        "isometric style {prompt} . vibrant, beautiful, crisp, detailed, ultra detailed, intricate",
        "deformed, mutated, ugly, disfigured, blur, blurry, noise, noisy, realistic, photographic",
    ),
    "line-art": (
        "line art drawing {prompt} . professional, sleek, modern, minimalist, graphic, line art, vector graphics",
        "anime, photorealistic, 35mm film, deformed, glitch, blurry, noisy, off-center, cross-eyed, "
        "closed eyes, bad anatomy, ugly, disfigured, mutated, realism, realistic, impressionism, "
        "expressionism, oil, acrylic",
    ),
    "low-poly": (
        "low-poly style {prompt} . low-poly game art, polygon mesh, jagged, blocky, wireframe edges, "
        "centered composition",
        "noisy, sloppy, messy, grainy, highly detailed, ultra textured, photo",
    ),
    "modeling-compound": (
        "play-doh style {prompt} . sculpture, clay art, centered composition, Claymation",
        "sloppy, messy, grainy, highly detailed, ultra textured, photo",
    ),
    "neon-punk": (
        "neonpunk style {prompt} . cyberpunk, vaporwave, neon, vibes, vibrant, stunningly beautiful, crisp, "
        "detailed, sleek, ultramodern, magenta highlights, dark purple shadows, high contrast, cinematic, "
        "ultra detailed, intricate, professional",
        "painting, drawing, illustration, glitch, deformed, mutated, cross-eyed, ugly, disfigured",
    ),
    "origami": (
        "origami style {prompt} . paper art, pleated paper, folded, origami art, pleats, cut and fold, "
        "centered composition",
        "noisy, sloppy, messy, grainy, highly detailed, ultra textured, photo",
    ),
    "photographic": (
        "cinematic photo {prompt} . 35mm photograph, film, bokeh, professional, 4k, highly detailed",
        "drawing, painting, crayon, sketch, graphite, impressionist, noisy, blurry, soft, deformed, ugly",
    ),
    "pixel-art": (
        "pixel-art {prompt} . low-res, blocky, pixel art style, 8-bit graphics",
        "sloppy, messy, blurry, noisy, highly detailed, ultra textured, photo, realistic",
    ),
    "tile-texture": (
        "texture {prompt} top down close-up",
        "ugly, deformed, noisy, blurry",
    ),
}

STYLE_NAMES: tuple[str, ...] = tuple(STYLES)


def normalize_style(name: str) -> str | None:
    """The preset name for a user's spelling ("Comic Book", "comic_book"), or None if unknown."""
    key = "-".join(name.strip().lower().replace("_", " ").replace("-", " ").split())
    return key if key in STYLES else None


def apply_style(prompt: str, negative: str, style: str | None) -> tuple[str, str]:
    """Wrap the prompt in the style's template and add its negative words.

    `str.replace` rather than `str.format`, so braces the user typed never break the template.
    """
    if style is None:
        return prompt, negative
    key = normalize_style(style)
    if key is None:
        raise PromptError(f"--style needs one of {', '.join(STYLE_NAMES)}, not '{style}'.", "style")
    template, extra_negative = STYLES[key]
    positive = template.replace("{prompt}", prompt.strip())
    return positive, ", ".join(part for part in (negative.strip(), extra_negative) if part)
