"""PostgresMemory beside raw asyncpg doing the same work, in one process and one run (SPEC §10).

Usage::

    python benchmarks/bench_sql.py [--database-url URL] [--ops N] [--repeats R] [--json]

Every sequential operation is interleaved call by call with its raw-driver twin (the order
flips each repetition), so machine noise lands on both sides alike. A 1 ms ticker task runs
throughout; each late tick is charged to whichever side's calls overlapped the delay. A late
tick is reported twice: its wall-clock lateness, and the part of it this process spent on the
CPU ("busy"), which leaves out time the OS gave to other processes on a loaded machine.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import gc
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import asyncpg
import sqlalchemy
from rich.console import Console
from rich.table import Table
from sqlalchemy import URL, Executable
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from lionagi_qe.backends.sql import PostgresMemory
from lionagi_qe.db import migrate
from lionagi_qe.db.engine import normalize_url
from lionagi_qe.repositories import memory as memory_sql

Side = Literal["ours", "raw"]
SIDES: tuple[Side, Side] = ("ours", "raw")

DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/aqe_bench"
ASYNCPG_DIALECT = postgresql.asyncpg.dialect()  # type: ignore[no-untyped-call]
PREFIX = "aqe/bench/"
CLEANUP_SQL = "DELETE FROM qe_memory WHERE key >= 'aqe/bench/' AND key < 'aqe/bench0'"
PARTITION = "default"
STORE_MANY_BATCH = 10_000
SEARCH_STORE_SIZE = 100_000
SEARCH_AGENTS = 2_000  # 100,000 keys / 2,000 agents = 50 keys per agent prefix
TASKS = 50
POOL_SIZE = 10

RAW_GET = (
    "SELECT CAST(value AS TEXT) FROM qe_memory WHERE key = $1 "
    "AND (expires_at IS NULL OR expires_at > statement_timestamp())"
)
RAW_SEARCH = (
    "SELECT key, CAST(value AS TEXT) FROM qe_memory WHERE key >= $1 AND key < $2 "
    "AND (expires_at IS NULL OR expires_at > statement_timestamp()) AND key ~ $3 ORDER BY key"
)
RAW_LIST = (
    "SELECT key FROM qe_memory WHERE key >= $1 AND key < $2 "
    "AND (expires_at IS NULL OR expires_at > statement_timestamp()) ORDER BY key"
)


# -- the statements the repository emits, compiled for the raw driver ------------------------


@dataclass(frozen=True)
class CompiledStatement:
    """A repository statement as asyncpg SQL, with its positional parameter order."""

    sql: str
    names: tuple[str, ...]
    defaults: dict[str, Any]

    @classmethod
    def of(cls, statement: Executable) -> CompiledStatement:
        """Compile ``statement`` exactly as SQLAlchemy's asyncpg dialect would send it."""
        compiled = cast(ClauseElement, statement).compile(dialect=ASYNCPG_DIALECT)
        assert isinstance(compiled, SQLCompiler)
        names = tuple(compiled.positiontup or ())
        return cls(compiled.string, names, dict(compiled.params))

    def args(self, **values: Any) -> list[Any]:
        """Positional arguments: ``values`` by name, the statement's own literals otherwise."""
        unknown = set(values) - set(self.names)
        if unknown:
            raise KeyError(f"statement has no parameters {sorted(unknown)}: {self.sql[:80]}")
        return [values[name] if name in values else self.defaults[name] for name in self.names]


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _size(key: str, value_json: str) -> int:
    return len(key.encode()) + len(value_json.encode())


def _value(i: int) -> dict[str, Any]:
    return {"agent": f"agent-{i % 50}", "step": i, "ok": True, "notes": "x" * 48}


def _prefix_upper(prefix: str) -> str:
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


# -- measurement ------------------------------------------------------------------------------


@dataclass
class Series:
    """Per-call latencies (seconds) of one side, plus wall time for concurrent sections."""

    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    items: int = 0


@dataclass
class Section:
    """One operation measured on both sides."""

    name: str
    unit: str  # "ops" or "entries"
    items_per_call: int = 1
    concurrent: bool = False
    series: dict[str, Series] = field(default_factory=lambda: {s: Series() for s in SIDES})
    intervals: list[tuple[float, float, str]] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0
    stall: dict[str, float] = field(default_factory=dict)
    busy_stall: dict[str, float] = field(default_factory=dict)

    async def timed(self, side: Side, call: Awaitable[object], items: int = 1) -> None:
        """Await ``call``, recording its latency and the interval it occupied."""
        start = time.perf_counter()
        await call
        end = time.perf_counter()
        self.series[side].latencies.append(end - start)
        self.series[side].items += items
        self.intervals.append((start, end, side))


class Ticker:
    """A 1 ms-period task; each tick's (due, woke, cpu) is kept to measure event-loop stalls."""

    def __init__(self, period: float = 0.001) -> None:
        self.period = period
        self.ticks: list[tuple[float, float, float]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start ticking on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop ticking."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            cpu = time.process_time()
            due = time.perf_counter() + self.period
            await asyncio.sleep(self.period)
            woke = time.perf_counter()
            self.ticks.append((due, woke, time.process_time() - cpu))

    def charge(self, section: Section) -> None:
        """Max lateness (s) per side, wall and CPU-busy; a tick goes to the side overlapping it."""
        intervals = sorted(section.intervals)
        starts = [iv[0] for iv in intervals]
        worst = {"ours": 0.0, "raw": 0.0, "between": 0.0}
        worst_busy = dict(worst)
        first = bisect.bisect_left(self.ticks, (section.started, 0.0, 0.0))
        for due, woke, cpu in self.ticks[first:]:
            if due > section.ended:
                break
            late = woke - due
            overlap = {"ours": 0.0, "raw": 0.0}
            idx = bisect.bisect_right(starts, woke) - 1
            while idx >= 0 and intervals[idx][1] > due:
                start, end, side = intervals[idx]
                overlap[side] += min(end, woke) - max(start, due)
                idx -= 1
            owner = max(overlap, key=overlap.__getitem__) if any(overlap.values()) else "between"
            worst[owner] = max(worst[owner], late)
            worst_busy[owner] = max(worst_busy[owner], min(late, max(cpu - self.period, 0.0)))
        section.stall = worst
        section.busy_stall = worst_busy


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    cuts = statistics.quantiles(sorted_values, n=100, method="inclusive")
    return cuts[round(q * 100) - 1]


def summarize(section: Section) -> dict[str, Any]:
    """ops/s (or entries/s), p50/p99 ms and ours/raw ratios of one section."""
    sides: dict[str, dict[str, float]] = {}
    for side in SIDES:
        series = section.series[side]
        lat = sorted(series.latencies)
        mean = statistics.fmean(lat)
        rate = series.items / series.wall if section.concurrent else section.items_per_call / mean
        sides[side] = {
            "calls": len(lat),
            "rate": rate,
            "mean_ms": mean * 1e3,
            "p50_ms": _quantile(lat, 0.50) * 1e3,
            "p99_ms": _quantile(lat, 0.99) * 1e3,
            "stall_ms": section.stall.get(side, 0.0) * 1e3,
            "busy_stall_ms": section.busy_stall.get(side, 0.0) * 1e3,
        }
    ours, raw = sides["ours"], sides["raw"]
    return {
        "name": section.name,
        "unit": f"{section.unit}/s",
        "items_per_call": section.items_per_call,
        "concurrent": section.concurrent,
        "ours": ours,
        "raw": raw,
        "ratio_p50": ours["p50_ms"] / raw["p50_ms"],
        # Concurrent sections: per-op time is wall time / ops, i.e. the inverse throughput.
        "ratio_mean": (raw["rate"] / ours["rate"])
        if section.concurrent
        else ours["mean_ms"] / raw["mean_ms"],
        "stall_between_ms": section.stall.get("between", 0.0) * 1e3,
    }


# -- the benchmark ----------------------------------------------------------------------------


@dataclass
class Bench:
    """Both sides' handles and the run's parameters."""

    memory: PostgresMemory
    conn: asyncpg.Connection
    pool: asyncpg.Pool
    ops: int
    repeats: int
    ticker: Ticker
    log: Console
    upsert: CompiledStatement = field(init=False)
    upsert_many: CompiledStatement = field(init=False)
    sections: list[Section] = field(default_factory=list)

    def __post_init__(self) -> None:
        sql = memory_sql.statements("postgresql")
        self.upsert = CompiledStatement.of(sql.upsert[False, False])
        self.upsert_many = CompiledStatement.of(memory_sql._PG_STORE_MANY)

    # raw twins of each operation

    async def raw_store(self, conn: Any, key: str, value: Any) -> int:
        value_json = _dumps(value)
        version = await conn.fetchval(
            self.upsert.sql,
            *self.upsert.args(
                b_key=key,
                b_value=value_json,
                b_partition=PARTITION,
                b_metadata="{}",
                b_size_bytes=_size(key, value_json),
            ),
        )
        return int(version)

    async def raw_retrieve(self, conn: Any, key: str) -> Any:
        value_json = await conn.fetchval(RAW_GET, key)
        return None if value_json is None else json.loads(value_json)

    async def raw_store_many(self, items: dict[str, Any]) -> int:
        keys = list(items)
        values = [_dumps(v) for v in items.values()]
        sizes = [_size(k, v) for k, v in zip(keys, values, strict=True)]
        args = self.upsert_many.args(
            keys=keys, values=values, sizes=sizes, partition=PARTITION, ttl=None
        )
        await self.conn.execute(self.upsert_many.sql, *args)
        return len(keys)

    async def raw_search(self, prefix: str) -> dict[str, Any]:
        regex = "^" + re.escape(prefix) + ".*$"
        rows = await self.conn.fetch(RAW_SEARCH, prefix, _prefix_upper(prefix), regex)
        return {row[0]: json.loads(row[1]) for row in rows}

    async def raw_list(self, prefix: str) -> list[str]:
        rows = await self.conn.fetch(RAW_LIST, prefix, _prefix_upper(prefix))
        return [row[0] for row in rows]

    # sections

    def _open(self, name: str, unit: str = "ops", **kw: Any) -> Section:
        gc.collect()
        self.log.log(f"[bold]{name}[/]")
        section = Section(name, unit, **kw)
        section.started = time.perf_counter()
        self.sections.append(section)
        return section

    def _close(self, section: Section) -> None:
        section.ended = time.perf_counter()
        self.ticker.charge(section)

    async def interleave(
        self,
        section: Section,
        calls: int,
        ours: Callable[[int], Awaitable[object]],
        raw: Callable[[int], Awaitable[object]],
    ) -> None:
        """``repeats`` x ``calls``: ours and raw alternate call by call, order flipping per rep."""
        pair: list[tuple[Side, Callable[[int], Awaitable[object]]]] = [("ours", ours), ("raw", raw)]
        for rep in range(self.repeats):
            order = pair if rep % 2 == 0 else pair[::-1]
            for i in range(calls):
                for side, op in order:
                    await section.timed(side, op(i))
        self._close(section)

    async def warm_up(self) -> None:
        """Fill statement caches and pools, and write the keys the sequential sections use."""
        self.log.log("warm-up")
        for i in range(self.ops):
            await self.memory.store(f"{PREFIX}store/ours/{i}", _value(i))
            await self.raw_store(self.conn, f"{PREFIX}store/raw/{i}", _value(i))
            await self.memory.store(f"{PREFIX}read/{i}", _value(i))
        for i in range(50):
            await self.memory.retrieve(f"{PREFIX}read/{i}")
            await self.raw_retrieve(self.conn, f"{PREFIX}read/{i}")
        await asyncio.gather(*(self.memory.retrieve(f"{PREFIX}read/{i}") for i in range(50)))
        await asyncio.gather(
            *(self.raw_retrieve(self.pool, f"{PREFIX}read/{i}") for i in range(50))
        )

    async def sequential(self) -> None:
        """store, retrieve, retrieve-missing: one call at a time, interleaved."""
        mem, conn = self.memory, self.conn
        values = [_value(i) for i in range(self.ops)]
        section = self._open("store")
        await self.interleave(
            section,
            self.ops,
            lambda i: mem.store(f"{PREFIX}store/ours/{i}", values[i]),
            lambda i: self.raw_store(conn, f"{PREFIX}store/raw/{i}", values[i]),
        )
        section = self._open("retrieve")
        await self.interleave(
            section,
            self.ops,
            lambda i: mem.retrieve(f"{PREFIX}read/{i}"),
            lambda i: self.raw_retrieve(conn, f"{PREFIX}read/{i}"),
        )
        section = self._open("retrieve (missing key)")
        await self.interleave(
            section,
            self.ops,
            lambda i: mem.retrieve(f"{PREFIX}missing/{i}"),
            lambda i: self.raw_retrieve(conn, f"{PREFIX}missing/{i}"),
        )

    async def store_many(self) -> None:
        """10,000 fresh entries per call, two calls per side per repetition."""
        section = self._open("store_many (10k)", unit="entries", items_per_call=STORE_MANY_BATCH)
        pair: list[Side] = ["ours", "raw"]
        for rep in range(self.repeats):
            for call in range(2):
                for side in pair if rep % 2 == 0 else pair[::-1]:
                    base = f"{PREFIX}many/{side}/{rep}-{call}/"
                    items = {f"{base}{i}": _value(i) for i in range(STORE_MANY_BATCH)}
                    op = (
                        self.memory.store_many(items)
                        if side == "ours"
                        else self.raw_store_many(items)
                    )
                    await section.timed(side, op, STORE_MANY_BATCH)
        self._close(section)

    async def seed_search_store(self) -> None:
        """100,000 keys ``aqe/bench/agent-{i % 2000}/item-{i}``: each agent prefix holds 50."""
        self.log.log(f"seeding {SEARCH_STORE_SIZE:,} keys for search")
        for start in range(0, SEARCH_STORE_SIZE, STORE_MANY_BATCH):
            batch = {
                f"{PREFIX}agent-{i % SEARCH_AGENTS}/item-{i}": _value(i)
                for i in range(start, start + STORE_MANY_BATCH)
            }
            await self.memory.store_many(batch)
        await self.conn.execute("ANALYZE qe_memory")
        probe = await self.memory.search(f"{PREFIX}agent-7/*")
        assert len(probe) == 50, f"expected 50 keys under agent-7/, got {len(probe)}"

    async def ranges(self) -> None:
        """search (glob of 50 in 100k) and list_keys of the same prefix."""
        calls = max(1, self.ops // 4)
        mem = self.memory

        def prefix(i: int) -> str:
            return f"{PREFIX}agent-{(i * 7) % SEARCH_AGENTS}/"

        section = self._open("search (50 of 100k)")
        await self.interleave(
            section,
            calls,
            lambda i: mem.search(prefix(i) + "*"),
            lambda i: self.raw_search(prefix(i)),
        )
        section = self._open("list_keys (50 of 100k)")
        await self.interleave(
            section, calls, lambda i: mem.list_keys(prefix(i)), lambda i: self.raw_list(prefix(i))
        )

    async def concurrent(self) -> None:
        """50 tasks x N/50 calls: one PostgresMemory (pool 10) vs an asyncpg pool of 10."""
        per_task = max(1, self.ops // TASKS)
        mem, pool = self.memory, self.pool

        async def worker(section: Section, side: Side, task: int, write: bool) -> None:
            for j in range(per_task):
                key = f"{PREFIX}conc/{side}/{task}/{j}"
                if side == "ours":
                    op = mem.store(key, _value(j)) if write else mem.retrieve(key)
                else:
                    op = (
                        self.raw_store(pool, key, _value(j))
                        if write
                        else self.raw_retrieve(pool, key)
                    )
                start = time.perf_counter()
                await op
                section.series[side].latencies.append(time.perf_counter() - start)

        for name, write in (("store", True), ("retrieve", False)):
            section = self._open(f"{name} x{TASKS} tasks", concurrent=True)
            for rep in range(self.repeats):
                for side in SIDES if rep % 2 == 0 else SIDES[::-1]:
                    start = time.perf_counter()
                    await asyncio.gather(*(worker(section, side, t, write) for t in range(TASKS)))
                    end = time.perf_counter()
                    series = section.series[side]
                    series.wall += end - start
                    series.items += per_task * TASKS
                    section.intervals.append((start, end, side))
            self._close(section)

    async def run(self) -> list[dict[str, Any]]:
        """Every section, in order; returns their summaries."""
        await self.warm_up()
        await self.sequential()
        await self.store_many()
        await self.seed_search_store()
        await self.ranges()
        await self.concurrent()
        return [summarize(section) for section in self.sections]


# -- verdicts and reference tables ------------------------------------------------------------


def targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The §10 targets with the measured value and pass/fail."""
    by_name = {r["name"]: r for r in results}
    store, retrieve = by_name["store"], by_name["retrieve"]
    many, search = by_name["store_many (10k)"], by_name["search (50 of 100k)"]
    stall = max(r["ours"]["busy_stall_ms"] for r in results)
    wall_stall = max(r["ours"]["stall_ms"] for r in results)
    rows = [
        (
            "store ≤ 1.3x raw (mean per-op time)",
            store["ratio_mean"],
            "x",
            store["ratio_mean"] <= 1.3,
        ),
        (
            "retrieve ≤ 1.5x raw (mean per-op time)",
            retrieve["ratio_mean"],
            "x",
            retrieve["ratio_mean"] <= 1.5,
        ),
        (
            "store_many ≥ 50,000 entries/s",
            many["ours"]["rate"],
            "entries/s",
            many["ours"]["rate"] >= 50_000,
        ),
        (
            "search 50 of 100k < 2 ms (p50)",
            search["ours"]["p50_ms"],
            "ms",
            search["ours"]["p50_ms"] < 2,
        ),
        (
            f"event-loop stall ≤ 10 ms (ours, CPU-busy; wall {wall_stall:.0f} ms)",
            stall,
            "ms",
            stall <= 10,
        ),
    ]
    for name in (f"store x{TASKS} tasks", f"retrieve x{TASKS} tasks"):
        r = by_name[name]
        rows.append(
            (
                f"{name}: beats raw per-call throughput",
                r["ours"]["rate"] / r["raw"]["rate"],
                "x raw",
                r["ours"]["rate"] > r["raw"]["rate"],
            )
        )
    return [{"target": t, "measured": m, "unit": u, "passed": bool(p)} for t, m, u, p in rows]


def seed_table(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The seed's expectations beside what both sides measured."""
    by_name = {r["name"]: r for r in results}
    conc = by_name[f"store x{TASKS} tasks"]
    return [
        {
            "operation": "PostgreSQL write",
            "seed": "10-50 ops/s",
            "ours": f"{by_name['store']['ours']['rate']:,.0f} ops/s",
            "raw": f"{by_name['store']['raw']['rate']:,.0f} ops/s",
        },
        {
            "operation": "PostgreSQL read",
            "seed": "50-200 ops/s",
            "ours": f"{by_name['retrieve']['ours']['rate']:,.0f} ops/s",
            "raw": f"{by_name['retrieve']['raw']['rate']:,.0f} ops/s",
        },
        {
            "operation": "search 50 keys",
            "seed": "< 1 s",
            "ours": f"{by_name['search (50 of 100k)']['ours']['p50_ms']:.2f} ms",
            "raw": f"{by_name['search (50 of 100k)']['raw']['p50_ms']:.2f} ms",
        },
        {
            "operation": "concurrent 50 ops",
            "seed": "2-5 s",
            "ours": f"{50 / conc['ours']['rate'] * 1e3:.1f} ms",
            "raw": f"{50 / conc['raw']['rate'] * 1e3:.1f} ms",
        },
    ]


def render(console: Console, report: dict[str, Any]) -> None:
    """Print the three tables."""
    env = report["environment"]
    console.print(
        f"PostgreSQL {env['server_version']} · Python {env['python']} · SQLAlchemy "
        f"{env['sqlalchemy']} · asyncpg {env['asyncpg']} · {env['cpus']} CPUs · "
        f"ops={report['config']['ops']} repeats={report['config']['repeats']}"
    )
    table = Table(title="PostgresMemory vs raw asyncpg (interleaved, same run)")
    table.add_column("operation", no_wrap=True)
    table.add_column("calls", justify="right")
    table.add_column("unit")
    for side in SIDES:
        table.add_column(f"{side} rate", justify="right")
        table.add_column(f"{side} p50 ms", justify="right")
        table.add_column(f"{side} p99 ms", justify="right")
    table.add_column("ratio p50", justify="right")
    table.add_column("ratio mean", justify="right")
    table.add_column("stall ms ours/raw", justify="right")
    table.add_column("busy ms ours/raw", justify="right")
    for r in report["operations"]:
        cells = [r["name"], str(r["ours"]["calls"]), r["unit"]]
        for side in SIDES:
            s = r[side]
            cells += [f"{s['rate']:,.0f}", f"{s['p50_ms']:.3f}", f"{s['p99_ms']:.3f}"]
        cells += [
            f"{r['ratio_p50']:.2f}x",
            f"{r['ratio_mean']:.2f}x",
            f"{r['ours']['stall_ms']:.1f}/{r['raw']['stall_ms']:.1f}",
            f"{r['ours']['busy_stall_ms']:.1f}/{r['raw']['busy_stall_ms']:.1f}",
        ]
        table.add_row(*cells)
    console.print(table)

    verdicts = Table(title="§10 targets")
    verdicts.add_column("target")
    verdicts.add_column("measured", justify="right")
    verdicts.add_column("")
    for t in report["targets"]:
        unit = t["unit"]
        value = (
            f"{t['measured']:,.0f} {unit}" if unit == "entries/s" else f"{t['measured']:.2f} {unit}"
        )
        verdicts.add_row(t["target"], value, "[green]PASS[/]" if t["passed"] else "[red]FAIL[/]")
    console.print(verdicts)

    seed = Table(title="Seed expectations (reference)")
    for column in ("operation", "seed", "ours", "raw"):
        seed.add_column(column, justify="left" if column == "operation" else "right")
    for row in report["seed"]:
        seed.add_row(row["operation"], row["seed"], row["ours"], row["raw"])
    console.print(seed)


# -- set-up -----------------------------------------------------------------------------------


def _asyncpg_kwargs(url: URL, database: str | None = None) -> dict[str, Any]:
    return {
        "host": url.host or "127.0.0.1",
        "port": url.port or 5432,
        "user": url.username or "postgres",
        "password": url.password,
        "database": database or url.database,
    }


async def ensure_database(url: URL) -> None:
    """Create the benchmark database if it is missing (via the ``postgres`` database)."""
    conn = await asyncpg.connect(**_asyncpg_kwargs(url, "postgres"))
    try:
        name = url.database or "aqe_bench"
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute('CREATE DATABASE "{}"'.format(name.replace('"', '""')))
    finally:
        await conn.close()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    """Set up both sides, run every section, clean up; return the report."""
    log = Console(stderr=True)
    url = normalize_url(args.database_url)
    await ensure_database(url)
    memory = PostgresMemory(url.render_as_string(hide_password=False), pool_size=POOL_SIZE)
    assert memory.engine is not None
    await migrate.upgrade(memory.engine)
    conn = await asyncpg.connect(**_asyncpg_kwargs(url))
    pool = await asyncpg.create_pool(**_asyncpg_kwargs(url), min_size=POOL_SIZE, max_size=POOL_SIZE)
    assert pool is not None
    ticker = Ticker()
    try:
        await conn.execute(CLEANUP_SQL)
        ticker.start()
        bench = Bench(memory, conn, pool, args.ops, args.repeats, ticker, log)
        results = await bench.run()
        server_version = await conn.fetchval("SHOW server_version")
    finally:
        await ticker.stop()
        await conn.execute(CLEANUP_SQL)
        await conn.close()
        await pool.close()
        await memory.close()
    return {
        "config": {
            "database": url.render_as_string(hide_password=True),
            "ops": args.ops,
            "repeats": args.repeats,
            "tasks": TASKS,
            "pool_size": POOL_SIZE,
        },
        "environment": {
            "server_version": server_version,
            "python": platform.python_version(),
            "sqlalchemy": sqlalchemy.__version__,
            "asyncpg": asyncpg.__version__,
            "cpus": os.cpu_count(),
        },
        "operations": results,
        "targets": targets(results),
        "seed": seed_table(results),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("AQE_BENCH_DATABASE_URL", DEFAULT_URL),
        help="PostgreSQL URL (default: $AQE_BENCH_DATABASE_URL or %(default)s)",
    )
    parser.add_argument("--ops", type=int, default=2000, help="calls per repetition")
    parser.add_argument("--repeats", type=int, default=5, help="repetitions")
    parser.add_argument("--json", action="store_true", help="JSON on stdout, tables on stderr")
    args = parser.parse_args(argv)
    if args.ops < TASKS or args.repeats < 1:
        parser.error(f"need --ops >= {TASKS} and --repeats >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the report."""
    args = parse_args(argv)
    report = asyncio.run(main_async(args))
    console = Console(stderr=args.json)
    console.width = max(console.width, 200)  # the main table is wide; don't wrap it in a pipe
    render(console, report)
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
