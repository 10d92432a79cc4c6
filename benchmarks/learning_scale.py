"""Large-table benchmark: the learning history tables and ``qe_memory`` at millions of rows.

Creates a scratch PostgreSQL database (``aqe_large_<random>``, dropped at the end unless
``--keep``), migrates it to ``--revision`` (``head``; ``0004`` measures the plain tables before
trajectories were partitioned), loads ``--rows`` rows into ``trajectories``, ``rewards`` and
``qe_memory`` with server-side ``INSERT … SELECT generate_series`` (in chunks; on a partitioned
schema the library's :meth:`~lionagi_qe.DatabaseManager.maintain_partitions` runs before each
chunk, as a periodic maintenance job would), then times the library's own calls on them.

Trajectory steps are spread evenly over the last 40 days with a 30-day retention, so a quarter of
them has expired when the cleanup runs: the oldest partitions are wholly expired and one is
partly expired. Partitions hold a tenth of ``--rows`` ids (``--partition-rows``), so a small run
has the shape of the 10M one (which uses the default million). Every tenth reward refers to a
trajectory step. One memory entry in a hundred has expired, one in five has a TTL still running.

    python benchmarks/learning_scale.py                      # 200,000 rows, under a minute
    python benchmarks/learning_scale.py --rows 10000000      # the README numbers
    python benchmarks/learning_scale.py --revision 0004      # the same on plain tables

Timings are wall-clock medians (and the slowest) of ``--repeat`` calls each, in milliseconds,
on whatever else the machine is doing: compare runs made on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.pool import NullPool

from lionagi_qe import DatabaseManager, PostgresMemory
from lionagi_qe.db import migrate
from lionagi_qe.db.engine import create_engine
from lionagi_qe.learning.store import DEFAULT_PARTITION_ROWS
from lionagi_qe.models.learning import QE_AGENT_TYPES
from lionagi_qe.testing.servers import create_database, drop_database

AGENTS = sorted(QE_AGENT_TYPES)
SPAN_DAYS = 40
RETENTION_DAYS = 30
CHUNK = 500_000
STATES = 100_000
MEMORY_GROUPS = 1000

# Rows :lo … :hi - 1 of N: step i was stored (SPAN_DAYS * (1 - i / N)) days ago and expires
# RETENTION_DAYS after that (ids follow i, so old steps have small ids, as in real use).
_AGENT = "(CAST(:agents AS text[]))[1 + i % CAST(:n_agents AS int)]"
_STATE = "'s' || (i % CAST(:states AS int))"
_AGO = "now() - make_interval(secs => CAST(:span AS float8) * (1 - i / CAST(:n AS float8)))"
_SERIES = "generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint) - 1) AS i"
_TRAJECTORIES = f"""
INSERT INTO trajectories (agent_type, agent_instance_id, step_number, state_hash, action_hash,
                          reward, next_state_hash, done, created_at, expires_at)
SELECT {_AGENT}, 'inst-' || (i % 50), i % 100, {_STATE}, 'a' || (i % 8),
       (i % 21 - 10) / 10.0, 's' || ((i + 1) % CAST(:states AS int)), i % 100 = 99,
       t, t + make_interval(days => CAST(:retention AS int))
FROM {_SERIES}, LATERAL (SELECT {_AGO}) AS c(t)
"""
_REWARDS = f"""
INSERT INTO rewards (agent_type, trajectory_id, state_hash, action_hash, reward_value,
                     reward_type, created_at)
SELECT {_AGENT}, CASE WHEN i % 10 = 0 THEN CAST(:first_step AS bigint) + i END,
       {_STATE}, 'a' || (i % 8), (i % 7) / 7.0, 'immediate', {_AGO}
FROM {_SERIES}
"""
_MEMORY = f"""
INSERT INTO qe_memory (key, value, partition, size_bytes, created_at, updated_at, expires_at)
SELECT 'aqe/agent-' || (i % CAST(:groups AS int)) || '/item-' || i,
       CAST('{{"n": ' || i || '}}' AS json), 'default', 12, now(), now(),
       CASE WHEN i % 100 = 0 THEN now() - interval '1 hour'
            WHEN i % 5 = 1 THEN now() + interval '1 day' END
FROM {_SERIES}
"""


def _chunks(rows: int, size: int = CHUNK) -> list[tuple[int, int]]:
    return [(lo, min(lo + size, rows)) for lo in range(0, rows, size)]


async def _load(url: str, db: DatabaseManager, rows: int, *, memory: bool) -> dict[str, float]:
    """Fill the tables; seconds per table."""
    engine = create_engine(url, poolclass=NullPool)
    took: dict[str, float] = {}
    common = {
        "agents": AGENTS,
        "n_agents": len(AGENTS),
        "states": STATES,
        "span": SPAN_DAYS * 86400.0,
        "n": rows,
    }
    try:
        started = time.perf_counter()
        first_step = None
        for lo, hi in _chunks(rows):
            maintain = getattr(db, "maintain_partitions", None)
            if maintain is not None:
                await maintain()
            async with engine.begin() as conn:
                if first_step is None:
                    seq = "SELECT nextval(pg_get_serial_sequence('trajectories', 'id'))"
                    first_step = int(await conn.scalar(text(seq))) + 1
                await conn.execute(
                    text(_TRAJECTORIES),
                    {**common, "lo": lo, "hi": hi, "retention": RETENTION_DAYS},
                )
        took["trajectories"] = time.perf_counter() - started
        started = time.perf_counter()
        for lo, hi in _chunks(rows):
            async with engine.begin() as conn:
                await conn.execute(
                    text(_REWARDS), {**common, "lo": lo, "hi": hi, "first_step": first_step}
                )
        took["rewards"] = time.perf_counter() - started
        if memory:
            started = time.perf_counter()
            for lo, hi in _chunks(rows):
                async with engine.begin() as conn:
                    await conn.execute(text(_MEMORY), {"lo": lo, "hi": hi, "groups": MEMORY_GROUPS})
            took["qe_memory"] = time.perf_counter() - started
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            for table in ("trajectories", "rewards", "qe_memory"):
                await conn.execute(text(f"VACUUM ANALYZE {table}"))
    finally:
        await engine.dispose()
    return took


async def _skip_migration_partitions(db: DatabaseManager) -> None:
    """Start ids at the top of the partitions migration 0005 made (a million ids each), so a
    scaled-down run fills partitions of its own width, as ``--rows 10000000`` fills the
    migration's. A schema without partitions is left alone."""
    partitions = await db.list_trajectory_partitions()
    top = max((p["upper"] or 0 for p in partitions), default=0)
    if top:
        async with db.engine.begin() as conn:
            await conn.execute(text(f"ALTER TABLE trajectories ALTER COLUMN id RESTART WITH {top}"))


async def _timed(
    results: dict[str, Any], name: str, repeat: int, call: Callable[[int], Awaitable[object]]
) -> None:
    samples = []
    for i in range(repeat):
        started = time.perf_counter()
        await call(i)
        samples.append((time.perf_counter() - started) * 1e3)
    results[name] = {
        "median_ms": round(statistics.median(samples), 3),
        "max_ms": round(max(samples), 3),
    }
    print(f"  {name:<44} median {statistics.median(samples):9.3f} ms   max {max(samples):9.3f} ms")


async def _learning(db: DatabaseManager, repeat: int, results: dict[str, Any]) -> None:
    rng = random.Random(7)
    session = await db.start_session(AGENTS[0])
    step_ids: list[int] = []

    async def store(i: int) -> None:
        step_ids.append(
            await db.store_trajectory(
                AGENTS[i % len(AGENTS)], f"s{i}", "a1", 1.0, session_id=session
            )
        )

    await _timed(results, "store_trajectory", repeat, store)
    await _timed(
        results,
        "record_reward (with trajectory_id)",
        repeat,
        lambda i: db.record_reward(AGENTS[0], "s1", "a1", 1.0, trajectory_id=step_ids[i]),
    )
    await _timed(
        results,
        "get_recent_trajectories(agent, 100)",
        repeat,
        lambda i: db.get_recent_trajectories(AGENTS[i % len(AGENTS)], 100),
    )
    await _timed(
        results,
        "get_recent_trajectories(agent, instance)",
        repeat,
        lambda i: db.get_recent_trajectories(AGENTS[1], 100, agent_instance_id=f"inst-{i}"),
    )
    await _timed(
        results,
        "get_recent_trajectories(session)",
        repeat,
        lambda i: db.get_recent_trajectories(AGENTS[0], 100, session_id=session),
    )
    await _timed(
        results,
        "get_rewards(agent, 100)",
        repeat,
        lambda i: db.get_rewards(AGENTS[i % len(AGENTS)], limit=100),
    )
    await _timed(
        results,
        "get_rewards(agent, state, action)",
        repeat,
        lambda i: db.get_rewards(AGENTS[0], f"s{rng.randrange(STATES)}", "a1"),
    )

    def batch(i: int) -> list[dict[str, Any]]:
        return [
            {
                "agent_type": AGENTS[j % len(AGENTS)],
                "state_hash": f"s{rng.randrange(STATES)}",
                "action_hash": f"a{j % 8}",
                "reward": 1.0,
                "next_max_q": 0.5,
                "alpha": 0.1,
                "gamma": 0.9,
            }
            for j in range(100)
        ]

    await _timed(
        results, "batch_update_q_values(100)", repeat, lambda i: db.batch_update_q_values(batch(i))
    )
    await _timed(
        results,
        "get_learning_statistics(agent, hours=1)",
        max(1, repeat // 10),
        lambda i: db.get_learning_statistics(AGENTS[0], hours=1),
    )
    await _timed(results, "end_session (sums its steps)", 1, lambda i: db.end_session(session))
    started = time.perf_counter()
    deleted = await db.cleanup_expired_data()
    took = time.perf_counter() - started
    results["cleanup_expired_data"] = {"seconds": round(took, 3), "deleted": deleted}
    print(f"  cleanup_expired_data: {took:.3f} s, deleted {deleted}")
    # Reads again now that cleanup ran: on a partitioned table a partition whose steps have
    # all expired costs every "newest steps" query a walk through it until it is dropped.
    await _timed(
        results,
        "get_recent_trajectories(agent, 100) after cleanup",
        repeat,
        lambda i: db.get_recent_trajectories(AGENTS[i % len(AGENTS)], 100),
    )
    await _timed(
        results,
        "get_recent_trajectories(agent, instance) after cleanup",
        repeat,
        lambda i: db.get_recent_trajectories(AGENTS[1], 100, agent_instance_id=f"inst-{i}"),
    )
    started = time.perf_counter()
    again = await db.cleanup_expired_data()
    took = time.perf_counter() - started
    results["cleanup_expired_data (again)"] = {"seconds": round(took, 3), "deleted": again}
    print(f"  cleanup_expired_data again: {took:.3f} s, deleted {again}")


async def _memory(url: str, rows: int, repeat: int, results: dict[str, Any]) -> None:
    rng = random.Random(11)
    memory = PostgresMemory(url, auto_migrate=False)
    try:

        def some_key() -> str:
            i = rng.randrange(rows)
            while i % 100 == 0:
                i = rng.randrange(rows)
            return f"aqe/agent-{i % MEMORY_GROUPS}/item-{i}"

        await _timed(results, "memory.retrieve", repeat, lambda i: memory.retrieve(some_key()))
        await _timed(
            results,
            "memory.search('aqe/agent-N/item-1*')",
            repeat,
            lambda i: memory.search(f"aqe/agent-{i}/item-1*", limit=100),
        )
        await _timed(
            results,
            f"memory.list_keys (~{rows // MEMORY_GROUPS} keys)",
            max(1, repeat // 5),
            lambda i: memory.list_keys(f"aqe/agent-{i}/"),
        )
        await _timed(
            results,
            "memory.store (new key)",
            repeat,
            lambda i: memory.store(f"aqe/bench/{uuid.uuid4().hex}", {"i": i}),
        )
        started = time.perf_counter()
        removed = await memory.cleanup_expired()
        took = time.perf_counter() - started
        results["memory.cleanup_expired"] = {"seconds": round(took, 3), "deleted": removed}
        print(f"  memory.cleanup_expired: {took:.3f} s, deleted {removed}")
    finally:
        await memory.close()


async def _sizes(url: str) -> dict[str, Any]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            found = {}
            for table in ("trajectories", "rewards", "qe_memory"):
                size = await conn.scalar(
                    text(
                        "SELECT pg_size_pretty(greatest(sum(pg_total_relation_size(relid)),"
                        " pg_total_relation_size(CAST(:t AS regclass))))"
                        " FROM pg_partition_tree(CAST(:t AS regclass))"
                    ),
                    {"t": table},
                )
                found[table] = size
            return found
    finally:
        await engine.dispose()


async def main() -> tuple[dict[str, Any], str | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--revision", default="head")
    parser.add_argument(
        "--partition-rows",
        type=int,
        help="ids per trajectories partition (default: a tenth of --rows, at least 1,000)",
    )
    parser.add_argument("--database", help="use (or reuse, with --no-load) this database")
    parser.add_argument("--no-load", action="store_true", help="the database is already loaded")
    parser.add_argument("--no-memory", action="store_true", help="skip qe_memory")
    parser.add_argument("--keep", action="store_true", help="do not drop the database")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    name = args.database or f"aqe_large_{uuid.uuid4().hex[:8]}"
    base = args.url.rsplit("/", 1)[0]
    url = f"{base}/{name}" if args.no_load else create_database(args.url, name)
    results: dict[str, Any] = {"rows": args.rows, "revision": args.revision, "database": name}
    try:
        if not args.no_load:
            engine = create_engine(url, poolclass=NullPool)
            try:
                await migrate.upgrade(engine, args.revision)
            finally:
                await engine.dispose()
        width = args.partition_rows or max(args.rows // 10, 1000)
        db = DatabaseManager(
            url,
            min_connections=1,
            trajectory_retention=RETENTION_DAYS * 86400.0,
            trajectory_partition_rows=width,
        )
        try:
            if not args.no_load and width != DEFAULT_PARTITION_ROWS:
                await _skip_migration_partitions(db)
            if not args.no_load:
                print(f"loading {args.rows:,} rows per table into {name} …")
                results["load_seconds"] = await _load(url, db, args.rows, memory=not args.no_memory)
                print(f"  {results['load_seconds']}")
            results["sizes"] = await _sizes(url)
            print(f"  sizes {results['sizes']}")
            print("learning:")
            await _learning(db, args.repeat, results)
        finally:
            await db.close()
        if not args.no_memory:
            print("memory:")
            await _memory(url, args.rows, args.repeat, results)
    finally:
        if not args.keep:
            drop_database(args.url, name)
    return results, args.json


if __name__ == "__main__":
    found, destination = asyncio.run(main())
    if destination:
        Path(destination).write_text(json.dumps(found, indent=2, default=str), encoding="utf-8")
