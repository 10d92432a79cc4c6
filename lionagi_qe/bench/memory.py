"""The memory operations (SPEC §3) on any backend, interleaved with a raw twin.

One :class:`MemoryBench` runs every memory section on one backend: ``store``, ``retrieve``
(on the cached backend: a cache hit), ``retrieve`` of a missing key, ``increment``,
``store_many`` of fresh entries, ``retrieve_many``, ``search`` and ``list_keys`` of 50 keys in a
seeded store, and ``store``/``retrieve`` from 50 concurrent tasks. Every key is under
``aqe/bench/``; each side writes keys of its own, and reads keys both sides wrote.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from lionagi_qe.backends.protocol import MemoryBackend
from lionagi_qe.bench.harness import Harness, Section, Side, payload
from lionagi_qe.bench.raw import RawCached, RawMemory

__all__ = ["PER_PREFIX", "MemoryBench", "Sizes", "size_label"]

PREFIX = "aqe/bench/"
#: Keys under each agent prefix of the seeded store (what search/list_keys return).
PER_PREFIX = 50
#: Keys per ``retrieve_many`` call.
MANY_KEYS = 50
#: Distinct ``retrieve_many`` groups (warmed first, so the cached backend serves hits).
MANY_GROUPS = 20
COUNTERS = 100


def size_label(n: int) -> str:
    """``100000`` -> ``"100k"``, ``1000000`` -> ``"1M"``; other sizes stay as they are."""
    if n and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    return f"{n // 1000}k" if n and n % 1000 == 0 else str(n)


@dataclass(frozen=True)
class Sizes:
    """How much work each section does."""

    ops: int  # sequential calls per repetition
    repeats: int
    store_size: int  # keys in the store search/list_keys run in
    batch: int  # entries per store_many call
    tasks: int  # concurrent tasks

    @property
    def per_task(self) -> int:
        """Calls each concurrent task makes per repetition."""
        return max(1, self.ops // self.tasks)

    @property
    def range_calls(self) -> int:
        """search / list_keys / retrieve_many calls per repetition."""
        return max(1, self.ops // 4)


class MemoryBench:
    """Both sides' handles for one backend, and its sections."""

    def __init__(
        self,
        h: Harness,
        backend: str,
        ours: MemoryBackend,
        raw: RawMemory,
        raw_concurrent: RawMemory,
        sizes: Sizes,
        *,
        cached: bool = False,
    ) -> None:
        self.h = h
        self.backend = backend
        self.ours = ours
        self.raw = raw
        self.raw_concurrent = raw_concurrent
        self.sizes = sizes
        self.cached = cached
        self.agents = max(1, sizes.store_size // PER_PREFIX)

    def open(self, operation: str, name: str, unit: str = "ops", **kw: Any) -> Section:
        """Start a section of this backend, its twin named after the raw side."""
        return self.h.open(self.backend, operation, name, self.raw.twin, unit, **kw)

    async def warm_up(self) -> None:
        """Fill pools and statement caches; write (and, cached, cache) the keys read later."""
        self.h.log(f"{self.backend}: warm-up")
        ours, raw = self.ours, self.raw
        for i in range(self.sizes.ops):
            self.h.check()
            await ours.store(f"{PREFIX}store/ours/{i}", payload(i))
            await raw.store(f"{PREFIX}store/raw/{i}", payload(i))
            await ours.store(f"{PREFIX}read/{i}", payload(i))
            await raw.store(f"{PREFIX}read/{i}", payload(i))
        for i in range(self.sizes.ops):
            await ours.retrieve(f"{PREFIX}read/{i}")
            await raw.retrieve(f"{PREFIX}read/{i}")
        n = self.sizes.tasks
        await asyncio.gather(*(ours.retrieve(f"{PREFIX}read/{i}") for i in range(n)))
        await asyncio.gather(*(self.raw_concurrent.retrieve(f"{PREFIX}read/{i}") for i in range(n)))

    async def sequential(self) -> None:
        """store, retrieve (hit), retrieve of a missing key, increment: one call at a time."""
        h, ours, raw, ops = self.h, self.ours, self.raw, self.sizes.ops
        values = [payload(i) for i in range(ops)]
        await h.interleave(
            self.open("store", "store"),
            ops,
            lambda i: ours.store(f"{PREFIX}store/ours/{i}", values[i]),
            lambda i: raw.store(f"{PREFIX}store/raw/{i}", values[i]),
        )
        hit = ("cache_hit", "retrieve (cache hit)") if self.cached else ("retrieve", "retrieve")
        await h.interleave(
            self.open(*hit),
            ops,
            lambda i: ours.retrieve(f"{PREFIX}read/{i}"),
            lambda i: raw.retrieve(f"{PREFIX}read/{i}"),
        )
        await h.interleave(
            self.open("retrieve_miss", "retrieve (missing key)"),
            ops,
            lambda i: ours.retrieve(f"{PREFIX}missing/{i}"),
            lambda i: raw.retrieve(f"{PREFIX}missing/{i}"),
        )
        await h.interleave(
            self.open("increment", "increment"),
            ops,
            lambda i: ours.increment(f"{PREFIX}counter/ours/{i % COUNTERS}"),
            lambda i: raw.increment(f"{PREFIX}counter/raw/{i % COUNTERS}", 1),
        )

    async def miss_and_fill(self) -> None:
        """Cached only: the first read of a key the database has and the cache has never seen."""
        if not isinstance(self.raw, RawCached):
            return
        total = self.sizes.ops * self.sizes.repeats
        database = self.raw.database  # writes the table only: neither side's cache knows these
        for side in ("ours", "raw"):
            for start in range(0, total, 10_000):
                batch = range(start, min(total, start + 10_000))
                await database.store_many({f"{PREFIX}cold/{side}/{i}": payload(i) for i in batch})
        await self.h.interleave(
            self.open("cache_miss_fill", "retrieve (cache miss + fill)"),
            self.sizes.ops,
            lambda i: self.ours.retrieve(f"{PREFIX}cold/ours/{i}"),
            lambda i: self.raw.retrieve(f"{PREFIX}cold/raw/{i}"),
            running_index=True,
        )

    async def store_many(self) -> None:
        """``batch`` fresh entries per call, two calls per side per repetition."""
        batch = self.sizes.batch

        def items(side: Side, n: int) -> dict[str, Any]:
            base = f"{PREFIX}many/{side}/{n}/"
            return {f"{base}{i}": payload(i) for i in range(batch)}

        section = self.open(
            "store_many", f"store_many ({size_label(batch)})", "entries", items_per_call=batch
        )
        await self.h.interleave(
            section,
            2,
            lambda n: self.ours.store_many(items("ours", n)),
            lambda n: self.raw.store_many(items("raw", n)),
            items=batch,
            running_index=True,
        )

    def _agent_key(self, agent: int, j: int) -> str:
        return f"{PREFIX}agent-{agent}/item-{agent + j * self.agents}"

    async def seed_store(self) -> None:
        """``store_size`` keys ``aqe/bench/agent-{i % agents}/item-{i}``: 50 per agent prefix."""
        size, step = self.sizes.store_size, max(self.sizes.batch, 1000)
        self.h.log(f"{self.backend}: seeding {size:,} keys for search")
        for start in range(0, size, step):
            self.h.check()
            batch = {
                f"{PREFIX}agent-{i % self.agents}/item-{i}": payload(i)
                for i in range(start, min(start + step, size))
            }
            await self.ours.store_many(batch)
            await self.raw.seed(batch)
        probe = f"{PREFIX}agent-{7 % self.agents}/"
        found = await self.ours.search(probe + "*")
        if len(found) != PER_PREFIX or found != await self.raw.search(probe):
            raise AssertionError(f"seeded store: {len(found)} keys under {probe}, not 50")

    async def ranges(self) -> None:
        """retrieve_many of 50 keys, search (glob of 50 in the store), list_keys of a prefix."""
        h, ours, raw = self.h, self.ours, self.raw
        calls = self.sizes.range_calls
        label = size_label(self.sizes.store_size)
        groups = min(MANY_GROUPS, self.agents)

        def keys(i: int) -> list[str]:
            return [self._agent_key(i % groups, j) for j in range(MANY_KEYS)]

        for g in range(groups):
            await ours.retrieve_many(keys(g))
            await raw.retrieve_many(keys(g))
        await h.interleave(
            self.open(
                "retrieve_many", f"retrieve_many ({MANY_KEYS})", "entries", items_per_call=50
            ),
            calls,
            lambda i: ours.retrieve_many(keys(i)),
            lambda i: raw.retrieve_many(keys(i)),
            items=MANY_KEYS,
        )

        def prefix(i: int) -> str:
            return f"{PREFIX}agent-{(i * 7) % self.agents}/"

        await h.interleave(
            self.open("search", f"search ({PER_PREFIX} of {label})"),
            calls,
            lambda i: ours.search(prefix(i) + "*"),
            lambda i: raw.search(prefix(i)),
        )
        await h.interleave(
            self.open("list_keys", f"list_keys ({PER_PREFIX} of {label})"),
            calls,
            lambda i: ours.list_keys(prefix(i)),
            lambda i: raw.list_keys(prefix(i)),
        )

    async def concurrent(self) -> None:
        """``tasks`` tasks x ops/tasks calls: one backend (pool 10) vs the raw pool."""
        tasks, per_task = self.sizes.tasks, self.sizes.per_task
        ours, raw = self.ours, self.raw_concurrent

        def op(write: bool) -> Any:
            def call(side: Side, rep: int, task: int, j: int) -> Awaitable[object]:
                if write:
                    key = f"{PREFIX}conc/{side}/{task}/{j}"
                    if side == "ours":
                        return ours.store(key, payload(j))
                    return raw.store(key, payload(j))
                key = f"{PREFIX}read/{(task * per_task + j) % self.sizes.ops}"
                return ours.retrieve(key) if side == "ours" else raw.retrieve(key)

            return call

        read = "cache_hit" if self.cached else "retrieve"
        read_name = "retrieve (cache hit)" if self.cached else "retrieve"
        for operation, name, write in (
            ("store", "store", True),
            (read, read_name, False),
        ):
            section = self.open(
                f"{operation}_concurrent", f"{name} x{tasks} tasks", concurrent=True
            )
            await self.h.blocks(section, per_task, op(write), tasks=tasks)

    async def run(self) -> None:
        """Every section, in order."""
        await self.warm_up()
        await self.sequential()
        await self.miss_and_fill()
        await self.store_many()
        await self.seed_store()
        await self.ranges()
        await self.concurrent()
