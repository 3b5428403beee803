"""A configurable content filter in front of any engine: a blocklist of words from the operator.

Stability's service answers unsafe prompts with FILTER instead of an image, and clients of both our
servers expect the same. The core engine has no safety model, so the operator lists the words they
refuse (`IMAGINE_BLOCKLIST=word,other phrase`). A blocked prompt never reaches the model: each
requested image comes back as a plain grey placeholder marked `FinishReason.FILTERED`, so callers
keep one result per seed and decide themselves how to show it.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from typing import Any

from PIL import Image

from engine.base import Engine
from engine.config import parse_blocklist
from engine.types import FinishReason, GenerationRequest, ImageResult, ModelProfile, ProgressCallback

PLACEHOLDER_GREY = (128, 128, 128)


__all__ = ["Blocklist", "FilteredEngine", "parse_blocklist", "with_blocklist"]


class Blocklist:
    """Whole-word, case-insensitive matching: blocking "ass" must not block "glass"."""

    def __init__(self, words: Iterable[str]) -> None:
        self.words = tuple(words)
        alternatives = "|".join(re.escape(word) for word in sorted(self.words, key=len, reverse=True))
        self._pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE) if self.words else None

    def blocks(self, request: GenerationRequest) -> bool:
        return self._pattern is not None and self._pattern.search(request.prompt) is not None


def placeholder_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), PLACEHOLDER_GREY).save(buffer, format="PNG")
    return buffer.getvalue()


def filtered_results(request: GenerationRequest) -> list[ImageResult]:
    png = placeholder_png(request.width, request.height)
    return [
        ImageResult(png=png, seed=seed, index=index, width=request.width, height=request.height, finish_reason=FinishReason.FILTERED)
        for index, seed in enumerate(request.seeds)
    ]


class FilteredEngine(Engine):
    """Any engine, with blocked prompts answered as FILTERED before they cost any compute."""

    def __init__(self, inner: Engine, blocklist: Blocklist) -> None:
        self.inner = inner
        self.blocklist = blocklist
        self.slots = inner.slots

    async def generate(
        self, request: GenerationRequest, on_progress: ProgressCallback | None = None, preview: bool = False
    ) -> list[ImageResult]:
        if self.blocklist.blocks(request):
            return filtered_results(request)
        return await self.inner.generate(request, on_progress, preview)

    async def decode_full(self, request: GenerationRequest, result: ImageResult) -> bytes:
        return await self.inner.decode_full(request, result)

    def profile(self, model: str | None = None) -> ModelProfile:
        return self.inner.profile(model)

    def models(self) -> list[str]:
        return self.inner.models()

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "blocklist": len(self.blocklist.words)}

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()


def with_blocklist(engine: Engine, words: Iterable[str]) -> Engine:
    """The engine itself when there is nothing to block, so the common case adds no layer."""
    words = tuple(words)
    return FilteredEngine(engine, Blocklist(words)) if words else engine
