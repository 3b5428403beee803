"""Small builders shared by the storage tests."""

from __future__ import annotations

import hashlib

from engine.types import FinishReason, GenerationRequest, ImageResult


def png(tag: str) -> bytes:
    """Distinct bytes that look like a PNG to the suffix sniffer; storage never decodes them."""
    return b"\x89PNG\r\n\x1a\n" + hashlib.sha256(tag.encode()).digest() * 8


def request(prompt: str = "a fox in the snow", **changes) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, width=64, height=64, seeds=(1, 2, 3, 4), steps=2, **changes)


def results(tag: str, seeds=(1, 2, 3, 4), latents: bool = True) -> list[ImageResult]:
    return [
        ImageResult(
            png=png(f"{tag}-{index}"),
            seed=seed,
            index=index,
            width=64,
            height=64,
            finish_reason=FinishReason.FILTERED if index == 3 else FinishReason.OK,
            latents=f"latents-{tag}-{index}".encode() if latents else None,
            parameters=f"{tag}\nSteps: 2, Seed: {seed}",
        )
        for index, seed in enumerate(seeds)
    ]
