"""One way to tell a user that something went wrong: short, specific, and only to them.

Errors we raise on purpose (`ImagineError` and its kin) carry a message written for the user and
are shown as they are. Anything else is a bug: the log gets the traceback, the user one line.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import discord
from discord import app_commands

from cogs.utils.rendering import shorten
from engine.types import ImagineError

log = logging.getLogger(__name__)

UNEXPECTED = "Something went wrong on our side; it has been logged. Please try again."
#: `interaction.extras` keys: the response was deferred privately; the response shows a job now.
PRIVATE_DEFER = "imagine_private_defer"
ORIGINAL_USED = "imagine_original_used"


def user_message(error: BaseException) -> str:
    """What the user reads for `error`: its own message if we raised it on purpose, else one line."""
    original = error.original if isinstance(error, app_commands.CommandInvokeError) else error
    if isinstance(original, ImagineError):
        return str(original)
    if isinstance(error, app_commands.CheckFailure | app_commands.TransformerError):
        return str(error)
    return UNEXPECTED


async def send_error(interaction: discord.Interaction, text: str) -> None:
    """Show `text` to the user who acted, and to nobody else.

    After a "thinking…" defer the first followup would become that message, public or not: a
    private defer simply turns into the error; a public one is settled and removed first (unless
    it already shows a job, see `ORIGINAL_USED`), and the error follows privately.
    """
    interaction.extras["error_shown"] = True
    text = "❌ " + shorten(text, 1900)
    try:
        if not interaction.response.is_done():
            await interaction.response.send_message(text, ephemeral=True)
            return
        thinking = interaction.response.type is discord.InteractionResponseType.deferred_channel_message
        if thinking and not interaction.extras.get(ORIGINAL_USED):
            if interaction.extras.get(PRIVATE_DEFER):
                await interaction.edit_original_response(content=text, attachments=[], view=None)
                return
            try:
                await interaction.edit_original_response(content="…", attachments=[], view=None)
                await interaction.delete_original_response()
            except discord.HTTPException:
                await interaction.edit_original_response(content=text, attachments=[], view=None)
                return
        await interaction.followup.send(text, ephemeral=True)
    except discord.HTTPException:
        log.warning("could not show an error to user %s", interaction.user.id, exc_info=True)


async def guarded(interaction: discord.Interaction, action: Callable[[], Awaitable[object]]) -> None:
    """Run a command, component or modal callback so that every failure ends as a short message.

    Errors raised on purpose stop here. Anything else is a bug: the user gets one line, and the
    error goes on to discord.py's handlers, which log it with its traceback.
    """
    try:
        await action()
    except ImagineError as error:
        await send_error(interaction, str(error))
    except Exception:
        await send_error(interaction, UNEXPECTED)
        raise


async def on_app_command_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
    """The command tree's last resort: log what was not expected, and tell the user if nobody has."""
    message = user_message(error)
    if message == UNEXPECTED:
        log.error("unexpected error in /%s", getattr(interaction.command, "name", "?"), exc_info=error)
    if not interaction.extras.get("error_shown"):
        await send_error(interaction, message)
