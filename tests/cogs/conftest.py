"""Fixtures for the bot's tests: a bot on the tiny model in simcord, and a fast fake engine.

Behaviour tests run the real bot (real cogs, storage and queue) against simcord's simulated
Discord. The tiny model makes real images in well under a second; tests about queue order and
limits use `FakeEngine`, which makes solid-colour PNGs instantly and can hold jobs at a gate so
that several are waiting at once.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot import ImagineBot, create_bot
from cogs.utils.config import BotConfig
from engine.base import Engine
from engine.types import GenerationRequest, ImageResult, ModelProfile, Progress, ProgressCallback, PromptError

FAST = "--steps 1"


def png(width: int = 64, height: int = 64, color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


class FakeEngine(Engine):
    """An engine with the real interface and no model: one coloured PNG per seed, at once.

    `started` lists the prompts in the order jobs reached the engine. While `gate` is closed,
    every job waits at it (declared to simcord as an intended external wait).
    """

    slots = 1

    def __init__(self) -> None:
        self.started: list[str] = []
        self.decoded: list[int] = []
        self.gate: asyncio.Event | None = None
        self.env: Any = None

    def profile(self, model: str | None = None) -> ModelProfile:
        if model not in (None, *self.models()):
            raise PromptError(f"Unknown model {model!r}. Available: {', '.join(self.models())}.", "model")
        return ModelProfile(name=model or "fake", base_resolution=64, default_steps=2, size_multiple=64)

    def models(self) -> list[str]:
        return ["fake", "fake-wide"]

    def close_gate(self, env: Any) -> None:
        self.env, self.gate = env, asyncio.Event()

    async def generate(
        self, request: GenerationRequest, on_progress: ProgressCallback | None = None, preview: bool = False
    ) -> list[ImageResult]:
        self.started.append(request.prompt)
        if self.gate is not None and not self.gate.is_set():
            await self.env.external_wait(self.gate.wait(), reason="test gate")
        if on_progress is not None:
            on_progress(Progress(1, 2, png(16, 16) if preview else None))
        return [
            ImageResult(png=png(request.width, request.height, (seed % 256, 80, 160)), seed=seed, index=i,
                        width=request.width, height=request.height)
            for i, seed in enumerate(request.seeds)
        ]

    async def decode_full(self, request: GenerationRequest, result: ImageResult) -> bytes:
        self.decoded.append(result.seed)
        return result.png


@pytest.fixture
def bot_config(tmp_path: Path, tiny_engine: Engine) -> BotConfig:
    return BotConfig(db_path=tmp_path / "data" / "imagine.db", engine=tiny_engine, progress_interval=0.0)


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def fake_config(tmp_path: Path, fake_engine: FakeEngine) -> BotConfig:
    """A bot on `FakeEngine`; a test module opts in by defining `bot_config` to return this."""
    return BotConfig(db_path=tmp_path / "data" / "imagine.db", engine=fake_engine, progress_interval=0.0)


@pytest.fixture
async def simcord_bot(bot_config: BotConfig) -> AsyncIterator[ImagineBot]:
    bot = create_bot(bot_config)
    yield bot
    await bot.release()


@dataclass
class Scene:
    env: Any
    guild: Any
    channel: Any
    alice: Any
    bob: Any


@pytest.fixture
def scene(simcord_env: Any) -> Scene:
    guild = simcord_env.create_guild(name="art club")
    channel = guild.create_text_channel("images")
    alice = guild.add_member(simcord_env.create_user("alice"))
    bob = guild.add_member(simcord_env.create_user("bob"))
    return Scene(simcord_env, guild, channel, alice, bob)


def buttons_of(message: Any) -> dict[str, str]:
    """The message's buttons as {label or emoji: custom_id}, in display order."""
    found: dict[str, str] = {}
    for row in message.components:
        for component in row.get("components", []):
            if component.get("type") != 2:
                continue
            name = component.get("label") or (component.get("emoji") or {}).get("name")
            found[name] = component["custom_id"]
    return found


def rows_of(message: Any) -> list[list[str]]:
    return [
        [c.get("label") or (c.get("emoji") or {}).get("name") for c in row.get("components", [])]
        for row in message.components
    ]


def attachment_image(env: Any, message: Any, number: int = 0) -> Image.Image:
    data = env.backend.cdn.get(message.attachments[number].url)
    assert data is not None
    return Image.open(io.BytesIO(data))


def callbacks(env: Any) -> list[int]:
    """The interaction callback types the bot sent, in order (5 = deferred "thinking…")."""
    return [entry.json["type"] for entry in env.http_requests if entry.path.endswith("/callback") and entry.json]
