"""Coalescing of concurrent calls into batches, each call keeping its own result and error.

While few calls are in flight each one runs alone, so a sequential caller pays nothing. When
``max_inflight`` statements are already running, new calls wait and are sent together as one
batch as soon as a statement finishes: under 50 concurrent tasks, a handful of multi-row
statements replace fifty one-row ones, and the per-statement cost (driver, round trip, server
parse/plan) is paid once per batch.

A batch returns one outcome per request, a result or an exception; an exception raised by the
batch as a whole is handed to each of its callers. A caller that is cancelled while waiting is
dropped from its batch if the batch has not started. Once started, the batch runs to completion
for the others, and the cancelled caller's ``CancelledError`` is held back until the batch has
finished: its request may still be applied, and a caller that goes on (a retry, the next call of
a worker loop, an invalidation after a cancelled write) must come after it. Returning at once
let a cancelled store that was still waiting for a pool connection commit *after* the same
caller's next store of that key, so a store returned and a read then saw the older value. The
wait is bounded by the batch itself (pool timeout, statement timeout); a caller cancelled again
meanwhile still waits, then gets one ``CancelledError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from lionagi_qe.backends.settle import outlive

__all__ = ["Coalescer"]

R = TypeVar("R")
T = TypeVar("T")


class Coalescer(Generic[R, T]):
    """Run ``run_one(request)`` alone, or ``run_batch(requests)`` for requests that waited."""

    def __init__(
        self,
        run_one: Callable[[R], Awaitable[T]],
        run_batch: Callable[[Sequence[R]], Awaitable[Sequence[T | BaseException]]],
        *,
        max_inflight: int,
        max_batch: int = 500,
    ) -> None:
        if max_inflight < 1 or max_batch < 1:
            raise ValueError("max_inflight and max_batch must be at least 1")
        self._run_one = run_one
        self._run_batch = run_batch
        self._max_inflight = max_inflight
        self._max_batch = max_batch
        self._inflight = 0
        self._waiting: list[tuple[R, asyncio.Future[T]]] = []
        self._batches: set[asyncio.Task[None]] = set()
        #: Future of a waiting request -> the batch task that took it (until that batch ends).
        self._taken: dict[asyncio.Future[T], asyncio.Task[None]] = {}

    async def submit(self, request: R) -> T:
        """Run ``request`` now if there is room, else in the next batch; return its result."""
        if self._inflight < self._max_inflight and not self._waiting:
            self._inflight += 1
            try:
                return await self._run_one(request)
            finally:
                self._inflight -= 1
                self._start_batches()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        self._start_batches()
        try:
            return await future
        except asyncio.CancelledError:
            batch = self._taken.get(future)
            if batch is not None:
                await outlive(batch)
            raise

    def _start_batches(self) -> None:
        while self._waiting and self._inflight < self._max_inflight:
            taken = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
            batch = [(request, future) for request, future in taken if not future.done()]
            if not batch:
                continue
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)
            for _, future in batch:
                self._taken[future] = task

    async def _run(self, batch: list[tuple[R, asyncio.Future[T]]]) -> None:
        outcomes: Sequence[T | BaseException]
        try:
            if len(batch) == 1:
                outcomes = [await self._run_one(batch[0][0])]
            else:
                outcomes = await self._run_batch([request for request, _ in batch])
        except BaseException as exc:  # handed to every caller of the batch
            outcomes = [exc] * len(batch)
            if not isinstance(exc, Exception):
                self._settle(batch, outcomes)
                raise
        finally:
            self._inflight -= 1
            for _, future in batch:
                self._taken.pop(future, None)
        self._settle(batch, outcomes)
        self._start_batches()

    @staticmethod
    def _settle(
        batch: list[tuple[R, asyncio.Future[T]]], outcomes: Sequence[T | BaseException]
    ) -> None:
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, asyncio.CancelledError):
                future.cancel()
            elif isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    async def drain(self) -> None:
        """Wait for the batches under way (on close)."""
        while self._batches:
            await asyncio.gather(*self._batches, return_exceptions=True)
