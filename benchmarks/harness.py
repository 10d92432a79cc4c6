"""Measurement machinery shared by the ``bench_*.py`` scripts.

Every benchmark compares "ours" (the library) with "raw" (a hand-written driver twin doing the
same work) in one process and one run:

- :class:`Harness` opens and closes :class:`Section` s, interleaves the two sides call by call
  (:meth:`Harness.interleave`, the order flipping every repetition) or alternates whole blocks of
  concurrent tasks (:meth:`Harness.blocks`);
- a :class:`Ticker` (1 ms period) runs throughout; each late tick is charged to whichever side's
  calls overlapped the delay, as wall-clock lateness and as the CPU-busy part of it;
- :func:`summarize` turns a section into rates, p50/p99 latencies and ours/raw ratios;
- :func:`comparison_table`, :func:`targets_table`, :func:`seed_expectations_table` and
  :func:`emit` render the report; :func:`make_parser` / :func:`check_sizes` hold the common CLI;
- :func:`open_database` creates the PostgreSQL database if missing, :func:`delete_prefix` removes
  a run's Redis keys (never ``FLUSHDB``).
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
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import asyncpg
import redis.asyncio as aredis
from rich.console import Console
from rich.table import Table
from sqlalchemy import URL, Executable
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from lionagi_qe.db.engine import normalize_url

Side = Literal["ours", "raw"]
SIDES: tuple[Side, Side] = ("ours", "raw")

DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/aqe_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
TASKS = 50  # concurrent tasks in every "x50 tasks" section
POOL_SIZE = 10

Op = Callable[[int], Awaitable[object]]
TaskOp = Callable[[Side, int, int, int], Awaitable[object]]  # (side, rep, task, j)


# -- payloads ---------------------------------------------------------------------------------


def dumps(value: Any) -> str:
    """Compact JSON, as the library writes it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def value(i: int) -> dict[str, Any]:
    """The benchmark's payload number ``i`` (about 100 bytes of JSON)."""
    return {"agent": f"agent-{i % 50}", "step": i, "ok": True, "notes": "x" * 48}


def prefix_upper(prefix: str) -> str:
    """The smallest string above every string starting with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def size_label(n: int) -> str:
    """``100000`` -> ``"100k"``; sizes that are not whole thousands stay as they are."""
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


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
    unit: str  # "ops", "entries", "updates"
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


@dataclass
class Harness:
    """The run's sections, the stall ticker and the repetition count."""

    repeats: int
    log: Console
    ticker: Ticker = field(default_factory=Ticker)
    sections: list[Section] = field(default_factory=list)

    def open(
        self, name: str, unit: str = "ops", *, items_per_call: int = 1, concurrent: bool = False
    ) -> Section:
        """Collect garbage, log ``name`` and start a section."""
        gc.collect()
        self.log.log(f"[bold]{name}[/]", _stack_offset=2)  # show the caller
        section = Section(name, unit, items_per_call=items_per_call, concurrent=concurrent)
        section.started = time.perf_counter()
        self.sections.append(section)
        return section

    def close(self, section: Section) -> None:
        """End ``section`` and charge the ticks that fell inside it."""
        section.ended = time.perf_counter()
        self.ticker.charge(section)

    async def interleave(
        self,
        section: Section,
        calls: int,
        ours: Op,
        raw: Op,
        *,
        items: int = 1,
        running_index: bool = False,
    ) -> None:
        """``repeats`` x ``calls``: ours and raw alternate call by call, order flipping per rep.

        Each side's op gets the call's index ``i`` (``rep * calls + i`` with ``running_index``,
        so every repetition touches fresh indices); then the section is closed.
        """
        pair: list[tuple[Side, Op]] = [("ours", ours), ("raw", raw)]
        for rep in range(self.repeats):
            order = pair if rep % 2 == 0 else pair[::-1]
            for i in range(calls):
                index = rep * calls + i if running_index else i
                for side, op in order:
                    await section.timed(side, op(index), items)
        self.close(section)

    async def blocks(
        self, section: Section, per_task: int, op: TaskOp, *, items: int = 1, tasks: int = TASKS
    ) -> None:
        """``repeats`` x (``tasks`` tasks x ``per_task`` calls), one side's block after the other's.

        The order flips every repetition; each call's latency is kept, and the block's wall time
        gives the section's rate. Then the section is closed.
        """
        for rep in range(self.repeats):
            for side in SIDES if rep % 2 == 0 else SIDES[::-1]:

                async def worker(task: int, side: Side = side, rep: int = rep) -> None:
                    for j in range(per_task):
                        call = op(side, rep, task, j)
                        start = time.perf_counter()
                        await call
                        section.series[side].latencies.append(time.perf_counter() - start)

                start = time.perf_counter()
                await asyncio.gather(*(worker(t) for t in range(tasks)))
                end = time.perf_counter()
                series = section.series[side]
                series.wall += end - start
                series.items += per_task * tasks * items
                section.intervals.append((start, end, side))
        self.close(section)

    @contextlib.asynccontextmanager
    async def ticking(self) -> AsyncIterator[None]:
        """Run the stall ticker for the duration of the block."""
        self.ticker.start()
        try:
            yield
        finally:
            await self.ticker.stop()

    def summaries(self) -> list[dict[str, Any]]:
        """:func:`summarize` of every section, in order."""
        return [summarize(section) for section in self.sections]


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0.01 steps, inclusive method) of sorted values."""
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
            "p50_ms": quantile(lat, 0.50) * 1e3,
            "p99_ms": quantile(lat, 0.99) * 1e3,
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


def verdicts(rows: Iterable[tuple[str, float, str, bool]]) -> list[dict[str, Any]]:
    """(target, measured, unit, passed) rows as the report's ``targets`` list."""
    return [{"target": t, "measured": m, "unit": u, "passed": bool(p)} for t, m, u, p in rows]


def stall_target(
    results: Sequence[Mapping[str, Any]], *, show_wall: bool = True
) -> tuple[str, float, str, bool]:
    """The "event-loop stall ≤ 10 ms" row: worst CPU-busy stall charged to ours."""
    stall = max(r["ours"]["busy_stall_ms"] for r in results)
    wall = max(r["ours"]["stall_ms"] for r in results)
    detail = f"CPU-busy; wall {wall:.0f} ms" if show_wall else "CPU-busy"
    return (f"event-loop stall ≤ 10 ms (ours, {detail})", stall, "ms", stall <= 10)


# -- rendering --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A column of :func:`comparison_table`: header, cell of a summary, layout."""

    header: str
    cell: Callable[[Mapping[str, Any]], str]
    justify: Literal["left", "right"] = "right"
    no_wrap: bool = False


NAME = Column("operation", lambda r: str(r["name"]), "left", no_wrap=True)
CALLS = Column("calls", lambda r: str(r["ours"]["calls"]))
UNIT = Column("unit", lambda r: str(r["unit"]), "left")
RATIO_P50 = Column("ratio p50", lambda r: f"{r['ratio_p50']:.2f}x")
RATIO_MEAN = Column("ratio mean", lambda r: f"{r['ratio_mean']:.2f}x")
STALL = Column(
    "stall ms ours/raw", lambda r: f"{r['ours']['stall_ms']:.1f}/{r['raw']['stall_ms']:.1f}"
)


def busy_stall(header: str = "busy ms ours/raw") -> Column:
    """The CPU-busy stall per side, ``ours/raw``."""
    return Column(
        header, lambda r: f"{r['ours']['busy_stall_ms']:.1f}/{r['raw']['busy_stall_ms']:.1f}"
    )


def comparison_table(
    title: str,
    operations: Iterable[Mapping[str, Any]],
    *,
    leading: Sequence[Column] = (NAME, CALLS, UNIT),
    rate_label: str = "rate",
    trailing: Sequence[Column] = (RATIO_P50, RATIO_MEAN, STALL, busy_stall()),
) -> Table:
    """``leading`` columns, then per side rate / p50 ms / p99 ms, then ``trailing`` columns."""
    table = Table(title=title)
    for column in leading:
        table.add_column(column.header, justify=column.justify, no_wrap=column.no_wrap)
    for side in SIDES:
        table.add_column(f"{side} {rate_label}", justify="right")
        table.add_column(f"{side} p50 ms", justify="right")
        table.add_column(f"{side} p99 ms", justify="right")
    for column in trailing:
        table.add_column(column.header, justify=column.justify, no_wrap=column.no_wrap)
    for r in operations:
        cells = [column.cell(r) for column in leading]
        for side in SIDES:
            s = r[side]
            cells += [f"{s['rate']:,.0f}", f"{s['p50_ms']:.3f}", f"{s['p99_ms']:.3f}"]
        cells += [column.cell(r) for column in trailing]
        table.add_row(*cells)
    return table


def targets_table(title: str, targets: Iterable[Mapping[str, Any]]) -> Table:
    """Targets with their measured value and PASS/FAIL."""
    table = Table(title=title)
    table.add_column("target")
    table.add_column("measured", justify="right")
    table.add_column("")
    for t in targets:
        unit = t["unit"]
        measured = (
            f"{t['measured']:,.0f} {unit}" if unit == "entries/s" else f"{t['measured']:.2f} {unit}"
        )
        table.add_row(t["target"], measured, "[green]PASS[/]" if t["passed"] else "[red]FAIL[/]")
    return table


def seed_expectations_table(rows: Iterable[Mapping[str, str]]) -> Table:
    """The seed's expectations beside what both sides measured."""
    table = Table(title="Seed expectations (reference)")
    for column in ("operation", "seed", "ours", "raw"):
        table.add_column(column, justify="left" if column == "operation" else "right")
    for row in rows:
        table.add_row(row["operation"], row["seed"], row["ours"], row["raw"])
    return table


def config(
    location: tuple[str, str | None], args: argparse.Namespace, **extra: Any
) -> dict[str, Any]:
    """The report's ``config``: where it ran (masked URL), --ops, --repeats, tasks, extras."""
    key, url = location
    return {key: url, "ops": args.ops, "repeats": args.repeats, "tasks": TASKS, **extra}


def environment(server: tuple[str, str], **libraries: Any) -> dict[str, Any]:
    """The report's ``environment``: the server's version, Python, ``libraries``, CPU count."""
    key, version = server
    return {key: version, "python": platform.python_version(), **libraries, "cpus": os.cpu_count()}


def emit(
    report: dict[str, Any],
    render: Callable[[Console, dict[str, Any]], None],
    *,
    as_json: bool,
    width: int = 200,
) -> None:
    """Render the tables (to stderr with ``as_json``, which puts the JSON report on stdout)."""
    console = Console(stderr=as_json)
    console.width = max(console.width, width)  # the main table is wide; don't wrap it in a pipe
    render(console, report)
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")


# -- command line -----------------------------------------------------------------------------


def make_parser(
    doc: str | None,
    *,
    database: bool = False,
    redis: bool = False,
    ops_help: str = "calls per repetition",
    json_help: str = "JSON on stdout, tables on stderr",
) -> argparse.ArgumentParser:
    """``--database-url`` / ``--redis-url`` (as asked), ``--ops``, ``--repeats``, ``--json``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    if database:
        parser.add_argument(
            "--database-url",
            default=os.environ.get("AQE_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL),
            help="PostgreSQL URL (default: $AQE_BENCH_DATABASE_URL or %(default)s)",
        )
    if redis:
        parser.add_argument(
            "--redis-url",
            default=os.environ.get("AQE_BENCH_REDIS_URL", DEFAULT_REDIS_URL),
            help="Redis URL (default: $AQE_BENCH_REDIS_URL or %(default)s)",
        )
    parser.add_argument("--ops", type=int, default=2000, help=ops_help)
    parser.add_argument("--repeats", type=int, default=5, help="repetitions")
    parser.add_argument("--json", action="store_true", help=json_help)
    return parser


def add_store_size(parser: argparse.ArgumentParser, default: int, per_prefix: int) -> None:
    """``--store-size``: keys seeded for the search / list sections (``per_prefix`` a prefix)."""
    parser.add_argument(
        "--store-size",
        type=int,
        default=default,
        help=f"keys seeded for search/list, {per_prefix} per agent prefix (default: %(default)s)",
    )


def check_sizes(
    parser: argparse.ArgumentParser, args: argparse.Namespace, min_ops: int = TASKS
) -> argparse.Namespace:
    """Exit with a usage error unless ``--ops >= min_ops`` and ``--repeats >= 1``."""
    if args.ops < min_ops or args.repeats < 1:
        parser.error(f"need --ops >= {min_ops} and --repeats >= 1")
    return args


# -- servers ----------------------------------------------------------------------------------


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


ASYNCPG_DIALECT = postgresql.asyncpg.dialect()  # type: ignore[no-untyped-call]


def asyncpg_kwargs(url: URL, database: str | None = None) -> dict[str, Any]:
    """``asyncpg.connect`` arguments for ``url`` (another ``database`` if given)."""
    return {
        "host": url.host or "127.0.0.1",
        "port": url.port or 5432,
        "user": url.username or "postgres",
        "password": url.password,
        "database": database or url.database,
    }


async def ensure_database(url: URL) -> None:
    """Create the benchmark database if it is missing (via the ``postgres`` database)."""
    conn = await asyncpg.connect(**asyncpg_kwargs(url, "postgres"))
    try:
        name = url.database or "aqe_bench"
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute('CREATE DATABASE "{}"'.format(name.replace('"', '""')))
    finally:
        await conn.close()


async def open_database(database_url: str) -> URL:
    """Normalize ``database_url`` and make sure its database exists; the URL."""
    url = normalize_url(database_url)
    await ensure_database(url)
    return url


@contextlib.asynccontextmanager
async def raw_postgres(
    url: URL, cleanup_sql: str, pool_size: int = POOL_SIZE
) -> AsyncIterator[tuple[asyncpg.Connection, asyncpg.Pool]]:
    """A raw asyncpg connection and pool; ``cleanup_sql`` runs on entry and on exit."""
    conn = await asyncpg.connect(**asyncpg_kwargs(url))
    pool = await asyncpg.create_pool(**asyncpg_kwargs(url), min_size=pool_size, max_size=pool_size)
    assert pool is not None
    try:
        await conn.execute(cleanup_sql)
        yield conn, pool
    finally:
        await conn.execute(cleanup_sql)
        await conn.close()
        await pool.close()


async def delete_prefix(client: aredis.Redis, prefix: str, batch_size: int = 1000) -> None:
    """Delete every Redis key under ``prefix`` (SCAN + UNLINK in batches; never FLUSHDB)."""
    batch: list[bytes] = []
    async for key in client.scan_iter(match=f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= batch_size:
            await client.unlink(*batch)
            batch.clear()
    if batch:
        await client.unlink(*batch)
