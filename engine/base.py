"""The one interface every engine (in-process diffusers, our gRPC servers, Stability's REST API) offers.

Front-ends (the bot, the CLI, the HTTP API) hold an `Engine` and never ask which kind it is.
"""

from __future__ import annotations

import abc
from typing import Any

from engine.types import GenerationRequest, ImageResult, ModelProfile, ProgressCallback


class Engine(abc.ABC):
    #: How many jobs this engine can run at once; the bot runs one queue worker per slot.
    slots: int = 1

    @abc.abstractmethod
    async def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        preview: bool = False,
    ) -> list[ImageResult]:
        """Make one image per seed. `on_progress` is called on the caller's event loop.

        Cancelling the awaiting task stops the work at the next step.
        """

    async def decode_full(self, request: GenerationRequest, result: ImageResult) -> bytes:
        """A full-quality PNG of one result: engines that decode grids cheaply redo the decode here."""
        return result.png

    @abc.abstractmethod
    def profile(self, model: str | None = None) -> ModelProfile:
        """Defaults and pixel budget for `model` (None: the engine's default model)."""

    def models(self) -> list[str]:
        """Names a user may pass as `--model`."""
        return [self.profile().name]

    def describe(self) -> dict[str, Any]:
        """What `/info` and `/healthz` show: kind, model, device."""
        return {"engine": type(self).__name__, "model": self.profile().name}

    async def start(self) -> None:
        """Load what is needed before the first job, off the event loop."""

    async def close(self) -> None:
        """Release threads, channels and sessions."""
