"""What each button asks the engine for."""

from __future__ import annotations

import random

import pytest

from cogs.utils import derive
from engine.params import parse_prompt
from engine.types import MAX_SEED, ImagineError, ModelProfile

PROFILE = ModelProfile(name="sd", base_resolution=512, default_steps=25, size_multiple=64)
REQUEST = parse_prompt("a fox --seed 10 --ar 3:2", lambda model: PROFILE)


def test_reroll_keeps_everything_but_the_seeds():
    again = derive.reroll(REQUEST, random.Random(1))
    assert again.replace(seeds=REQUEST.seeds) == REQUEST
    assert again.seeds != REQUEST.seeds and len(again.seeds) == 4
    assert list(again.seeds) == [(again.seeds[0] + i) % (MAX_SEED + 1) for i in range(4)]


def test_variation_redraws_around_the_image():
    out = derive.variation(REQUEST.replace(mask=None), b"png", derive.VARY_STRENGTH["subtle"], random.Random(2))
    assert out.init_image == b"png" and out.strength == 0.35 and out.num_images == 4
    assert (out.width, out.height, out.prompt) == (REQUEST.width, REQUEST.height, REQUEST.prompt)


def test_upscale_doubles_the_size_within_limits():
    out = derive.upscale(REQUEST, b"png", 576, 384, 11, derive.UPSCALE_STRENGTH["creative"], PROFILE)
    assert (out.width, out.height, out.seeds, out.strength) == (1152, 768, (11,), 0.5)
    out.validate(PROFILE.size_multiple)
    with pytest.raises(ImagineError, match="1536x1024: twice that, 3072x2048"):
        derive.upscale(REQUEST, b"png", 1536, 1024, 11, 0.25, PROFILE)


def test_single_and_remix_text():
    assert derive.single(REQUEST, 12).seeds == (12,)
    assert derive.remix_text("a fox --ar 3:2 --seed 10 --steps 4") == "a fox --ar 3:2 --steps 4"
