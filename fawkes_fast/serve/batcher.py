"""Micro-batching: concurrent requests become one `Cloaker.cloak` call on the warm models.

A batch starts when a worker is free and a request is waiting. It then waits up to
`max_wait_s` for more requests with the same settings (mode, format, quality), up to `max_batch`
photos, and runs them as ONE call in a worker thread, one seed per photo (a photo's pixels depend
only on the photo, its seed and the settings, not on its batch-mates). Requests whose client left,
or whose deadline passed, before their batch started are dropped from it; once a batch runs,
nothing waits on any client, so a vanished client cannot stall it.
"""
from __future__ import annotations

import asyncio
import collections
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np


class QueueFull(Exception):
    """The queue holds `max_queue` requests already."""


@dataclass(eq=False)
class Job:
    rgb: np.ndarray
    key: tuple  # (mode, format, quality): photos of one call share these
    seed: int
    future: asyncio.Future = field(default=None)
    abandoned: bool = False


class MicroBatcher:
    def __init__(self, run_batch, *, max_batch: int, max_wait_s: float, max_queue: int, workers: int,
                 metrics=None):
        """run_batch(key, rgbs, seeds) -> one result per photo; blocking, run in a thread."""
        self._run_batch = run_batch
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.workers, self.metrics = workers, metrics
        self._queue: collections.deque[Job] = collections.deque()
        self._arrived = asyncio.Event()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fawkes-batch")
        self._tasks: list[asyncio.Task] = []
        self.last_batch_s = 1.0  # duration of the latest batch: the basis of Retry-After

    def estimated_wait(self) -> float:
        """Seconds until the queue as it stands has been worked through."""
        batches = -(-len(self._queue) // self.max_batch) / self.workers
        return (batches + 1) * self.last_batch_s

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
        self._gauge()

    # ------------------------------------------------------------------ workers
    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._pool.shutdown(wait=True)

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
        try:
            started = loop.time()
            results = await loop.run_in_executor(self._pool, self._run_batch, jobs[0].key,
                                                 [j.rgb for j in jobs], [j.seed for j in jobs])
            self.last_batch_s = loop.time() - started
            if m is not None:
                m.batch_seconds.observe(self.last_batch_s)
            outcomes = [(r, None) for r in results]
        except Exception as e:  # noqa: BLE001 - every request of the batch hears of it
            outcomes = [(None, e)] * len(jobs)
        finally:
            if m is not None:
                m.in_batch.dec(len(jobs))
        for job, (result, error) in zip(jobs, outcomes):
            job.rgb = None  # the pixels are no longer needed; do not keep them alive
            if job.future.done():
                continue
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result((result, len(jobs)))

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._queue))
