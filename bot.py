"""The Discord bot: `python bot.py` or `imagine-bot`, configured by the environment and `.env`.

`create_bot()` builds it; `setup_hook` (run once logged in, before the gateway connects) opens
storage, builds the engine, starts the HTTP image API when IMAGINE_HTTP_PORT is set (on the same
engine and queue), loads the cogs, registers the persistent buttons, resumes the jobs a previous run
left unfinished and syncs the slash commands. No privileged intent is needed, and the commands work
in servers and in DMs.
"""

from __future__ import annotations

import logging
import sys

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from cogs.utils.buttons import DYNAMIC_ITEMS
from cogs.utils.config import BotConfig, ConfigError
from cogs.utils.errors import on_app_command_error
from cogs.utils.image_api import InBotImageApi
from cogs.utils.jobs import JobRunner
from engine.base import Engine
from engine.config import EngineConfig
from engine.factory import build_engine
from engine.types import ImagineError
from storage import Storage

log = logging.getLogger("imagine.bot")

EXTENSIONS = ("cogs.imagine", "cogs.history", "cogs.settings")


class ImagineBot(commands.Bot):
    storage: Storage
    engine: Engine
    runner: JobRunner
    #: The HTTP image API, while IMAGINE_HTTP_PORT is set; `http_api.port` is the port it took.
    http_api: InBotImageApi | None = None

    def __init__(self, config: BotConfig) -> None:
        intents = discord.Intents.none()
        intents.guilds = True  # channels and upload limits of the servers we are in; not privileged
        options = {} if config.guild_ready_timeout is None else {"guild_ready_timeout": config.guild_ready_timeout}
        super().__init__(
            command_prefix=commands.when_mentioned,
            help_command=None,
            intents=intents,
            # Nobody gets pinged by a prompt's text: each message names the users it may mention.
            allowed_mentions=discord.AllowedMentions.none(),
            allowed_contexts=app_commands.AppCommandContext(guild=True, dm_channel=True, private_channel=True),
            allowed_installs=app_commands.AppInstallationType(guild=True, user=True),
            **options,
        )
        self.config = config
        self._owns_engine = config.engine is None
        self._released = False
        self.tree.on_error = on_app_command_error

    async def setup_hook(self) -> None:
        config = self.config
        self.storage = await Storage.open(config.db_path, config.data_dir)
        self.engine = config.engine or build_engine(config.engine_config)
        self.runner = JobRunner(self, self.storage, self.engine, config)
        if config.http_port is not None:
            # Before any job resumes: a port that is taken stops the start with one line.
            self.http_api = InBotImageApi(self.runner, config)
            await self.http_api.start()
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        self.add_dynamic_items(*DYNAMIC_ITEMS)
        if self._owns_engine:
            # Loading a model takes a while; jobs simply wait for it on the engine's own thread.
            self.loop.create_task(self._start_engine(), name="imagine-engine-start")
        await self.runner.resume()
        if config.sync_commands:
            await self._sync_commands()

    async def _start_engine(self) -> None:
        try:
            await self.engine.start()
        except ImagineError as error:
            log.error("the engine could not start: %s", error)
        except Exception:
            log.exception("the engine could not start")

    async def _sync_commands(self) -> None:
        if self.config.dev_guild is not None:
            guild = discord.Object(self.config.dev_guild)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d commands to guild %s", len(synced), self.config.dev_guild)
        else:
            synced = await self.tree.sync()
            log.info("synced %d global commands (they can take a while to show up)", len(synced))

    async def on_ready(self) -> None:
        log.info("logged in as %s (%s) in %d servers", self.user, getattr(self.user, "id", "?"), len(self.guilds))

    async def close(self) -> None:
        await self.release()
        await super().close()

    async def release(self) -> None:
        """Stop the queue first: running jobs stay unfinished in storage and resume at the next start.

        The HTTP API goes before it, so its clients get a 503 rather than a dropped connection.
        """
        if self._released:
            return
        self._released = True
        if self.http_api is not None:
            await self.http_api.close()
        runner = getattr(self, "runner", None)
        if runner is not None:
            await runner.close()
        storage = getattr(self, "storage", None)
        if storage is not None:
            await storage.close()
        if self._owns_engine and getattr(self, "engine", None) is not None:
            await self.engine.close()


def create_bot(config: BotConfig | None = None) -> ImagineBot:
    """The bot, from `config` or from the environment and `.env` (raises ConfigError on bad values)."""
    return ImagineBot(config or BotConfig.from_env())


def main() -> None:
    discord.utils.setup_logging(level=logging.INFO, root=True)
    try:
        config = BotConfig.from_env()
    except (ConfigError, ValueError) as error:
        print(f"imagine-bot: {error}", file=sys.stderr)
        sys.exit(2)
    if not config.token:
        print(
            "imagine-bot: DISCORD_TOKEN is not set. Put it in .env or the environment (see docs/bot.md).",
            file=sys.stderr,
        )
        sys.exit(2)
    bot = create_bot(config)
    try:
        bot.run(config.token, log_handler=None)
    except discord.LoginFailure:
        print("imagine-bot: Discord refused DISCORD_TOKEN; copy it again from the developer portal.", file=sys.stderr)
        sys.exit(2)
    except discord.PrivilegedIntentsRequired:  # pragma: no cover - the bot asks for none
        print("imagine-bot: Discord asks for a privileged intent this bot does not use.", file=sys.stderr)
        sys.exit(2)
    except ImagineError as error:  # the engine or storage could not be set up
        print(f"imagine-bot: {error}", file=sys.stderr)
        sys.exit(2)
    except (OSError, aiohttp.ClientError) as error:  # DNS, refused connection, TLS: Discord is out of reach
        print(f"imagine-bot: cannot reach Discord ({type(error).__name__}: {error}).", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


__all__ = ["BotConfig", "EngineConfig", "ImagineBot", "create_bot", "main"]

if __name__ == "__main__":
    main()
