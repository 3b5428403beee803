"""What the bot's messages say: Midjourney's layout, within Discord's limits.

A finished job reads `**a fox in the snow** --ar 3:2 --seed 123 - <@user>`: the prompt and exactly
the parameters that reproduce it, so people can copy the line and get the same images again.
Everything here is pure text and PNG work, so it is tested without Discord.
"""

from __future__ import annotations

import io
from datetime import datetime

import discord

from engine.grid import make_grid
from engine.params import describe_request
from engine.types import GenerationRequest, ImageResult, ModelProfile

CONTENT_LIMIT = 2000
PROMPT_PREVIEW = 80
#: Longest engine note (a retry on another server, say) shown under a job's percentage.
NOTE_LIMIT = 200


def jump_url(guild_id: int | None, channel_id: int | None, message_id: int | None) -> str | None:
    """A link that opens the message in the client; None when the job never got a message."""
    if channel_id is None or message_id is None:
        return None
    return f"https://discord.com/channels/{guild_id or '@me'}/{channel_id}/{message_id}"


def shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def _bold_prompt(prompt: str, room: int) -> str:
    # Escaping keeps a prompt's own `*` or `_` from breaking the bold; mentions are neutralised
    # by the allowed-mentions of every message, not here.
    return f"**{discord.utils.escape_markdown(shorten(prompt, max(1, room)))}**"


def job_content(
    request: GenerationRequest,
    profile: ModelProfile,
    user_id: int,
    label: str | None = None,
    status: str | None = None,
) -> str:
    """`**prompt** --params - <@user>`, with an optional label (`Image #2`) and status (`(42%)`).

    The prompt is what gets shortened when the whole would pass Discord's 2000 characters.
    """
    params = describe_request(request, profile)
    tail = f" - {label + ' ' if label else ''}<@{user_id}>"
    if status:
        tail += f" {status}"
    head_params = f" {params}" if params else ""
    room = CONTENT_LIMIT - len(tail) - len(head_params) - 4
    if room < 20:  # pathological negative prompts: shorten the parameters too
        head_params = " " + shorten(params, CONTENT_LIMIT // 2)
        room = CONTENT_LIMIT - len(tail) - len(head_params) - 4
    content = f"{_bold_prompt(request.prompt, room)}{head_params}{tail}"
    return content[:CONTENT_LIMIT]


def progress_status(step: int, total: int, note: str | None = None) -> str:
    """`(40%)`, and under it in small print what the engine wants the user to know, if anything."""
    percent = int(100 * step / total) if total else 0
    if not note:
        return f"({percent}%)"
    return f"({percent}%)\n-# {discord.utils.escape_markdown(shorten(note, NOTE_LIMIT))}"


def waiting_status(position: int) -> str:
    if position <= 0:
        return "(Starting…)"
    if position == 1:
        return "(Waiting to start: next in the queue)"
    return f"(Waiting to start: number {position} in the queue)"


def kind_label(kind: str, strength: float) -> str | None:
    """The few words Midjourney puts before the user's name for results of a button."""
    if kind == "variation" or kind == "vary":
        return f"Variations ({'Strong' if strength >= 0.5 else 'Subtle'}) by"
    if kind == "upscale":
        return f"Upscaled ({'Creative' if strength > 0.3 else 'Subtle'}) by"
    if kind == "reroll":
        return "Rerolled by"
    return None


def grid_png(results: list[ImageResult]) -> bytes:
    """The 2x2 grid of a job as one PNG: U1 top left, U2 top right, U3 and U4 below."""
    if len(results) == 1:
        return results[0].png
    buffer = io.BytesIO()
    make_grid([result.png for result in sorted(results, key=lambda r: r.index)]).save(buffer, format="PNG")
    return buffer.getvalue()


def history_line(
    job_id: int,
    prompt_text: str,
    status: str,
    created_at: datetime | float | int | str | None,
    link: str | None,
) -> str:
    """One job in /history: id, when, status, a jump link and the prompt with its parameters."""
    when = _timestamp(created_at)
    state = "" if status == "done" else f" · {status}"
    jump = f" · [jump]({link})" if link else ""
    text = discord.utils.escape_markdown(shorten(prompt_text, PROMPT_PREVIEW))
    return f"`#{job_id}`{when}{state}{jump}\n{text}"


def _timestamp(value: datetime | float | int | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return ""
    seconds = value.timestamp() if isinstance(value, datetime) else float(value)
    return f" · <t:{int(seconds)}:R>"
