"""Images crossing the Discord boundary: checking what users upload, fitting what we post.

An uploaded file is untrusted: it may not be an image at all, may be huge, or may be a tiny PNG
that decodes into gigapixels (a decompression bomb). Everything is checked before the engine sees
it, and the engine only ever gets a plain RGB PNG. Going the other way, Discord refuses files over
the interaction's upload limit, so big results are recompressed or shrunk rather than lost.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

from engine.types import ImagineError

#: What Discord clients upload as images; GIFs and the like are refused rather than guessed at.
IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class InputImageError(ImagineError):
    """An uploaded image prompt was refused; the message says why in one sentence."""


def _size(num_bytes: int) -> str:
    if num_bytes >= 1024 * 1024:
        return f"{num_bytes / (1024 * 1024):.1f} MiB"
    return f"{num_bytes / 1024:.0f} KiB"


def check_upload(filename: str, content_type: str | None, size: int, max_bytes: int) -> None:
    """Refuse an attachment from its metadata alone, before downloading a byte of it."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind not in IMAGE_TYPES and not (not kind and filename.lower().endswith(IMAGE_SUFFIXES)):
        shown = kind or "an unknown type"
        raise InputImageError(f"`{filename}` is {shown}, not an image: attach a PNG, JPEG or WebP.")
    if size > max_bytes:
        raise InputImageError(f"`{filename}` is {_size(size)}; image prompts can be at most {_size(max_bytes)}.")


def load_upload(data: bytes, max_pixels: int, filename: str = "the image") -> tuple[bytes, int, int]:
    """Decode an uploaded image safely and return it as an RGB PNG with its width and height.

    The pixel count is checked from the header, before any decoding, so a bomb costs nothing.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.format not in IMAGE_TYPES.values():
                    raise InputImageError(f"`{filename}` is a {image.format or 'unknown'} file: attach a PNG, JPEG or WebP.")
                width, height = image.size
                if width * height > max_pixels:
                    raise InputImageError(
                        f"`{filename}` is {width}x{height} pixels; image prompts can have at most {max_pixels:,} pixels."
                    )
                image.load()
                rgb = image.convert("RGB")
    except InputImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputImageError(f"`{filename}` decodes to far too many pixels to be a real image prompt.") from None
    except (OSError, ValueError, SyntaxError, Image.UnidentifiedImageError):
        raise InputImageError(f"`{filename}` could not be read as an image: it is damaged or not an image.") from None
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    return buffer.getvalue(), width, height


def fit_upload(data: bytes, filename: str, limit: int) -> tuple[bytes, str]:
    """Return the image (and its file name) small enough to upload under `limit` bytes.

    First the same pixels as JPEG at falling quality, then fewer pixels: a slightly worse image
    is better than an upload Discord refuses.
    """
    if len(data) <= limit:
        return data, filename
    stem = filename.rsplit(".", 1)[0]
    with Image.open(io.BytesIO(data)) as source:
        image = source.convert("RGB")
    scale = 1.0
    while True:
        sized = image if scale == 1.0 else image.resize(
            (max(1, int(image.width * scale)), max(1, int(image.height * scale))), Image.Resampling.LANCZOS
        )
        for quality in (92, 85, 75, 60):
            buffer = io.BytesIO()
            sized.save(buffer, format="JPEG", quality=quality, optimize=True)
            if buffer.tell() <= limit:
                return buffer.getvalue(), f"{stem}.jpg"
        if sized.width <= 16 or sized.height <= 16:
            raise ImagineError("The image is too large to upload here, even shrunk.")
        scale *= 0.75
