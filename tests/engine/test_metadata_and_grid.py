"""PNG metadata that other tools read, and the 2x2 grid."""

from __future__ import annotations

import io

from PIL import Image

from engine.grid import crop_cell, make_grid
from engine.metadata import a1111_parameters, encode_png, read_parameters
from engine.types import GenerationRequest


def test_parameters_read_back_by_sd_parsers():
    from sd_parsers import ParserManager

    request = GenerationRequest(
        prompt="a fox in snow, (detailed:1.2)", negative_prompt="blurry, text", width=768, height=512,
        seeds=(123,), steps=20, guidance_scale=6.5, sampler="euler_a",
    )
    png = encode_png(Image.new("RGB", (8, 8), "red"), a1111_parameters(request, 123, "sd-turbo"))
    info = ParserManager().parse(Image.open(io.BytesIO(png)))
    assert info is not None
    assert info.full_prompt == "a fox in snow, (detailed:1.2)"
    assert info.full_negative_prompt == "blurry, text"
    sampler = info.samplers[0]
    assert sampler.name == "Euler a"
    assert sampler.parameters["steps"] == "20" and sampler.parameters["cfg_scale"] == "6.5"
    assert sampler.parameters["seed"] == "123"
    assert info.metadata["Size"] == "768x512"
    assert info.models and next(iter(info.models)).name == "sd-turbo"


def test_png_bytes_are_deterministic_and_carry_text():
    image = Image.new("RGB", (16, 16), (1, 2, 3))
    assert encode_png(image, "x\nSteps: 1") == encode_png(image, "x\nSteps: 1")
    assert read_parameters(encode_png(image, "hello")) == "hello"
    assert read_parameters(encode_png(image)) is None


def test_grid_is_2x2_in_reading_order():
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    tiles = [Image.new("RGB", (64, 48), c) for c in colors]
    grid = make_grid(tiles)
    assert grid.size == (128, 96)
    assert grid.getpixel((10, 10)) == colors[0]
    assert grid.getpixel((100, 10)) == colors[1]
    assert grid.getpixel((10, 80)) == colors[2]
    assert grid.getpixel((100, 80)) == colors[3]
    for i, color in enumerate(colors):
        cell = crop_cell(grid, i)
        assert cell.size == (64, 48) and cell.getpixel((5, 5)) == color


def test_grid_accepts_png_bytes():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(buffer, format="PNG")
    assert make_grid([buffer.getvalue()] * 4).size == (16, 16)
