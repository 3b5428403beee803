"""Uploaded images are checked before use; results are made to fit the upload limit."""

from __future__ import annotations

import io
import os

import pytest
from PIL import Image

from cogs.utils.images import InputImageError, check_upload, fit_upload, load_upload


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "content_type", "size", "message"),
    [
        ("a.txt", "text/plain", 10, "is text/plain, not an image"),
        ("a.gif", "image/gif", 10, "is image/gif, not an image"),
        ("a.bin", None, 10, "is an unknown type"),
        ("a.png", "image/png", 3 * 1024 * 1024, "is 3.0 MiB; image prompts can be at most 2.0 MiB"),
    ],
)
def test_check_upload_refuses_from_metadata(name, content_type, size, message):
    with pytest.raises(InputImageError, match=message.replace("(", r"\(").replace(".", r"\.")):
        check_upload(name, content_type, size, 2 * 1024 * 1024)


@pytest.mark.parametrize(("name", "content_type"), [("a.png", "image/png"), ("b.jpg", "image/jpeg; charset=x"), ("c.webp", None)])
def test_check_upload_accepts_images(name, content_type):
    check_upload(name, content_type, 1000, 2000)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_load_upload_returns_an_rgb_png(fmt):
    source = Image.new("RGBA" if fmt != "JPEG" else "RGB", (30, 20), (1, 2, 3))
    data, width, height = load_upload(_encode(source, fmt), 10_000)
    image = Image.open(io.BytesIO(data))
    assert (image.format, image.mode, image.size, width, height) == ("PNG", "RGB", (30, 20), 30, 20)


def test_load_upload_refuses_too_many_pixels_before_decoding():
    with pytest.raises(InputImageError, match="300x200 pixels"):
        load_upload(_encode(Image.new("L", (300, 200)), "PNG"), 50_000)


def test_load_upload_refuses_bombs_and_garbage():
    with pytest.raises(InputImageError, match="too many pixels"):
        load_upload(_encode(Image.new("1", (20_000, 20_000)), "PNG"), 4096 * 4096)
    with pytest.raises(InputImageError, match="could not be read"):
        load_upload(b"\x89PNG\r\n\x1a\n" + os.urandom(50), 10_000)
    with pytest.raises(InputImageError, match="is a GIF file"):
        load_upload(_encode(Image.new("P", (4, 4)), "GIF"), 10_000)


def test_fit_upload_keeps_small_files_and_shrinks_big_ones():
    small = _encode(Image.new("RGB", (8, 8)), "PNG")
    assert fit_upload(small, "x.png", 10_000) == (small, "x.png")

    noise = Image.frombytes("RGB", (512, 512), os.urandom(512 * 512 * 3))
    big = _encode(noise, "PNG")
    assert len(big) > 700_000
    for limit in (500_000, 60_000):
        data, name = fit_upload(big, "grid_1.png", limit)
        assert len(data) <= limit and name == "grid_1.jpg"
        assert Image.open(io.BytesIO(data)).format == "JPEG"
    shrunk = Image.open(io.BytesIO(fit_upload(big, "g.png", 60_000)[0]))
    assert shrunk.width < 512  # JPEG alone could not get noise that small
