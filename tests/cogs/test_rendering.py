"""Message text: Midjourney's layout, reproducible parameters, Discord's 2000 characters."""

from __future__ import annotations

from datetime import UTC, datetime

from cogs.utils.rendering import (
    CONTENT_LIMIT,
    history_line,
    job_content,
    jump_url,
    kind_label,
    progress_status,
    waiting_status,
)
from engine.params import parse_prompt
from engine.types import ModelProfile

PROFILE = ModelProfile(name="sd", base_resolution=512, default_steps=25)


def _request(text: str):
    return parse_prompt(text, lambda model: PROFILE)


def test_content_is_the_prompt_its_parameters_and_the_user():
    request = _request("a red fox --ar 3:2 --seed 123")
    assert job_content(request, PROFILE, 42) == "**a red fox** --ar 3:2 --seed 123 - <@42>"
    assert job_content(request, PROFILE, 42, "Image #2") == "**a red fox** --ar 3:2 --seed 123 - Image #2 <@42>"
    assert job_content(request, PROFILE, 42, status="(40%)").endswith("- <@42> (40%)")


def test_the_text_parses_back_into_the_same_request():
    request = _request("a red fox --ar 16:9 --seed 9 --steps 7 --cfg 5.5 --no snow, trees --tile")
    text = job_content(request, PROFILE, 1).removesuffix(" - <@1>").replace("**", "")
    assert _request(text) == request


def test_markdown_in_the_prompt_cannot_break_the_layout():
    content = job_content(_request("a *bold* __move__ --seed 1"), PROFILE, 1)
    assert content.startswith(r"**a \*bold\* \_\_move\_\_**")


def test_long_prompts_are_shortened_to_fit_discord():
    request = _request("lighthouse " * 300 + "--seed 5 --no " + "fog " * 300)
    content = job_content(request, PROFILE, 123456789012345678, "Variations (Strong) by", "(Waiting to start)")
    assert len(content) <= CONTENT_LIMIT
    assert content.endswith("Variations (Strong) by <@123456789012345678> (Waiting to start)")
    assert "…" in content and "--seed 5" in content


def test_statuses_and_labels():
    assert progress_status(3, 12) == "(25%)"
    assert progress_status(0, 4, "Server_2 went away; retrying.") == "(0%)\n-# Server\\_2 went away; retrying."
    assert len(progress_status(1, 4, "x" * 5000)) < 220
    assert waiting_status(0) == "(Starting…)"
    assert waiting_status(1) == "(Waiting to start: next in the queue)"
    assert waiting_status(4) == "(Waiting to start: number 4 in the queue)"
    assert kind_label("vary", 0.35) == "Variations (Subtle) by"
    assert kind_label("variation", 0.7) == "Variations (Strong) by"
    assert kind_label("upscale", 0.25) == "Upscaled (Subtle) by"
    assert kind_label("upscale", 0.5) == "Upscaled (Creative) by"
    assert kind_label("imagine", 0.75) is None


def test_jump_links_and_history_lines():
    assert jump_url(1, 2, 3) == "https://discord.com/channels/1/2/3"
    assert jump_url(None, 2, 3) == "https://discord.com/channels/@me/2/3"
    assert jump_url(1, 2, None) is None
    when = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    line = history_line(7, "a fox --seed 3", "failed", when, "https://x/y")
    assert line == f"`#7` · <t:{int(when.timestamp())}:R> · failed · [jump](https://x/y)\na fox --seed 3"
    assert history_line(8, "a fox", "done", None, None) == "`#8`\na fox"
