"""Queue behaviour seen from Discord: fairness, limits, cancel, restarts, failures.

These use `FakeEngine`, whose jobs can be held at a gate so several wait at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator

import pytest

from bot import ImagineBot, create_bot
from cogs.utils.config import BotConfig
from engine.types import EngineUnavailable, FinishReason, ImageResult, Progress
from tests.cogs.conftest import FakeEngine, buttons_of

pytestmark = pytest.mark.simcord(settle_timeout=30)


@pytest.fixture
def engine(fake_engine: FakeEngine) -> FakeEngine:
    return fake_engine


@pytest.fixture
def bot_config(fake_config: BotConfig) -> BotConfig:
    return fake_config


@contextlib.asynccontextmanager
async def restarted(scene, old_bot: ImagineBot, config: BotConfig) -> AsyncIterator[ImagineBot]:
    """The bot as a new process would be: the same database, a new (open) engine, old messages kept."""
    config.engine = FakeEngine()
    fresh = create_bot(config)
    await scene.env.restart_bot(fresh)
    await old_bot.release()
    try:
        yield fresh
    finally:
        await fresh.release()


async def test_a_newcomer_runs_before_a_heavy_users_backlog(scene, simcord_bot, engine):
    engine.close_gate(scene.env)
    messages = []
    for number in range(1, 6):
        result = await scene.alice.slash(scene.channel, "imagine", prompt=f"alice {number}")
        messages.append(result.response)
    bob = await scene.bob.slash(scene.channel, "imagine", prompt="bob 1")

    assert engine.started == ["alice 1"]  # held at the gate; the rest wait
    assert "(Waiting to start: next in the queue)" in bob.response.content
    assert "number 5 in the queue" in messages[-1].content  # bob's job went before it
    engine.gate.set()
    await scene.env.settle()

    assert engine.started == ["alice 1", "bob 1", "alice 2", "alice 3", "alice 4", "alice 5"]
    assert len(bob.response.attachments) == 1 and "U1" in buttons_of(bob.response)


class HeldJobs:
    """Holds each job at the engine until the test lets its prompt go, so jobs start one by one."""

    def __init__(self, engine: FakeEngine, env) -> None:
        self.gates: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        plain = engine.generate

        async def generate(request, on_progress=None, preview=False):
            await env.external_wait(self.gates[request.prompt].wait(), reason=f"holding {request.prompt}")
            return await plain(request, on_progress, preview)

        engine.generate = generate
        self.env = env

    async def release(self, prompt: str) -> None:
        self.gates[prompt].set()
        await self.env.settle()


NEXT = "(Waiting to start: next in the queue)"
SECOND = "(Waiting to start: number 2 in the queue)"


async def test_waiting_messages_follow_their_place_in_the_queue(scene, simcord_bot, engine):
    held = HeldJobs(engine, scene.env)
    await scene.alice.slash(scene.channel, "imagine", prompt="alice 1")  # runs
    alice_2 = (await scene.alice.slash(scene.channel, "imagine", prompt="alice 2")).response
    assert alice_2.content.endswith(NEXT)

    bob_1 = (await scene.bob.slash(scene.channel, "imagine", prompt="bob 1")).response
    # Bob has had no turn yet, so he goes first: alice's second job moves back, and says so.
    assert bob_1.content.endswith(NEXT)
    assert alice_2.content.endswith(SECOND)

    await held.release("alice 1")  # bob's job starts: alice's moves up
    assert "(0%)" in bob_1.content
    assert alice_2.content.endswith(NEXT)

    await held.release("bob 1")  # alice's starts
    assert "(0%)" in alice_2.content and "Waiting" not in alice_2.content
    await held.release("alice 2")
    assert len(alice_2.attachments) == 1 and simcord_bot.runner.places == {}


async def test_a_cancelled_job_makes_room_and_is_not_edited_again(scene, simcord_bot, engine):
    held = HeldJobs(engine, scene.env)
    await scene.alice.slash(scene.channel, "imagine", prompt="alice 1")
    alice_2 = (await scene.alice.slash(scene.channel, "imagine", prompt="alice 2")).response
    bob_1 = (await scene.bob.slash(scene.channel, "imagine", prompt="bob 1")).response
    assert alice_2.content.endswith(SECOND)

    await scene.bob.click(bob_1.message, custom_id=buttons_of(bob_1)["❌"])
    assert bob_1.content.endswith("(cancelled)")
    assert alice_2.content.endswith(NEXT)
    await held.release("alice 1")
    await held.release("alice 2")
    assert bob_1.content.endswith("(cancelled)") and engine.started == ["alice 1", "alice 2"]


async def test_place_updates_are_rate_limited(scene, simcord_bot, engine):
    simcord_bot.config.progress_interval = 60  # well inside the 15 minutes an interaction token lives
    held = HeldJobs(engine, scene.env)
    await scene.alice.slash(scene.channel, "imagine", prompt="alice 1")
    alice_2 = (await scene.alice.slash(scene.channel, "imagine", prompt="alice 2")).response
    await scene.bob.slash(scene.channel, "imagine", prompt="bob 1")
    assert alice_2.content.endswith(SECOND)  # the first update goes out at once

    await held.release("alice 1")
    assert alice_2.content.endswith(SECOND)  # the next waits for the interval…
    await scene.env.advance_time(60)
    assert alice_2.content.endswith(NEXT)  # …and then catches up
    await held.release("bob 1")
    await held.release("alice 2")


async def test_per_user_and_global_limits_refuse_clearly_and_store_nothing(scene, simcord_bot, engine):
    simcord_bot.runner.queue.per_user_waiting = 2
    simcord_bot.runner.queue.max_waiting = 3
    engine.close_gate(scene.env)
    for number in range(3):  # one runs, two wait
        await scene.alice.slash(scene.channel, "imagine", prompt=f"alice {number}")

    refused = await scene.alice.slash(scene.channel, "imagine", prompt="one too many")
    assert refused.ephemeral
    assert "2 jobs waiting" in refused.response.content and "limit is 2" in refused.response.content
    assert (await simcord_bot.storage.history(scene.alice.id))[1] == 3

    await scene.bob.slash(scene.channel, "imagine", prompt="bob fits")  # the third waiting job
    carol = scene.guild.add_member(scene.env.create_user("carol"))
    full = await carol.slash(scene.channel, "imagine", prompt="carol is too late")
    assert full.ephemeral and "The queue is full" in full.response.content
    assert (await simcord_bot.storage.history(carol.id))[1] == 0
    engine.gate.set()
    await scene.env.settle()


async def test_jobs_that_start_at_once_take_no_waiting_place(scene, tmp_path, engine):
    # Two slots, two running jobs each, no waiting: both variants of a permutation start at once,
    # so the up-front check must not count one of them as waiting.
    engine.slots = 2
    config = BotConfig(db_path=tmp_path / "two.db", engine=engine, progress_interval=0.0, user_running=2, user_waiting=0)
    bot = create_bot(config)
    await scene.env.restart_bot(bot)
    try:
        result = await scene.alice.slash(scene.channel, "imagine", prompt="a {red, blue} fox")

        assert not result.ephemeral, result.response.content
        assert sorted(engine.started) == ["a blue fox", "a red fox"]
        refused = await scene.alice.slash(scene.channel, "imagine", prompt="a {red, green, blue} fox")
        assert refused.ephemeral and "0 jobs waiting and this would add 3 (the limit is 0)" in refused.response.content
    finally:
        await bot.release()


async def test_cancel_is_for_the_owner_and_works_waiting_or_running(scene, simcord_bot, engine):
    engine.close_gate(scene.env)
    running = (await scene.alice.slash(scene.channel, "imagine", prompt="runs")).response
    waiting = (await scene.alice.slash(scene.channel, "imagine", prompt="waits")).response
    storage = simcord_bot.storage
    (waiting_job, running_job), _ = await storage.history(scene.alice.id)

    denied = await scene.bob.click(waiting.message, custom_id=buttons_of(waiting)["❌"])
    assert denied.ephemeral and "Only the person who started" in denied.response.content
    assert (await storage.get_job(waiting_job.id)).status == "queued"

    await scene.alice.click(waiting.message, custom_id=buttons_of(waiting)["❌"])
    assert (await storage.get_job(waiting_job.id)).status == "cancelled"
    assert waiting.content.endswith("(cancelled)") and list(buttons_of(waiting)) == ["🔄"]

    await scene.alice.click(running.message, custom_id=buttons_of(running)["❌"])
    assert (await storage.get_job(running_job.id)).status == "cancelled"
    assert running.content.endswith("(cancelled)") and list(buttons_of(running)) == ["🔄"]
    assert simcord_bot.runner.queue.running() == [] and simcord_bot.runner.queue.waiting() == []
    assert engine.started == ["runs"]

    # The queue keeps working after a cancel.
    engine.gate.set()
    after = await scene.alice.slash(scene.channel, "imagine", prompt="after")
    assert len(after.response.attachments) == 1


async def test_a_button_on_an_old_message_works_after_a_restart(scene, simcord_bot, bot_config):
    grid = (await scene.alice.slash(scene.channel, "imagine", prompt="before the restart")).response

    async with restarted(scene, simcord_bot, bot_config):
        result = await scene.bob.click(grid.message, label="U3")
        assert "Image #3" in result.response.content and len(result.response.attachments) == 1
        variations = await scene.bob.click(grid.message, label="V1")
        assert len(buttons_of(variations.response)) == 9


async def test_unfinished_jobs_resume_after_a_restart(scene, simcord_bot, bot_config, engine):
    engine.close_gate(scene.env)
    first = (await scene.alice.slash(scene.channel, "imagine", prompt="interrupted")).response
    second = (await scene.bob.slash(scene.channel, "imagine", prompt="never started")).response
    storage = simcord_bot.storage
    assert [j.status for j in await storage.unfinished_jobs()] == ["running", "queued"]

    async with restarted(scene, simcord_bot, bot_config) as fresh:
        await scene.env.settle()
        assert fresh.engine.started == ["interrupted", "never started"]
        assert await fresh.storage.unfinished_jobs() == []
        for message in (first, second):
            assert len(message.attachments) == 1 and "U1" in buttons_of(message)
            assert "Waiting" not in message.content


async def test_without_resume_unfinished_jobs_fail_visibly_with_a_retry(scene, simcord_bot, bot_config, engine):
    engine.close_gate(scene.env)
    message = (await scene.alice.slash(scene.channel, "imagine", prompt="interrupted")).response

    bot_config.resume_jobs = False
    async with restarted(scene, simcord_bot, bot_config) as fresh:
        (job,), _ = await fresh.storage.history(scene.alice.id)
        assert job.status == "failed" and "restarted" in job.error
        assert "restarted" in message.content and list(buttons_of(message)) == ["🔄"]
        retried = await scene.alice.click(message.message, custom_id=buttons_of(message)["🔄"])
        assert len(retried.response.attachments) == 1


async def test_the_engines_progress_messages_are_shown_under_the_percentage(scene, simcord_bot, engine):
    plain = engine.generate
    retrying = "The engine server went away; retrying on another server."

    async def with_a_retry(request, on_progress=None, preview=False):
        on_progress(Progress(1, 4))
        await asyncio.sleep(0.05)  # each edit lands before the next step
        on_progress(Progress(0, 4, message=retrying))
        await asyncio.sleep(0.05)
        on_progress(Progress(2, 4))
        await asyncio.sleep(0.05)
        return await plain(request)

    engine.generate = with_a_retry
    result = await scene.alice.slash(scene.channel, "imagine", prompt="a fox")

    edits = [e.json["content"] for e in scene.env.http_requests if e.method == "PATCH" and e.json]
    tails = [content.split(scene.alice.mention, 1)[1] for content in edits if "%)" in content]
    assert tails == [" (0%)", " (25%)", f" (0%)\n-# {retrying}", f" (50%)\n-# {retrying}"]
    assert retrying not in result.response.content and len(result.response.attachments) == 1


async def test_engine_errors_end_the_job_with_their_message(scene, simcord_bot, engine):
    async def broken(request, on_progress=None, preview=False):
        raise EngineUnavailable("The model server at 10.0.0.5:50051 is not answering.")

    engine.generate = broken
    result = await scene.alice.slash(scene.channel, "imagine", prompt="a fox")

    assert "❌ The model server at 10.0.0.5:50051 is not answering." in result.response.content
    assert list(buttons_of(result.response)) == ["🔄"]
    (job,), _ = await simcord_bot.storage.history(scene.alice.id)
    assert job.status == "failed" and "not answering" in job.error


async def test_unexpected_engine_errors_are_logged_not_shown(scene, simcord_bot, engine, caplog):
    async def broken(request, on_progress=None, preview=False):
        raise RuntimeError("CUDA error: device-side assert triggered at 0xdeadbeef")

    engine.generate = broken
    result = await scene.alice.slash(scene.channel, "imagine", prompt="a fox")

    assert "deadbeef" not in result.response.content and "has been logged" in result.response.content
    assert "deadbeef" in caplog.text


@pytest.mark.parametrize("mode", ["spoiler", "refuse"])
async def test_filtered_images_are_spoilered_or_refused(scene, simcord_bot, engine, mode):
    simcord_bot.config.filtered = mode
    plain = engine.generate

    async def flagged(request, on_progress=None, preview=False):
        results = await plain(request, on_progress, preview)
        return [ImageResult(png=r.png, seed=r.seed, index=r.index, width=r.width, height=r.height,
                            finish_reason=FinishReason.FILTERED) for r in results]

    engine.generate = flagged
    result = await scene.alice.slash(scene.channel, "imagine", prompt="something questionable")

    (job,), _ = await simcord_bot.storage.history(scene.alice.id)
    if mode == "spoiler":
        assert result.response.attachments[0].filename.startswith("SPOILER_") and job.status == "done"
    else:
        assert result.response.attachments == [] and job.status == "failed"
        assert "content filter" in result.response.content


async def test_permutations_make_one_job_each_and_ask_above_five(scene, simcord_bot, engine):
    two = await scene.alice.slash(scene.channel, "imagine", prompt="a {red, blue} fox")
    assert two.response.content.startswith("**a red fox**")
    assert [m.content.split("**")[1] for m in two.followups] == ["a blue fox"]
    assert engine.started == ["a red fox", "a blue fox"]

    many = await scene.alice.slash(scene.channel, "imagine", prompt="a {red, green, blue} {cat, dog}")
    assert many.ephemeral and "6 jobs" in many.response.content
    assert len(engine.started) == 2  # nothing runs before the answer
    confirmed = await scene.alice.click(many.response.message, label="Yes, queue them all")
    assert len(confirmed.followups) == 6
    assert engine.started[2:] == ["a red cat", "a red dog", "a green cat", "a green dog", "a blue cat", "a blue dog"]
    assert all(len(m.attachments) == 1 for m in confirmed.followups)


async def test_a_resumed_job_is_delivered_as_it_was_asked_whatever_the_setting_is_now(
    scene, simcord_bot, bot_config, engine
):
    storage = simcord_bot.storage
    await storage.update_settings(scene.alice.id, private=True)
    engine.close_gate(scene.env)
    secret = await scene.alice.slash(scene.channel, "imagine", prompt="my secret")
    public = (await scene.bob.slash(scene.channel, "imagine", prompt="for everyone")).response
    assert secret.ephemeral and not public.flags.ephemeral
    # Both change their minds while the jobs are unfinished.
    await storage.update_settings(scene.alice.id, private=False)
    await storage.update_settings(scene.bob.id, private=True)

    async with restarted(scene, simcord_bot, bot_config) as fresh:
        await scene.env.settle()
        assert await fresh.storage.unfinished_jobs() == []
        # The old token is gone and an ephemeral message cannot be edited by the bot: the private
        # result goes to its owner's DMs, never into the channel.
        assert all("my secret" not in m.content for m in scene.channel.history())
        assert any("my secret" in m.content and m.attachments for m in scene.alice.user.dm_channel.history())
        # The public one is finished in place, in the channel.
        assert len(public.attachments) == 1 and "U1" in buttons_of(public)
        assert scene.bob.user.dm_channel is None or not scene.bob.user.dm_channel.history()


async def test_a_job_whose_image_prompt_file_vanished_fails_visibly(scene, simcord_bot, engine, tmp_path):
    import io

    from PIL import Image

    engine.close_gate(scene.env)
    await scene.alice.slash(scene.channel, "imagine", prompt="first")
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (9, 9, 9)).save(buffer, format="PNG")
    result = await scene.alice.slash(scene.channel, "imagine", prompt="from a photo", image=("p.png", buffer.getvalue()))
    (waiting,) = result.followups
    for path in simcord_bot.storage.files.root.rglob("*.png"):
        path.unlink()  # the data directory was pruned while the job waited

    engine.gate.set()
    await scene.env.settle()

    (job, _), _ = await simcord_bot.storage.history(scene.alice.id)
    assert job.status == "failed" and waiting.content.startswith("❌")
    assert await simcord_bot.storage.unfinished_jobs() == []
