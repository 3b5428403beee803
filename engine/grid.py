"""The 2x2 grid a job posts: Midjourney's shape, so U1-U4 map to reading order."""

from __future__ import annotations

import io
import math

from PIL import Image


def make_grid(images: list[Image.Image | bytes], columns: int = 2) -> Image.Image:
    """Tile images left-to-right, top-to-bottom (U1 top left, U2 top right, U3/U4 below)."""
    if not images:
        raise ValueError("a grid needs at least one image")
    tiles = [Image.open(io.BytesIO(im)).convert("RGB") if isinstance(im, bytes) else im.convert("RGB") for im in images]
    width, height = tiles[0].size
    columns = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    grid = Image.new("RGB", (columns * width, rows * height))
    for i, tile in enumerate(tiles):
        if tile.size != (width, height):
            tile = tile.resize((width, height), Image.Resampling.LANCZOS)
        grid.paste(tile, ((i % columns) * width, (i // columns) * height))
    return grid


def crop_cell(grid: Image.Image, index: int, count: int = 4, columns: int = 2) -> Image.Image:
    """One image back out of a grid, for engines that keep no per-image files."""
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    width, height = grid.width // columns, grid.height // rows
    x, y = (index % columns) * width, (index // columns) * height
    return grid.crop((x, y, x + width, y + height))
