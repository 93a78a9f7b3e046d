"""Micro-batching: concurrent requests become one `Cloaker.cloak` call on the warm models.

A batch starts when a worker is free and a request is waiting. It then waits up to
`max_wait_s` for more requests with the same settings (mode, format, quality, target), up to `max_batch`
photos, and runs them as ONE call in a worker thread, one seed per photo (a photo's pixels depend
only on the photo, its seed and the settings, not on its batch-mates). Requests whose client left,
or whose deadline passed, before their batch started are dropped from it; once a batch runs,
nothing waits on any client, so a vanished client cannot stall it. A running batch has a cancel
flag that its optimiser reads once per step: it is set when every client of the batch has left, and
on shutdown, so no core keeps working on answers nobody will receive.
"""
from __future__ import annotations

import asyncio
import collections
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np


class QueueFull(Exception):
    """The queue holds `max_queue` requests already."""


@dataclass(eq=False)
class Job:
    rgb: np.ndarray
    key: tuple  # (mode, format, quality, target): photos of one call share these
    seed: int
    future: asyncio.Future = field(default=None)
    abandoned: bool = False
    batch: "_Running | None" = None  # set while the job's batch runs
    on_release: object = None  # called once the batch is done with `rgb` (frees its share of the pixel budget)


@dataclass(eq=False)
class _Running:
    jobs: list
    started: float
    cancel: threading.Event = field(default_factory=threading.Event)


#: weight of the latest batch in the running mean of seconds per photo
_EWMA = 0.3


class MicroBatcher:
    def __init__(self, run_batch, *, max_batch: int, max_wait_s: float, max_queue: int, workers: int,
                 metrics=None):
        """run_batch(key, rgbs, seeds, cancel) -> one result per photo; blocking, run in a thread;
        `cancel` is a threading.Event it should check between steps (stop early when set)."""
        self._run_batch = run_batch
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.workers, self.metrics = workers, metrics
        self._queue: collections.deque[Job] = collections.deque()
        self._arrived = asyncio.Event()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fawkes-batch")
        self._tasks: list[asyncio.Task] = []
        self._running: set[_Running] = set()
        self.photo_s: float | None = None  # running mean of a batch's seconds per photo: the basis of Retry-After

    @property
    def queued(self) -> int:
        return len(self._queue)

    def queue_full(self) -> bool:
        return len(self._queue) >= self.max_queue

    def estimated_wait(self) -> float:
        """Seconds until the requests queued now have all started: what is left of the running
        batches (when every worker is busy), then the queue at the measured seconds per photo. Before
        any batch has finished, a running batch's time so far is the only measure, and a lower bound."""
        now = time.monotonic()
        per_photo = max([self.photo_s or 0.0] + [(now - r.started) / len(r.jobs) for r in self._running])
        per_photo = per_photo or 1.0  # nothing measured and nothing running: a guess
        left = 0.0
        if len(self._running) >= self.workers:
            left = min(max(len(r.jobs) * per_photo - (now - r.started), 0.0) for r in self._running)
        return left + len(self._queue) * per_photo / self.workers

    def cancel_running(self) -> None:
        """Shutdown: every running batch stops at its optimiser's next step."""
        for r in self._running:
            r.cancel.set()

    # ------------------------------------------------------------------ requests
    def submit(self, job: Job) -> asyncio.Future:
        if len(self._queue) >= self.max_queue:
            raise QueueFull()
        job.future = asyncio.get_running_loop().create_future()
        self._queue.append(job)
        self._arrived.set()
        self._gauge()
        return job.future

    def abandon(self, job: Job) -> None:
        """The client left or its deadline passed: skip the job if its batch has not started."""
        job.abandoned = True
        if job.future is not None:
            job.future.cancel()  # a result that comes later is dropped, not left unread
        try:
            self._queue.remove(job)
        except ValueError:
            pass  # already taken into a batch
        if job.batch is not None and all(j.abandoned for j in job.batch.jobs):
            job.batch.cancel.set()  # nobody is left to receive this batch's answers
        self._gauge()

    # ------------------------------------------------------------------ workers
    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]

    async def stop(self) -> None:
        self.cancel_running()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._pool.shutdown(wait=True)  # quick: a cancelled batch ends at its next step

    async def _wait_for_arrival(self, timeout: float | None) -> bool:
        try:
            self._arrived.clear()
            await asyncio.wait_for(self._arrived.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def _take(self, key) -> Job | None:
        for job in self._queue:
            if key is None or job.key == key:
                self._queue.remove(job)
                self._gauge()
                return job
        return None

    async def _gather(self) -> list[Job]:
        first = self._take(None)
        while first is None:
            await self._wait_for_arrival(None)
            first = self._take(None)
        batch = [first]
        loop = asyncio.get_running_loop()
        end = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch:
            job = self._take(first.key)
            if job is not None:
                batch.append(job)
                continue
            remaining = end - loop.time()
            if remaining <= 0 or not await self._wait_for_arrival(remaining):
                break
        return batch

    async def _worker(self) -> None:
        while True:
            batch = await self._gather()
            live = [j for j in batch if not j.abandoned]
            if live:
                await self._run(live)

    async def _run(self, jobs: list[Job]) -> None:
        m = self.metrics
        if m is not None:
            m.batch_size.observe(len(jobs))
            m.in_batch.inc(len(jobs))
        loop = asyncio.get_running_loop()
        running = _Running(jobs, time.monotonic())
        self._running.add(running)
        for job in jobs:
            job.batch = running
        try:
            results = await loop.run_in_executor(self._pool, self._run_batch, jobs[0].key,
                                                 [j.rgb for j in jobs], [j.seed for j in jobs], running.cancel)
            seconds = time.monotonic() - running.started
            if not running.cancel.is_set():  # a batch cut short says nothing of the pace
                self._measured(seconds / len(jobs))
            if m is not None:
                m.batch_seconds.observe(seconds)
            outcomes = [(r, None) for r in results]
        except Exception as e:  # noqa: BLE001 - every request of the batch hears of it
            outcomes = [(None, e)] * len(jobs)
        finally:
            self._running.discard(running)
            if m is not None:
                m.in_batch.dec(len(jobs))
        for job, (result, error) in zip(jobs, outcomes):
            job.rgb, job.batch = None, None  # the pixels are no longer needed; do not keep them alive
            if job.on_release is not None:
                job.on_release()
            if job.future.done():
                continue
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result((result, len(jobs)))

    def _measured(self, photo_s: float) -> None:
        self.photo_s = photo_s if self.photo_s is None else (1 - _EWMA) * self.photo_s + _EWMA * photo_s

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._queue))
