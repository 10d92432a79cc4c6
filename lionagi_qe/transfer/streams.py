"""Plumbing shared by export, import, migrate and verify: progress, scans, the chunk writer.

The writer's rules (batching, ordering, TTL countdown) are described in
:mod:`lionagi_qe.transfer.move`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from lionagi_qe.backends.protocol import MemoryBackend, ScannedEntry
from lionagi_qe.transfer.jsonl import Record

__all__ = ["Pending", "Progress", "Writer", "closing", "no_progress", "remaining"]

#: ``progress(phase, done, total)``: phase is ``"export"``, ``"validate"``, ``"import"``,
#: ``"copy"`` or ``"verify"``; ``total`` is None when it is not known in advance.
Progress = Callable[[str, int, int | None], None]


def no_progress(phase: str, done: int, total: int | None) -> None:
    """The default progress callback: report nothing."""


def remaining(entry: ScannedEntry, now: float) -> float | None:
    """The entry's remaining seconds at monotonic ``now`` (its TTL counts down since read)."""
    if entry.ttl is None or not entry.read_at:
        return entry.ttl
    return entry.ttl - max(now - entry.read_at, 0.0)


class closing:
    """``async with`` that closes an async generator (a scan left early releases its page)."""

    def __init__(self, scan: AsyncIterator[ScannedEntry]) -> None:
        self._scan = scan

    async def __aenter__(self) -> AsyncIterator[ScannedEntry]:
        return self._scan

    async def __aexit__(self, *exc_info: object) -> None:
        close = getattr(self._scan, "aclose", None)
        if close is not None:
            await close()


@dataclass(frozen=True, slots=True)
class Pending:
    record: Record
    #: Monotonic time the entry was read from a live source (its TTL counts down since), or
    #: None for a TTL that starts when written (import).
    read_at: float | None = None


class Writer:
    """Buffers entries, writes them a chunk at a time (rules: :mod:`lionagi_qe.transfer.move`)."""

    def __init__(
        self, memory: MemoryBackend, *, batch_size: int, concurrency: int, progress: Progress
    ):
        self._memory = memory
        self._batch_size = batch_size
        self._slots = asyncio.Semaphore(concurrency)
        self._progress = progress
        self._phase = "import"
        self._total: int | None = None
        self._buffer: dict[str, Pending] = {}
        self._inflight: asyncio.Task[None] | None = None
        self._seen = 0
        self.written = 0
        self.expired = 0

    def start(self, phase: str, total: int | None) -> None:
        self._phase, self._total = phase, total
        self._progress(phase, 0, total)

    async def add(self, pending: Pending) -> None:
        # A repeated key keeps its last line (dict order is the first occurrence's: harmless).
        self._buffer[pending.record.key] = pending
        self._seen += 1
        if len(self._buffer) >= self._batch_size:
            await self.flush()

    async def flush(self) -> None:
        """Start writing the buffered chunk once the previous one is written.

        One chunk is written while the next is read (the source's round trips overlap the
        target's), never two: chunks land in order, so a repeated key's last line wins.
        """
        chunk, self._buffer = list(self._buffer.values()), {}
        await self._wait()
        if chunk:
            self._inflight = asyncio.create_task(self._write(chunk, self._seen))

    async def finish(self) -> None:
        """Write what is buffered and wait until every chunk is written."""
        await self.flush()
        await self._wait()

    async def abort(self) -> None:
        """Stop a chunk being written (after a failure elsewhere)."""
        task, self._inflight = self._inflight, None
        if task is not None and not task.done():
            task.cancel()
        if task is not None:
            with suppress(asyncio.CancelledError, Exception):
                await task

    async def _wait(self) -> None:
        task, self._inflight = self._inflight, None
        if task is not None:
            await task

    async def _write(self, chunk: list[Pending], seen: int) -> None:
        groups: dict[tuple[str, float | None], dict[str, Any]] = {}
        singles: list[Pending] = []
        for pending in chunk:
            record = pending.record
            if not record.metadata and (record.ttl is None or pending.read_at is None):
                groups.setdefault((record.partition, record.ttl), {})[record.key] = record.value
            else:
                singles.append(pending)
        tasks = [
            self._store_many(items, ttl, partition) for (partition, ttl), items in groups.items()
        ]
        tasks.extend(self._store(pending) for pending in singles)
        await _gather(tasks)
        self._progress(self._phase, seen, self._total)

    async def _store_many(self, items: dict[str, Any], ttl: float | None, partition: str) -> None:
        async with self._slots:
            if len(items) == 1:
                ((key, value),) = items.items()
                await self._memory.store(key, value, ttl, partition)
            else:
                await self._memory.store_many(items, ttl, partition)
        self.written += len(items)

    async def _store(self, pending: Pending) -> None:
        record = pending.record
        async with self._slots:
            ttl = record.ttl
            if ttl is not None and pending.read_at is not None:
                ttl -= time.monotonic() - pending.read_at
                if ttl <= 0:
                    self.expired += 1
                    return
            await self._memory.store(
                record.key, record.value, ttl, record.partition, metadata=record.metadata
            )
        self.written += 1


async def _gather(tasks: list[Any]) -> None:
    """Await every coroutine; on the first failure cancel the rest and raise it."""
    if not tasks:
        return
    try:
        async with asyncio.TaskGroup() as group:
            for task in tasks:
                group.create_task(task)
    except BaseExceptionGroup as failures:
        # Callers expect the store's own typed error, not a group of them.
        raise failures.exceptions[0] from None
