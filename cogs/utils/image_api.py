"""The HTTP image API (`GET /?prompt=`) served from inside the bot, when IMAGINE_HTTP_PORT is set.

One engine and one queue: each HTTP generation is a job in the bot's own JobQueue, owned by
`http:<client>` (the client's address, or a hash of its API key), so HTTP clients take turns with
Discord users under the same fair rule and count against the same global limit. An HTTP job has
no Discord message and no row in SQLite: its answer is the response itself, and seeded images are
already kept in the API's disk cache. Storing them would fill everyone's history with rows no
Discord user owns and no button can reach.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from typing import TYPE_CHECKING

from aiohttp import web

from cogs.utils.config import ConfigError
from engine.http_api import HANDLER_ARGS, AccessLogger, ApiError, create_app
from engine.queue import QueueFull
from engine.types import GenerationRequest, ImageResult

if TYPE_CHECKING:
    from cogs.utils.config import BotConfig
    from cogs.utils.jobs import JobRunner

log = logging.getLogger(__name__)

#: Seconds a refused client is told to wait; the queue cannot know when a place frees up.
RETRY_AFTER = 30.0
#: Requests still in flight at shutdown get this long to finish (they are answered 503 at once).
SHUTDOWN_TIMEOUT = 5.0


class InBotImageApi:
    """The aiohttp site and the bridge from its generations to the bot's queue."""

    def __init__(self, runner: JobRunner, config: BotConfig) -> None:
        self.runner = runner
        self.config = config
        self.app = create_app(runner.engine, config.http_settings(), run=self.generate)
        self._web_runner = web.AppRunner(
            self.app, access_log_class=AccessLogger, shutdown_timeout=SHUTDOWN_TIMEOUT, **HANDLER_ARGS
        )
        self._ids = itertools.count(1)
        #: Unanswered generations by job id, so a shutdown can answer them instead of dropping them.
        self._pending: dict[str, asyncio.Future[list[ImageResult]]] = {}
        self._closing = False
        self.port: int | None = None

    async def start(self) -> None:
        """Listen on IMAGINE_HTTP_HOST:IMAGINE_HTTP_PORT; a port that cannot be taken is a ConfigError."""
        host, port = self.config.http_host, self.config.http_port or 0
        await self._web_runner.setup()
        site = web.TCPSite(self._web_runner, host, port)
        try:
            await site.start()
        except OSError as error:
            await self._web_runner.cleanup()
            # asyncio wraps the system's reason in a long sentence; the errno has it plainly.
            reason = os.strerror(error.errno) if error.errno and error.errno > 0 else error.strerror or str(error)
            raise ConfigError(f"IMAGINE_HTTP_PORT: cannot listen on {host}:{port} ({reason}).") from None
        self.port = self._web_runner.addresses[0][1]
        log.info("serving images on http://%s:%s/?prompt=...", host, self.port)

    async def generate(self, request: GenerationRequest, client: str) -> list[ImageResult]:
        """Queue the generation as `http:<client>`'s job and wait for its turn and its images."""
        if self._closing:
            raise ApiError(503, "The bot is shutting down; try again in a minute.", retry_after=RETRY_AFTER)
        job_id = f"http-{next(self._ids)}"
        done: asyncio.Future[list[ImageResult]] = asyncio.get_running_loop().create_future()

        async def work() -> None:
            try:
                results = await self.runner.engine.generate(request)
            except asyncio.CancelledError:
                if not done.done():
                    done.cancel()
                raise
            except Exception as error:  # the API turns it into its answer (400, 403, 503 or 500)
                if not done.done():
                    done.set_exception(error)
            else:
                if not done.done():
                    done.set_result(results)

        try:
            self.runner.submit_work(job_id, f"http:{client}", work)
        except QueueFull as error:
            raise _refusal(error) from None
        self._pending[job_id] = done
        try:
            return await done
        except asyncio.CancelledError:
            self.runner.cancel_work(job_id)  # nobody waits for it any more: free its place or its slot
            raise
        finally:
            self._pending.pop(job_id, None)

    async def close(self) -> None:
        """Answer what is in flight with 503, stop listening and close every connection.

        Runs just before the queue closes, which drops the waiting jobs silently and cancels the
        running ones: their clients must get an answer rather than hang until their own timeouts.
        """
        if self._closing:
            return
        self._closing = True
        for done in self._pending.values():
            if not done.done():
                done.set_exception(ApiError(503, "The bot is shutting down; try again in a minute.", retry_after=RETRY_AFTER))
        if self._web_runner.server is not None:  # set up and not cleaned up yet
            await self._web_runner.cleanup()


def _refusal(error: QueueFull) -> ApiError:
    """The queue's refusal in HTTP terms: this client's own limit is 429, a full queue 503."""
    if error.limit == "user":
        return ApiError(
            429,
            f"This client already has {error.count} images waiting (the limit is {error.maximum}); "
            "try again when one is done.",
            retry_after=RETRY_AFTER,
        )
    if error.limit == "global":
        return ApiError(
            503, f"The queue is full: {error.count} jobs are waiting; try again shortly.", retry_after=RETRY_AFTER
        )
    return ApiError(503, "The bot is shutting down; try again in a minute.", retry_after=RETRY_AFTER)
