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


def user_message(error: BaseException) -> str:
    """What the user reads for `error`; unexpected errors are logged here, once."""
    original = error.original if isinstance(error, app_commands.CommandInvokeError) else error
    if isinstance(original, ImagineError):
        return str(original)
    if isinstance(error, app_commands.CheckFailure | app_commands.TransformerError):
        return str(error)
    log.error("unexpected error in an interaction", exc_info=original)
    return UNEXPECTED


async def send_error(interaction: discord.Interaction, text: str) -> None:
    """Show `text` to the user who acted, and to nobody else.

    When the interaction was already answered with a public "thinking..." message, that message is
    removed first: the first followup would otherwise take over its public visibility.
    """
    text = "❌ " + shorten(text, 1900)
    try:
        if not interaction.response.is_done():
            await interaction.response.send_message(text, ephemeral=True)
            return
        if interaction.response.type is discord.InteractionResponseType.deferred_channel_message:
            try:
                await interaction.delete_original_response()
            except discord.HTTPException:
                await interaction.edit_original_response(content=text, attachments=[], view=None)
                return
        await interaction.followup.send(text, ephemeral=True)
    except discord.HTTPException:
        log.warning("could not show an error to user %s", interaction.user.id, exc_info=True)


async def guarded(interaction: discord.Interaction, action: Callable[[], Awaitable[object]]) -> None:
    """Run a component or modal callback so that any failure ends as a message, never a traceback."""
    try:
        await action()
    except Exception as error:  # noqa: BLE001 - this is the last line of defence
        await send_error(interaction, user_message(error))
