"""The fair job queue: round robin between owners, limits, cancelling, workers that come and go."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.queue import JobQueue, QueueClosed, QueuedJob, QueueFull
from engine.types import ImagineError


async def settle(rounds: int = 30) -> None:
    """Let workers run until they are all parked on their gates (or gone)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class Gated:
    """A `run` whose jobs stay running until the test opens their gate (or `auto` is on)."""

    def __init__(self, auto: bool = False, **limits) -> None:
        self.auto = auto
        self.started: list[int | str] = []
        self.finished: list[int | str] = []
        self.cancelled: list[int | str] = []
        self.most_at_once = 0
        self.gates: dict[int | str, asyncio.Event] = defaultdict(asyncio.Event)
        self.queue = JobQueue(self.run, **limits)

    async def run(self, job: QueuedJob) -> None:
        self.started.append(job.job_id)
        self.most_at_once = max(self.most_at_once, len(self.queue.running()))
        try:
            if self.auto:
                await asyncio.sleep(0)
            else:
                await self.gates[job.job_id].wait()
        except asyncio.CancelledError:
            self.cancelled.append(job.job_id)
            raise
        self.finished.append(job.job_id)

    def submit(self, job_id: int | str, owner: int | str, **kwargs) -> int:
        return self.queue.submit(QueuedJob(job_id, owner), **kwargs)

    async def finish(self, job_id: int | str) -> None:
        self.gates[job_id].set()
        await settle()


def other_tasks() -> set[asyncio.Task]:
    return asyncio.all_tasks() - {asyncio.current_task()}


# -- fairness and positions ----------------------------------------------------------------------


async def test_a_newcomer_runs_second_not_after_five():
    gated = Gated(auto=True)
    assert [gated.submit(f"A{n}", "A") for n in range(1, 6)] == [0, 1, 2, 3, 4]
    assert gated.submit("B1", "B") == 1
    assert [gated.queue.position(j) for j in ["A1", "B1", "A2", "A3", "A4", "A5"]] == [0, 1, 2, 3, 4, 5]
    await gated.queue.join()
    assert gated.started == ["A1", "B1", "A2", "A3", "A4", "A5"]


async def test_owners_take_turns_and_waiting_lists_the_run_order():
    gated = Gated(auto=True)
    for owner in "ABC":
        for n in range(1, 4):
            gated.submit(f"{owner}{n}", owner)
    expected = ["A1", "B1", "C1", "A2", "B2", "C2", "A3", "B3", "C3"]
    assert [j.job_id for j in gated.queue.waiting()] == expected[1:]
    assert [j.job_id for j in gated.queue.waiting("B")] == ["B1", "B2", "B3"]
    assert [j.job_id for j in gated.queue.running()] == ["A1"]
    assert len(gated.queue) == 9
    await gated.queue.join()
    assert gated.started == expected
    assert len(gated.queue) == 0


async def test_an_owner_who_just_ran_waits_behind_one_who_has_been_waiting():
    gated = Gated()
    gated.submit("A1", "A")
    gated.submit("A2", "A")
    await settle()
    gated.submit("B1", "B")
    await gated.finish("A1")  # B1 (never served) goes before A2
    assert gated.started == ["A1", "B1"]
    gated.submit("B2", "B")
    await gated.finish("B1")  # now A was served longer ago than B
    assert gated.started == ["A1", "B1", "A2"]
    assert gated.queue.position("B2") == 1
    assert gated.queue.position("nope") is None
    await gated.finish("A2")
    await gated.finish("B2")
    assert gated.started == ["A1", "B1", "A2", "B2"]


async def test_positions_move_up_as_jobs_finish():
    gated = Gated()
    for job, owner in [("A1", "A"), ("A2", "A"), ("B1", "B"), ("C1", "C")]:
        gated.submit(job, owner)
    await settle()
    assert [gated.queue.position(j) for j in ["A1", "B1", "C1", "A2"]] == [0, 1, 2, 3]
    await gated.finish("A1")
    assert [gated.queue.position(j) for j in ["B1", "C1", "A2"]] == [0, 1, 2]


async def test_owners_may_be_strings():
    gated = Gated(auto=True)
    gated.submit(1, "127.0.0.1:5000")
    gated.submit(2, "127.0.0.1:5000")
    gated.submit(3, "10.0.0.2:40000")
    await gated.queue.join()
    assert gated.started == [1, 3, 2]


# -- limits --------------------------------------------------------------------------------------


async def test_per_owner_running_limit_keeps_a_free_slot_for_others():
    gated = Gated(slots=2, per_user_running=1)
    assert gated.submit("A1", "A") == 0
    assert gated.submit("A2", "A") == 1  # a slot is free, but A already runs one
    await settle()
    assert gated.started == ["A1"]
    assert gated.submit("B1", "B") == 0
    await settle()
    assert gated.started == ["A1", "B1"]
    await gated.finish("A1")
    assert gated.started == ["A1", "B1", "A2"]
    for job in ("A2", "B1"):
        await gated.finish(job)
    await gated.queue.join()


async def test_per_owner_running_limit_above_one():
    gated = Gated(slots=3, per_user_running=2)
    for n in range(4):
        gated.submit(f"A{n}", "A")
    await settle()
    assert gated.started == ["A0", "A1"]
    for job in ("A0", "A1", "A2", "A3"):
        await gated.finish(job)
    assert gated.finished == ["A0", "A1", "A2", "A3"]


async def test_per_owner_waiting_limit():
    gated = Gated(per_user_waiting=2)
    gated.submit("A1", "A")
    gated.submit("A2", "A")
    gated.submit("A3", "A")
    with pytest.raises(QueueFull) as refused:
        gated.submit("A4", "A")
    assert str(refused.value) == (
        "You already have 2 jobs waiting (the limit is 2). Wait for one to finish or cancel one with ❌."
    )
    assert (refused.value.limit, refused.value.count, refused.value.maximum) == ("user", 2, 2)
    assert isinstance(refused.value, ImagineError)
    assert gated.submit("B1", "B") == 1  # others are not affected
    assert gated.queue.position("A4") is None
    for job in ("A1", "B1", "A2", "A3"):
        await gated.finish(job)
    assert gated.started == ["A1", "B1", "A2", "A3"]
    assert gated.submit("A4", "A") == 0  # room again


async def test_global_waiting_cap():
    gated = Gated(max_waiting=3)
    gated.submit("A1", "A")  # runs: not counted as waiting
    gated.submit("A2", "A")
    gated.submit("B1", "B")
    gated.submit("C1", "C")
    with pytest.raises(QueueFull) as refused:
        gated.submit("D1", "D")
    assert (
        str(refused.value)
        == "The queue is full: 3 jobs are waiting (the limit is 3). Try again in a few minutes."
    )
    assert refused.value.limit == "global"
    # Jobs resumed after a restart were accepted once already and skip the limits.
    assert gated.submit("R1", "R", enforce_limits=False) == 3  # with the other newcomers, before A2
    assert len(gated.queue) == 5
    await gated.queue.close()


async def test_check_refuses_as_submit_would_and_queues_nothing():
    gated = Gated(per_user_waiting=2, max_waiting=3)
    gated.queue.check("A")  # room: nothing raised
    gated.submit("A1", "A")
    gated.submit("A2", "A")
    gated.submit("A3", "A")
    assert len(gated.queue) == 3
    with pytest.raises(QueueFull) as checked:
        gated.queue.check("A")
    with pytest.raises(QueueFull) as submitted:
        gated.submit("A4", "A")
    assert str(checked.value) == str(submitted.value)
    assert (checked.value.limit, checked.value.count, checked.value.maximum) == ("user", 2, 2)

    gated.submit("B1", "B")  # the third waiting job: the global cap is reached
    with pytest.raises(QueueFull) as checked:
        gated.queue.check("C")
    with pytest.raises(QueueFull) as submitted:
        gated.submit("C1", "C")
    assert str(checked.value) == str(submitted.value) and checked.value.limit == "global"
    assert len(gated.queue) == 4 and [j.job_id for j in gated.queue.running()] == ["A1"]  # checking queued nothing
    await gated.queue.close()
    with pytest.raises(QueueClosed):
        gated.queue.check("A")


async def test_check_counts_several_jobs_and_those_that_start_at_once():
    gated = Gated(slots=2, per_user_running=2, per_user_waiting=1, max_waiting=10)
    gated.queue.check("A", 3)  # two start at once, one waits
    with pytest.raises(QueueFull) as refused:
        gated.queue.check("A", 4)
    assert str(refused.value).startswith("You already have 0 jobs waiting and this would add 4 (the limit is 1).")
    for job in ("A1", "A2", "A3"):  # what check allowed, submit takes
        gated.submit(job, "A")
    assert [j.job_id for j in gated.queue.running()] == ["A1", "A2"] and gated.queue.position("A3") == 1
    with pytest.raises(QueueFull):
        gated.queue.check("A")

    small = Gated(max_waiting=2)
    small.submit("X1", "X")  # runs
    small.queue.check("B", 2)  # the queue is free of waiting jobs: both may wait
    with pytest.raises(QueueFull) as full:
        small.queue.check("B", 3)
    assert refused.value.limit == "user" and full.value.limit == "global"
    assert "0 jobs are waiting and this would add 3 (the limit is 2)" in str(full.value)
    await gated.queue.close()
    await small.queue.close()


async def test_a_job_that_can_start_now_is_never_refused():
    gated = Gated(per_user_waiting=0, max_waiting=0)
    assert gated.submit("A1", "A") == 0
    with pytest.raises(QueueFull):
        gated.submit("A2", "A")
    await gated.finish("A1")
    await gated.queue.join()


async def test_bad_limits_and_duplicate_ids_are_refused():
    with pytest.raises(ValueError):
        JobQueue(Gated().run, slots=0)
    with pytest.raises(ValueError):
        JobQueue(Gated().run, per_user_waiting=-1)
    gated = Gated()
    gated.submit(1, "A")
    gated.submit(2, "A")
    with pytest.raises(ValueError, match="already queued"):
        gated.submit(1, "B")
    with pytest.raises(ValueError, match="already queued"):
        gated.submit(2, "B")
    await gated.queue.close()


# -- cancelling ----------------------------------------------------------------------------------


async def test_cancel_a_waiting_job():
    gated = Gated()
    for job in ("A1", "A2", "A3"):
        gated.submit(job, "A")
    await settle()
    assert gated.queue.cancel("A2") is True
    assert gated.queue.cancel("A2") is False
    assert gated.queue.cancel("unknown") is False
    assert gated.queue.position("A3") == 1
    await gated.finish("A1")
    await gated.finish("A3")
    await gated.queue.join()
    assert gated.started == ["A1", "A3"]
    assert gated.cancelled == []


async def test_cancel_a_running_job_and_go_on_with_the_next():
    gated = Gated()
    gated.submit("A1", "A")
    gated.submit("B1", "B")
    await settle()
    assert gated.queue.cancel("A1") is True
    assert gated.queue.cancel("A1") is True  # still stopping; asking twice is harmless
    await settle()
    assert gated.cancelled == ["A1"]
    assert not gated.queue.closed
    assert gated.started == ["A1", "B1"]  # the worker survived and took the next job
    assert gated.queue.position("A1") is None
    assert gated.queue.cancel("A1") is False
    await gated.finish("B1")
    await gated.queue.join()
    assert gated.finished == ["B1"]
    assert other_tasks() == set()


async def test_a_run_that_swallows_its_cancellation_does_not_doom_the_next_job():
    done: list[str] = []

    async def stubborn(job: QueuedJob) -> None:
        try:
            await asyncio.sleep(10 if job.job_id == 1 else 0.01)
        except asyncio.CancelledError:
            done.append("swallowed")
            return
        done.append(f"finished {job.job_id}")

    queue = JobQueue(stubborn)
    queue.submit(QueuedJob(1, "A"))
    queue.submit(QueuedJob(2, "A"))
    await settle()
    queue.cancel(1)
    await asyncio.wait_for(queue.join(), 2)
    assert done == ["swallowed", "finished 2"]


# -- robustness ----------------------------------------------------------------------------------


async def test_a_failing_job_is_logged_and_the_queue_goes_on(caplog):
    ran: list[int] = []

    async def flaky(job: QueuedJob) -> None:
        ran.append(job.job_id)
        await asyncio.sleep(0)
        if job.job_id == 1:
            raise RuntimeError("engine exploded")

    queue = JobQueue(flaky)
    with caplog.at_level(logging.ERROR, logger="engine.queue"):
        for job_id in (1, 2, 3):
            queue.submit(QueuedJob(job_id, "A"))
        await queue.join()
    assert ran == [1, 2, 3]
    (record,) = caplog.records
    assert "job 1 failed" in record.getMessage() and record.exc_info[0] is RuntimeError


async def test_slots_run_in_parallel_up_to_their_number():
    gated = Gated(slots=3, per_user_running=1)
    for n in range(3):
        for owner in "ABCD":
            gated.submit(f"{owner}{n}", owner)
    await settle()
    assert len(gated.queue.running()) == 3
    assert gated.started == ["A0", "B0", "C0"]
    gated.auto = True
    for job in list(gated.started):
        gated.gates[job].set()
    await gated.queue.join()
    assert sorted(gated.finished) == sorted(f"{o}{n}" for o in "ABCD" for n in range(3))
    assert gated.most_at_once == 3


async def test_jobs_may_submit_jobs():
    ran: list[int] = []
    queue: JobQueue

    async def chain(job: QueuedJob) -> None:
        ran.append(job.job_id)
        await asyncio.sleep(0)
        if job.job_id < 3:
            queue.submit(QueuedJob(job.job_id + 1, job.owner))

    queue = JobQueue(chain)
    queue.submit(QueuedJob(0, "A"))
    await queue.join()
    assert ran == [0, 1, 2, 3]


async def test_no_task_is_left_once_the_queue_drains():
    gated = Gated(auto=True, slots=2)
    assert other_tasks() == set()
    for n in range(6):
        gated.submit(n, n % 3)
    assert len(other_tasks()) == 2  # one worker per busy slot, started on demand
    await gated.queue.join()
    await settle()
    assert other_tasks() == set()
    await gated.queue.join()  # idle: returns at once
    gated.submit("later", 9)  # and work after idling starts a worker again
    await gated.queue.join()
    assert gated.started[-1] == "later"
    assert other_tasks() == set()


async def test_close_cancels_running_drops_waiting_and_refuses_more():
    gated = Gated()
    seen_closed: list[bool] = []

    async def run(job: QueuedJob) -> None:
        try:
            await gated.run(job)
        except asyncio.CancelledError:
            seen_closed.append(gated.queue.closed)  # a shutdown, not a user's cancel
            raise

    gated.queue = JobQueue(run)
    for n in range(3):
        gated.submit(n, "A")
    await settle()
    assert not gated.queue.closed
    await gated.queue.close()
    assert seen_closed == [True]
    assert gated.cancelled == [0]
    assert gated.started == [0]
    assert len(gated.queue) == 0
    assert other_tasks() == set()
    with pytest.raises(QueueClosed, match="shutting down"):
        gated.submit(9, "B")


# -- properties ----------------------------------------------------------------------------------


@dataclass
class Pick:
    owner: int
    eligible: frozenset[int]  # owners that could have been picked


@dataclass
class Model:
    picks: list[Pick] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)


operations = st.lists(st.one_of(st.integers(0, 3), st.just("finish")), max_size=40)


@settings(max_examples=150, deadline=None)
@given(
    ops=operations,
    slots=st.integers(1, 3),
    per_user_running=st.integers(1, 2),
    per_user_waiting=st.integers(0, 4),
    max_waiting=st.integers(0, 8),
    which=st.randoms(use_true_random=False),
)
def test_fairness_and_exactly_once_for_any_submissions(
    ops, slots, per_user_running, per_user_waiting, max_waiting, which
):
    """For any interleaving of submissions (owner 0-3) and finishes:

    - every accepted job runs exactly once, refused ones never, and a refusal happens only when a
      limit is really reached;
    - never more than `slots` jobs, nor more than `per_user_running` of one owner, run at once, and
      a slot is never left idle while a job could use it;
    - fairness: between two starts of the same owner X, every owner that could have started at
      both moments started in between. So a waiting owner is passed by each other owner at most
      once, however many jobs those owners queue;
    - with one slot, `waiting()` predicts the exact order in which the waiting jobs start.
    """
    asyncio.run(_fairness_scenario(ops, slots, per_user_running, per_user_waiting, max_waiting, which))


async def _fairness_scenario(ops, slots, per_user_running, per_user_waiting, max_waiting, which):
    model = Model()
    gates: dict[int, asyncio.Event] = {}
    started: list[int] = []
    owner_of: dict[int, int] = {}
    draining = False
    queue: JobQueue

    async def run(job: QueuedJob) -> None:
        running = queue.running()
        assert len(running) <= slots
        per_owner = Counter(j.owner for j in running)
        assert max(per_owner.values()) <= per_user_running
        # The state just before this pick: the picked job was still waiting.
        before = per_owner.copy()
        before[job.owner] -= 1
        waiting_owners = {j.owner for j in queue.waiting()} | {job.owner}
        eligible = frozenset(o for o in waiting_owners if before[o] < per_user_running)
        model.picks.append(Pick(job.owner, eligible))
        started.append(job.job_id)
        if not draining:
            await gates[job.job_id].wait()
        await asyncio.sleep(0)

    queue = JobQueue(
        run,
        slots=slots,
        per_user_running=per_user_running,
        per_user_waiting=per_user_waiting,
        max_waiting=max_waiting,
    )

    def check_work_conserving() -> None:
        running = Counter(j.owner for j in queue.running())
        if len(queue.running()) < slots:
            assert all(running[j.owner] >= per_user_running for j in queue.waiting())

    for job_id, op in enumerate(ops):
        if op == "finish":
            running = queue.running()
            if running:
                gates[which.choice(running).job_id].set()
        else:
            owner = op
            running = Counter(j.owner for j in queue.running())
            mine = len(queue.waiting(owner))
            could_start = len(queue.running()) < slots and running[owner] < per_user_running and mine == 0
            expect_refusal = not could_start and (
                mine >= per_user_waiting or len(queue.waiting()) >= max_waiting
            )
            gates[job_id] = asyncio.Event()
            try:
                queue.submit(QueuedJob(job_id, owner))
            except QueueFull:
                assert expect_refusal
                model.refused.append(job_id)
            else:
                assert not expect_refusal
                owner_of[job_id] = owner
        await settle(10)
        check_work_conserving()

    predicted = [j.job_id for j in queue.waiting()]
    already = len(started)
    draining = True
    for gate in gates.values():
        gate.set()
    await asyncio.wait_for(queue.join(), 5)
    await settle(5)

    assert sorted(started) == sorted(owner_of)  # accepted jobs ran exactly once
    assert not set(started) & set(model.refused)
    assert asyncio.all_tasks() == {asyncio.current_task()}
    if slots == 1:
        assert started[already:] == predicted

    for i, first in enumerate(model.picks):
        for j in range(i + 1, len(model.picks)):
            second = model.picks[j]
            if second.owner != first.owner:
                continue
            between = {p.owner for p in model.picks[i + 1 : j]}
            for other in (first.eligible & second.eligible) - {first.owner}:
                assert other in between, (first, second, model.picks)
            break  # consecutive starts of this owner only


async def test_turn_records_of_departed_owners_are_forgotten():
    """The HTTP API's owners are client addresses: the queue must not remember every one of them."""
    queue = JobQueue(lambda job: asyncio.sleep(0))
    for n in range(500):
        queue.submit(QueuedJob(n, f"10.0.{n // 250}.{n % 250}"))
        if n % 7 == 0:
            await queue.join()
    await queue.join()
    assert len(queue._last_served) <= 1
