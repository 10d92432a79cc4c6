"""Growth: how read, range and claim costs move as PostgreSQL tables grow (10k → 100k → 1M).

At each size the store holds that many entries (and the work queue that many queued jobs), loaded
with ``COPY`` (asyncpg's ``copy_records_to_table``, the fastest client path), then ``retrieve``,
``search`` and ``list_keys`` of 50 keys and ``claim`` run interleaved with their raw twins as in
the main benchmark. The probe keys (20 prefixes of 50) are loaded first and stay the same at
every size, so only the table around them grows.

Then ``cleanup_expired`` removes 100,000 expired entries (in the memory's bounded batches) while
a writer task keeps storing: the report gives the cleanup's time and the writer's latencies and
the worst event-loop stall during the cleanup, beside the writer alone.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from lionagi_qe.backends.sql import PostgresMemory
from lionagi_qe.bench.harness import Harness, dumps, payload, summarize
from lionagi_qe.bench.memory import MANY_GROUPS, PER_PREFIX, PREFIX, Sizes, size_label
from lionagi_qe.bench.queue import LEASE, QueueBench
from lionagi_qe.bench.queue import TWIN as QUEUE_TWIN
from lionagi_qe.bench.raw import RawPostgres, entry_size
from lionagi_qe.bench.servers import asyncpg_kwargs, postgres_database, run_id
from lionagi_qe.coordination import WorkQueue
from lionagi_qe.db import migrate

__all__ = ["GrowthOptions", "run_growth"]

COPY_BATCH = 50_000
QUEUE = "growth"


@dataclass(frozen=True)
class GrowthOptions:
    """Sizes to grow through and how much to measure at each."""

    database_url: str
    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    ops: int = 500
    repeats: int = 3
    expired: int = 100_000
    cleanup_batch: int = 1000
    smoke: bool = False

    @classmethod
    def smoke_run(cls, database_url: str) -> GrowthOptions:
        """Tiny sizes: checks the machinery in seconds."""
        return cls(database_url, sizes=(1_000, 2_000), ops=20, repeats=1, expired=1_000, smoke=True)

    def check(self) -> None:
        """Raise ValueError on options that cannot run."""
        if not self.sizes or list(self.sizes) != sorted(set(self.sizes)):
            raise ValueError("growth sizes must be increasing")
        if self.sizes[0] < MANY_GROUPS * PER_PREFIX:
            raise ValueError(
                f"the smallest growth size must be at least {MANY_GROUPS * PER_PREFIX}"
            )
        if self.ops < 1 or self.repeats < 1 or self.expired < 1 or self.cleanup_batch < 1:
            raise ValueError("--ops, --repeat, expired and cleanup batch must be at least 1")


def _entry_records(keys: Sequence[str], expires_at: datetime | None) -> list[tuple[Any, ...]]:
    now = datetime.now(UTC)
    records = []
    for i, key in enumerate(keys):
        value_json = dumps(payload(i))
        size = entry_size(key, value_json)
        records.append((key, value_json, "default", "{}", 1, size, now, now, expires_at))
    return records


ENTRY_COLUMNS = [
    "key",
    "value",
    "partition",
    "metadata",
    "version",
    "size_bytes",
    "created_at",
    "updated_at",
    "expires_at",
]


async def _copy_entries(conn: Any, keys: Sequence[str], expires_at: datetime | None = None) -> None:
    for start in range(0, len(keys), COPY_BATCH):
        records = _entry_records(keys[start : start + COPY_BATCH], expires_at)
        await conn.copy_records_to_table("qe_memory", records=records, columns=ENTRY_COLUMNS)


async def _copy_jobs(conn: Any, count: int) -> None:
    for start in range(0, count, COPY_BATCH):
        n = min(COPY_BATCH, count - start)
        records = [(uuid.uuid4(), QUEUE, '{"job":1}') for _ in range(n)]
        await conn.copy_records_to_table(
            "queue_jobs", records=records, columns=["id", "queue", "payload"]
        )


def _probe_prefix(i: int) -> str:
    return f"{PREFIX}agent-{i % MANY_GROUPS}/"


async def _measure_size(
    h: Harness, size: int, memory: PostgresMemory, raw: RawPostgres, queues: QueueBench, ops: int
) -> None:
    label = size_label(size)
    backend = "postgres growth"
    twin = raw.twin
    await h.interleave(
        h.open(backend, f"retrieve@{label}", f"retrieve @ {label}", twin),
        ops,
        lambda i: memory.retrieve(f"{PREFIX}fill/{(i * 7919) % size}"),
        lambda i: raw.retrieve(f"{PREFIX}fill/{(i * 7919 + 1) % size}"),
    )
    calls = max(1, ops // 4)
    await h.interleave(
        h.open(backend, f"search@{label}", f"search (50) @ {label}", twin),
        calls,
        lambda i: memory.search(_probe_prefix(i) + "*"),
        lambda i: raw.search(_probe_prefix(i)),
    )
    await h.interleave(
        h.open(backend, f"list_keys@{label}", f"list_keys (50) @ {label}", twin),
        calls,
        lambda i: memory.list_keys(_probe_prefix(i)),
        lambda i: raw.list_keys(_probe_prefix(i)),
    )

    async def ours_claim(i: int) -> None:
        if await queues.queue.claim("growth", lease=LEASE) is None:
            raise AssertionError("the growth queue ran dry")

    async def raw_claim(i: int) -> None:
        if await queues.raw_claim(queues.conn, "growth") is None:
            raise AssertionError("the growth queue ran dry")

    # Fewer claims: each one's cost is what grows (a full scan once the queue is large).
    await h.interleave(
        h.open(backend, f"claim@{label}", f"queue claim @ {label}", QUEUE_TWIN, "jobs"),
        max(1, ops // 50),
        ours_claim,
        raw_claim,
    )


async def _writer(
    memory: PostgresMemory, stop: asyncio.Event, latencies: list[float], tag: str
) -> None:
    i = 0
    while not stop.is_set():
        start = time.perf_counter()
        await memory.store(f"{PREFIX}writer/{tag}/{i % 1000}", payload(i))
        latencies.append(time.perf_counter() - start)
        i += 1


def _latency_summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies) or [0.0]
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "calls": len(latencies),
        "p50_ms": statistics.median(ordered) * 1e3,
        "p99_ms": p99 * 1e3,
        "max_ms": ordered[-1] * 1e3,
    }


async def _cleanup(h: Harness, memory: PostgresMemory, conn: Any, options: GrowthOptions) -> Any:
    """cleanup_expired of ``expired`` entries while a writer stores; the writer alone first."""
    h.log(f"growth: writer alone, then cleanup_expired of {options.expired:,} expired entries")
    baseline: list[float] = []
    stop = asyncio.Event()
    started = time.perf_counter()
    writer = asyncio.create_task(_writer(memory, stop, baseline, "alone"))
    await asyncio.sleep(1.0 if not options.smoke else 0.2)
    stop.set()
    await writer
    alone_stall = h.ticker.max_late(started, time.perf_counter())

    keys = [f"{PREFIX}expired/{i}" for i in range(options.expired)]
    await _copy_entries(conn, keys, datetime.now(UTC) - timedelta(hours=1))
    await conn.execute("ANALYZE qe_memory")
    during: list[float] = []
    stop = asyncio.Event()
    started = time.perf_counter()
    writer = asyncio.create_task(_writer(memory, stop, during, "during"))
    try:
        removed = await memory.cleanup_expired()
    finally:
        stop.set()
        await writer
    elapsed = time.perf_counter() - started
    stall = h.ticker.max_late(started, time.perf_counter())
    return {
        "expired": options.expired,
        "removed": removed,
        "batch": options.cleanup_batch,
        "seconds": elapsed,
        "removed_per_s": removed / elapsed if elapsed else 0.0,
        "writer_alone": {
            **_latency_summary(baseline),
            "stall_ms": alone_stall[0] * 1e3,
            "busy_stall_ms": alone_stall[1] * 1e3,
        },
        "writer_during_cleanup": {
            **_latency_summary(during),
            "stall_ms": stall[0] * 1e3,
            "busy_stall_ms": stall[1] * 1e3,
        },
    }


async def run_growth(
    options: GrowthOptions, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Grow the tables through ``options.sizes`` measuring at each; then the cleanup run."""
    options.check()
    h = Harness(options.repeats, log) if log is not None else Harness(options.repeats)
    run = run_id()
    h.log(f"run {run}")
    return await h.guarded(_grow(h, options, run))


async def _grow(h: Harness, options: GrowthOptions, run: str) -> dict[str, Any]:
    async with postgres_database(options.database_url, f"{run}_growth") as url:
        dsn = url.render_as_string(hide_password=False)
        memory = PostgresMemory(dsn, pool_size=10, cleanup_batch_size=options.cleanup_batch)
        queue = WorkQueue(dsn, QUEUE)
        conn = await asyncpg.connect(**asyncpg_kwargs(url))
        try:
            assert memory.engine is not None
            await migrate.upgrade(memory.engine)
            raw = RawPostgres(conn)
            # Both sides claim from the same queue: only its size matters here.
            queues = QueueBench(h, queue, QUEUE, conn, conn, Sizes(1, 1, 8 * PER_PREFIX, 1, 1))
            probes = [
                f"{_probe_prefix(a)}item-{j}" for a in range(MANY_GROUPS) for j in range(PER_PREFIX)
            ]
            async with h.ticking():
                await _copy_entries(conn, probes)
                loaded = len(probes)
                jobs = 0
                for size in options.sizes:
                    h.check()
                    h.log(f"growth: loading to {size:,} entries and {size:,} queued jobs (COPY)")
                    fill = [f"{PREFIX}fill/{i}" for i in range(loaded - len(probes), size)]
                    await _copy_entries(conn, fill)
                    loaded = len(probes) + size
                    await _copy_jobs(conn, size - jobs)
                    jobs = size
                    await conn.execute("ANALYZE qe_memory")
                    await conn.execute("ANALYZE queue_jobs")
                    warm = [memory.retrieve(f"{PREFIX}fill/{i}") for i in range(20)]
                    await asyncio.gather(*warm)
                    await _measure_size(h, size, memory, raw, queues, options.ops)
                cleanup = await _cleanup(h, memory, conn, options)
            server_version = await conn.fetchval("SHOW server_version")
        finally:
            await conn.close()
            await queue.close()
            await memory.close()
    return {
        "config": {
            "mode": "growth",
            "run_id": run,
            "sizes": list(options.sizes),
            "ops": options.ops,
            "repeats": options.repeats,
            "expired": options.expired,
            "cleanup_batch": options.cleanup_batch,
            "smoke": options.smoke,
        },
        "environment": {"postgresql": server_version, "asyncpg": asyncpg.__version__},
        "results": [summarize(section) for section in h.sections],
        "cleanup": cleanup,
    }
