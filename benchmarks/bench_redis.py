"""RedisMemory beside raw redis.asyncio doing the same work, in one process and one run (SPEC §10).

Usage::

    python benchmarks/bench_redis.py [--redis-url URL] [--ops N] [--repeats R] [--json]

The measurement machinery (interleaving, the 1 ms ticker, per-side stall charging, summaries) is
``bench_sql.py``'s, imported from beside this file, so both benchmarks report alike. The raw side
does what a hand-written client would: the same payload JSON under ``SET``/``GET``/``MSET``, and
for ordered ranges its own sorted-set index (``ZRANGEBYLEX`` + ``MGET``). One extra section runs
the search the naive way (``SCAN MATCH`` over the database) to show what the index saves.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import hiredis
import redis
import redis.asyncio as aredis
from bench_sql import SIDES, Section, Side, Ticker, summarize
from rich.console import Console
from rich.table import Table

from lionagi_qe.backends.redis import RedisMemory
from lionagi_qe.config import mask_url

DEFAULT_URL = "redis://127.0.0.1:6379/0"
NAMESPACE = "aqe/bench/"
STORE_MANY_BATCH = 10_000
SEARCH_STORE_SIZE = 100_000
SEARCH_AGENTS = 2_000  # 100,000 keys / 2,000 agents = 50 keys per agent prefix
TASKS = 50
POOL_SIZE = 10


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _value(i: int) -> dict[str, Any]:
    return {"agent": f"agent-{i % 50}", "step": i, "ok": True, "notes": "x" * 48}


def _prefix_upper(prefix: str) -> str:
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


@dataclass
class Bench:
    """Both sides' handles and the run's parameters."""

    memory: RedisMemory
    conn: aredis.Redis  # raw, one connection's worth of sequential calls
    pool: aredis.Redis  # raw, a blocking pool of POOL_SIZE for the concurrent sections
    raw_prefix: str
    ops: int
    repeats: int
    ticker: Ticker
    log: Console
    sections: list[Section] = field(default_factory=list)

    # raw twins of each operation

    def _raw(self, key: str) -> str:
        return self.raw_prefix + key

    async def raw_store(self, client: aredis.Redis, key: str, value: Any) -> None:
        await client.set(self._raw(key), _dumps(value))

    async def raw_retrieve(self, client: aredis.Redis, key: str) -> Any:
        raw = await client.get(self._raw(key))
        return None if raw is None else json.loads(raw)

    async def raw_store_many(self, items: dict[str, Any]) -> int:
        await self.conn.mset({self._raw(key): _dumps(value) for key, value in items.items()})
        return len(items)

    async def raw_index(self, keys: Sequence[str]) -> None:
        await self.conn.zadd(self._raw("idx"), dict.fromkeys(keys, 0))

    async def raw_list(self, prefix: str) -> list[str]:
        members = await self.conn.zrangebylex(
            self._raw("idx"), "[" + prefix, "(" + _prefix_upper(prefix)
        )
        return [member.decode() for member in members]

    async def raw_search(self, prefix: str) -> dict[str, Any]:
        keys = await self.raw_list(prefix)
        values = await self.conn.mget([self._raw(key) for key in keys]) if keys else []
        return {key: json.loads(raw) for key, raw in zip(keys, values, strict=True) if raw}

    async def raw_scan_search(self, prefix: str) -> dict[str, Any]:
        keys = [key async for key in self.conn.scan_iter(match=self._raw(prefix) + "*", count=1000)]
        keys.sort()
        values = await self.conn.mget(keys) if keys else []
        strip = len(self.raw_prefix)
        return {k.decode()[strip:]: json.loads(v) for k, v in zip(keys, values, strict=True) if v}

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
        """Load the scripts, fill both pools, write the keys the sequential sections read."""
        self.log.log("warm-up")
        for i in range(self.ops):
            await self.memory.store(f"{NAMESPACE}store/{i}", _value(i))
            await self.raw_store(self.conn, f"{NAMESPACE}store/{i}", _value(i))
            await self.memory.store(f"{NAMESPACE}read/{i}", _value(i))
            await self.raw_store(self.conn, f"{NAMESPACE}read/{i}", _value(i))
        await asyncio.gather(*(self.memory.retrieve(f"{NAMESPACE}read/{i}") for i in range(50)))
        await asyncio.gather(
            *(self.raw_retrieve(self.pool, f"{NAMESPACE}read/{i}") for i in range(50))
        )

    async def sequential(self) -> None:
        """store, retrieve, retrieve-missing: one call at a time, interleaved."""
        mem, conn = self.memory, self.conn
        values = [_value(i) for i in range(self.ops)]
        section = self._open("store")
        await self.interleave(
            section,
            self.ops,
            lambda i: mem.store(f"{NAMESPACE}store/{i}", values[i]),
            lambda i: self.raw_store(conn, f"{NAMESPACE}store/{i}", values[i]),
        )
        section = self._open("retrieve")
        await self.interleave(
            section,
            self.ops,
            lambda i: mem.retrieve(f"{NAMESPACE}read/{i}"),
            lambda i: self.raw_retrieve(conn, f"{NAMESPACE}read/{i}"),
        )
        section = self._open("retrieve (missing key)")
        await self.interleave(
            section,
            self.ops,
            lambda i: mem.retrieve(f"{NAMESPACE}missing/{i}"),
            lambda i: self.raw_retrieve(conn, f"{NAMESPACE}missing/{i}"),
        )

    async def store_many(self) -> None:
        """10,000 fresh entries per call, two calls per side per repetition."""
        section = self._open("store_many (10k)", unit="entries", items_per_call=STORE_MANY_BATCH)
        pair: list[Side] = ["ours", "raw"]
        for rep in range(self.repeats):
            for call in range(2):
                for side in pair if rep % 2 == 0 else pair[::-1]:
                    base = f"{NAMESPACE}many/{rep}-{call}/"
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
        self.log.log(f"seeding {SEARCH_STORE_SIZE:,} keys for search, on both sides")
        for start in range(0, SEARCH_STORE_SIZE, STORE_MANY_BATCH):
            batch = {
                f"{NAMESPACE}agent-{i % SEARCH_AGENTS}/item-{i}": _value(i)
                for i in range(start, start + STORE_MANY_BATCH)
            }
            await self.memory.store_many(batch)
            await self.raw_store_many(batch)
            await self.raw_index(list(batch))
        probe = await self.memory.search(f"{NAMESPACE}agent-7/*")
        assert len(probe) == 50, f"expected 50 keys under agent-7/, got {len(probe)}"
        assert probe == await self.raw_search(f"{NAMESPACE}agent-7/")

    async def ranges(self) -> None:
        """search (glob of 50 in 100k) and list_keys of the same prefix; then the SCAN way."""
        calls = max(1, self.ops // 4)
        mem = self.memory

        def prefix(i: int) -> str:
            return f"{NAMESPACE}agent-{(i * 7) % SEARCH_AGENTS}/"

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
        section = self._open("search vs raw SCAN MATCH")
        await self.interleave(
            section,
            max(1, calls // 500),
            lambda i: mem.search(prefix(i) + "*"),
            lambda i: self.raw_scan_search(prefix(i)),
        )

    async def concurrent(self) -> None:
        """50 tasks x N/50 calls: one RedisMemory (pool 10) vs a raw blocking pool of 10."""
        per_task = max(1, self.ops // TASKS)
        mem, pool = self.memory, self.pool

        async def worker(section: Section, side: Side, task: int, write: bool) -> None:
            for j in range(per_task):
                key = f"{NAMESPACE}conc/{task}/{j}"
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
    """The §10 targets that apply to a Redis store, with the measured value and pass/fail."""
    by_name = {r["name"]: r for r in results}
    retrieve, store = by_name["retrieve"], by_name["store"]
    many, search = by_name["store_many (10k)"], by_name["search (50 of 100k)"]
    stall = max(r["ours"]["busy_stall_ms"] for r in results)
    wall_stall = max(r["ours"]["stall_ms"] for r in results)
    rows = [
        (
            "retrieve ≤ 1.3x raw GET (mean per-op time)",
            retrieve["ratio_mean"],
            "x",
            retrieve["ratio_mean"] <= 1.3,
        ),
        (
            "store (Lua upsert + indexes) ≤ 1.5x raw SET (mean per-op time)",
            store["ratio_mean"],
            "x",
            store["ratio_mean"] <= 1.5,
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
    return [{"target": t, "measured": m, "unit": u, "passed": bool(p)} for t, m, u, p in rows]


def seed_table(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The seed's Redis expectations beside what both sides measured."""
    by_name = {r["name"]: r for r in results}
    conc = by_name[f"store x{TASKS} tasks"]
    search = by_name["search (50 of 100k)"]
    return [
        {
            "operation": "Redis write",
            "seed": "100-500 ops/s",
            "ours": f"{by_name['store']['ours']['rate']:,.0f} ops/s",
            "raw": f"{by_name['store']['raw']['rate']:,.0f} ops/s",
        },
        {
            "operation": "Redis read",
            "seed": "200-1000 ops/s",
            "ours": f"{by_name['retrieve']['ours']['rate']:,.0f} ops/s",
            "raw": f"{by_name['retrieve']['raw']['rate']:,.0f} ops/s",
        },
        {
            "operation": "search 50 keys",
            "seed": "< 0.5 s",
            "ours": f"{search['ours']['p50_ms']:.2f} ms",
            "raw": f"{search['raw']['p50_ms']:.2f} ms",
        },
        {
            "operation": "concurrent 50 ops",
            "seed": "1-2 s",
            "ours": f"{50 / conc['ours']['rate'] * 1e3:.1f} ms",
            "raw": f"{50 / conc['raw']['rate'] * 1e3:.1f} ms",
        },
    ]


def render(console: Console, report: dict[str, Any]) -> None:
    """Print the three tables."""
    env = report["environment"]
    console.print(
        f"Redis {env['server_version']} · Python {env['python']} · redis-py {env['redis_py']} · "
        f"hiredis {env['hiredis']} · {env['cpus']} CPUs · "
        f"ops={report['config']['ops']} repeats={report['config']['repeats']}"
    )
    table = Table(title="RedisMemory vs raw redis.asyncio (interleaved, same run)")
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


async def delete_prefix(client: aredis.Redis, prefix: str) -> None:
    """Delete every key under ``prefix`` (SCAN + UNLINK in batches)."""
    batch: list[bytes] = []
    async for key in client.scan_iter(match=f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            await client.unlink(*batch)
            batch.clear()
    if batch:
        await client.unlink(*batch)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    """Set up both sides, run every section, clean up; return the report."""
    log = Console(stderr=True)
    run_id = uuid.uuid4().hex[:8]
    ours_prefix, raw_prefix = f"aqe-bench:{run_id}:", f"aqe-bench-raw:{run_id}:"
    memory = RedisMemory(url=args.redis_url, prefix=ours_prefix, max_connections=POOL_SIZE)
    conn = aredis.Redis.from_url(args.redis_url)
    pool = aredis.Redis(
        connection_pool=aredis.BlockingConnectionPool.from_url(
            args.redis_url, max_connections=POOL_SIZE
        )
    )
    ticker = Ticker()
    try:
        ticker.start()
        bench = Bench(memory, conn, pool, raw_prefix, args.ops, args.repeats, ticker, log)
        results = await bench.run()
        server_version = (await conn.info("server"))["redis_version"]
    finally:
        await ticker.stop()
        for prefix in (ours_prefix, raw_prefix):
            await delete_prefix(conn, prefix)
        await memory.close()
        await conn.aclose()
        await pool.aclose()
    return {
        "config": {
            "redis": mask_url(args.redis_url),
            "ops": args.ops,
            "repeats": args.repeats,
            "tasks": TASKS,
            "pool_size": POOL_SIZE,
        },
        "environment": {
            "server_version": server_version,
            "python": platform.python_version(),
            "redis_py": redis.__version__,
            "hiredis": getattr(hiredis, "__version__", "?"),
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
        "--redis-url",
        default=os.environ.get("AQE_BENCH_REDIS_URL", DEFAULT_URL),
        help="Redis URL (default: $AQE_BENCH_REDIS_URL or %(default)s)",
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
