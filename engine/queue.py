"""A fair job queue: round robin between owners, per-owner limits, one worker task per engine slot.

One FIFO lets a user who queues twenty jobs make everyone else wait for all twenty; here the
next job always goes to the owner who was served least recently, so a newcomer's first job runs
as soon as a slot frees up, and owners with many jobs alternate.

Workers are started on demand and end when nothing is runnable: an idle bot holds no task waiting
on a queue, which simcord (the bot's test harness) cannot tell apart from a hang, and shutdown has
nothing to chase. The queue knows nothing of Discord or storage: an owner is any hashable id (a
Discord user id, or the client address for the HTTP API), and `run` does the work and records
the outcome.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

from engine.types import ImagineError

log = logging.getLogger(__name__)

JobId = Hashable
Owner = Hashable


class QueueFull(ImagineError):
    """A submission was refused because a limit was hit; the message names the limit and the numbers.

    `limit` is "user" (the owner's waiting jobs), "global" (all waiting jobs) or "closed".
    """

    def __init__(self, message: str, limit: str = "", count: int = 0, maximum: int = 0) -> None:
        super().__init__(message)
        self.limit = limit
        self.count = count
        self.maximum = maximum


class QueueClosed(QueueFull):
    """The queue is shutting down and takes no more work."""

    def __init__(self) -> None:
        super().__init__("The bot is shutting down and takes no new jobs; try again in a minute.", "closed")


@dataclass
class QueuedJob:
    job_id: int | str
    owner: int | str
    payload: Any = None
    #: Submission order, set by the queue; breaks ties between owners that were never served.
    seq: int = field(default=-1, init=False, compare=False, repr=False)


class JobQueue:
    def __init__(
        self,
        run: Callable[[QueuedJob], Awaitable[None]],
        *,
        slots: int = 1,
        per_user_running: int = 1,
        per_user_waiting: int = 10,
        max_waiting: int = 100,
    ) -> None:
        if slots < 1 or per_user_running < 1:
            raise ValueError("slots and per_user_running must be at least 1")
        if per_user_waiting < 0 or max_waiting < 0:
            raise ValueError("per_user_waiting and max_waiting must not be negative")
        self._run = run
        self.slots = slots
        self.per_user_running = per_user_running
        self.per_user_waiting = per_user_waiting
        self.max_waiting = max_waiting
        self._waiting: dict[Owner, deque[QueuedJob]] = {}
        self._running: dict[JobId, QueuedJob] = {}
        self._running_tasks: dict[JobId, asyncio.Task[None]] = {}
        self._running_count: dict[Owner, int] = {}
        # When each owner last had a job started (a counter, not a clock); the next job goes to the
        # owner with the smallest value, owners never served first.
        self._last_served: dict[Owner, int] = {}
        self._serial = itertools.count()
        self._submissions = itertools.count()
        self._cancel_requested: set[JobId] = set()
        self._workers: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- submitting and cancelling ---------------------------------------------------------------

    def check(self, owner: Owner, count: int = 1) -> None:
        """Raise QueueFull if `count` more jobs of `owner` would be refused; queue nothing.

        Front-ends call this before they store or show anything, so a refusal leaves no trace.
        The jobs are counted as if submitted one after another now: those that would start at
        once take no waiting place.
        """
        if self._closed:
            raise QueueClosed()
        if count < 1:
            return
        mine = len(self._waiting.get(owner, ()))
        would_wait = mine + max(0, count - self._free_for(owner))
        if would_wait <= mine:
            return
        adding = f" and this would add {count}" if count > 1 else ""
        if would_wait > self.per_user_waiting:
            raise QueueFull(
                f"You already have {mine} job{'s' if mine != 1 else ''} waiting{adding} "
                f"(the limit is {self.per_user_waiting}). Wait for one to finish or cancel one with ❌.",
                "user",
                mine,
                self.per_user_waiting,
            )
        total = self._waiting_count()
        if total + would_wait - mine > self.max_waiting:
            raise QueueFull(
                f"The queue is full: {total} jobs are waiting{adding} (the limit is {self.max_waiting}). "
                "Try again in a few minutes.",
                "global",
                total,
                self.max_waiting,
            )

    def submit(self, job: QueuedJob, *, enforce_limits: bool = True) -> int:
        """Queue `job`; return 0 if it started right away, else its 1-based place in the run order.

        Raises QueueFull as `check` does. `enforce_limits=False` is for jobs resumed after a
        restart, which were accepted once already and must not be dropped now.
        """
        if self._closed:
            raise QueueClosed()
        if job.job_id in self._running or any(j.job_id == job.job_id for j in self._all_waiting()):
            raise ValueError(f"job {job.job_id!r} is already queued")
        if enforce_limits:
            self.check(job.owner)
        job.seq = next(self._submissions)
        self._waiting.setdefault(job.owner, deque()).append(job)
        self._dispatch()
        position = self.position(job.job_id)
        assert position is not None
        return position

    def cancel(self, job_id: JobId) -> bool:
        """Remove a waiting job, or cancel the task running it (its `run` sees CancelledError)."""
        for owner, jobs in self._waiting.items():
            for job in jobs:
                if job.job_id == job_id:
                    jobs.remove(job)
                    if not jobs:
                        del self._waiting[owner]
                    return True
        task = self._running_tasks.get(job_id)
        if task is None:
            return False
        if job_id not in self._cancel_requested:
            self._cancel_requested.add(job_id)
            task.cancel()
        return True

    # -- what is where ---------------------------------------------------------------------------

    def position(self, job_id: JobId) -> int | None:
        """0 while running, n when it is the n-th waiting job to start, None when unknown."""
        if job_id in self._running:
            return 0
        for place, job in enumerate(self._run_order(), start=1):
            if job.job_id == job_id:
                return place
        return None

    def waiting(self, owner: Owner | None = None) -> list[QueuedJob]:
        """Waiting jobs in the order they are expected to start."""
        return [job for job in self._run_order() if owner is None or job.owner == owner]

    def running(self, owner: Owner | None = None) -> list[QueuedJob]:
        return [job for job in self._running.values() if owner is None or job.owner == owner]

    def __len__(self) -> int:
        return self._waiting_count() + len(self._running)

    # -- lifecycle -------------------------------------------------------------------------------

    async def join(self) -> None:
        """Return once nothing is waiting or running.

        Waits on the worker tasks themselves rather than on an event, so that a harness watching
        the bot's tasks sees a wait on work in progress. No workers means idle: a job only waits
        while its owner is at the running limit, and then that owner's job holds a worker.
        """
        while self._workers:
            await asyncio.wait(set(self._workers))

    @property
    def closed(self) -> bool:
        """True once `close` was called. A `run` that sees CancelledError checks this to tell a
        shutdown (leave the job unfinished, to be resumed after the restart) from a user's cancel."""
        return self._closed

    async def close(self) -> None:
        """Drop waiting jobs, cancel running ones and wait for the workers to end."""
        self._closed = True
        self._waiting.clear()
        workers = set(self._workers)
        for task in workers:
            task.cancel()
        if workers:
            await asyncio.gather(*workers, return_exceptions=True)

    # -- scheduling ------------------------------------------------------------------------------

    def _all_waiting(self) -> Iterator[QueuedJob]:
        for jobs in self._waiting.values():
            yield from jobs

    def _waiting_count(self) -> int:
        return sum(len(jobs) for jobs in self._waiting.values())

    def _free_for(self, owner: Owner) -> int:
        """How many of the owner's jobs would start at once if submitted now.

        None start while the owner has jobs waiting: new ones queue behind those.
        """
        if self._waiting.get(owner):
            return 0
        return max(0, min(self.slots - len(self._running), self.per_user_running - self._running_count.get(owner, 0)))

    @staticmethod
    def _pick_owner(eligible: list[Owner], last_served: dict[Owner, int], heads: dict[Owner, int]) -> Owner:
        """The fair rule: the owner served least recently; among owners never served, the earliest."""
        return min(eligible, key=lambda owner: (last_served.get(owner, -1), heads[owner]))

    def _take(self) -> QueuedJob | None:
        """Start the next job by the fair rule, or return None if no slot or no runnable job."""
        if len(self._running) >= self.slots:
            return None
        eligible = [
            owner for owner in self._waiting if self._running_count.get(owner, 0) < self.per_user_running
        ]
        if not eligible:
            return None
        heads = {owner: self._waiting[owner][0].seq for owner in eligible}
        owner = self._pick_owner(eligible, self._last_served, heads)
        jobs = self._waiting[owner]
        job = jobs.popleft()
        if not jobs:
            del self._waiting[owner]
        self._running[job.job_id] = job
        self._running_count[owner] = self._running_count.get(owner, 0) + 1
        self._last_served[owner] = next(self._serial)
        self._forget_idle_owners()
        return job

    def _forget_idle_owners(self) -> None:
        """Drop turn records that can no longer change anyone's turn, so the table stays small.

        An owner with no jobs whose last turn is older than every active owner's sorts before
        all of them whether it is remembered or not.
        """
        active = set(self._waiting) | {owner for owner, n in self._running_count.items() if n}
        oldest_active = min((self._last_served.get(owner, -1) for owner in active), default=None)
        for owner in [o for o in self._last_served if o not in active]:
            if oldest_active is None or self._last_served[owner] < oldest_active:
                del self._last_served[owner]

    def _run_order(self) -> list[QueuedJob]:
        """The waiting jobs in the order the fair rule will start them.

        Replays the rule on copies of the state, as if each running job finished before the
        next start. With one slot that is exactly what happens; with more it is the best guess,
        since which running job ends first is not known.
        """
        queues = {owner: deque(jobs) for owner, jobs in self._waiting.items()}
        last_served = dict(self._last_served)
        serial = 0 if not last_served else max(last_served.values()) + 1
        order: list[QueuedJob] = []
        while queues:
            heads = {owner: jobs[0].seq for owner, jobs in queues.items()}
            owner = self._pick_owner(list(queues), last_served, heads)
            jobs = queues[owner]
            order.append(jobs.popleft())
            if not jobs:
                del queues[owner]
            last_served[owner] = serial
            serial += 1
        return order

    def _dispatch(self) -> None:
        """Start a worker for every free slot that has a runnable job."""
        while len(self._workers) < self.slots:
            job = self._take()
            if job is None:
                return
            task = asyncio.get_running_loop().create_task(self._work(job), name="job-queue-worker")
            self._workers.add(task)

    async def _work(self, job: QueuedJob | None) -> None:
        """Run jobs until nothing is runnable, then end; one of these exists per busy slot."""
        try:
            while job is not None:
                await self._run_one(job)
                job = self._take()
                # Finishing may have made a job of another owner runnable for a slot with no worker.
                self._dispatch()
        finally:
            # Leave the worker set now, not in a done callback: a submit in between would see a
            # worker that will never take its job.
            self._workers.discard(asyncio.current_task())  # type: ignore[arg-type]

    async def _run_one(self, job: QueuedJob) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._running_tasks[job.job_id] = task
        try:
            await self._run(job)
        except asyncio.CancelledError:
            if self._closed or job.job_id not in self._cancel_requested:
                raise
            log.info("job %s was cancelled while running", job.job_id)
        except Exception:
            if job.job_id not in self._cancel_requested:
                log.exception("job %s failed", job.job_id)
        finally:
            self._release(job)
            if job.job_id in self._cancel_requested:
                self._cancel_requested.discard(job.job_id)
                # The cancel was for this job only: keep the worker alive for the next one. If
                # `run` swallowed the CancelledError the request is still pending on the task.
                task.uncancel()

    def _release(self, job: QueuedJob) -> None:
        del self._running[job.job_id]
        del self._running_tasks[job.job_id]
        left = self._running_count[job.owner] - 1
        if left:
            self._running_count[job.owner] = left
        else:
            del self._running_count[job.owner]
