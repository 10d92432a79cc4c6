"""The memory contract, part 6: many concurrent agents neither lose nor double anything."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lionagi_qe import VersionConflictError
from lionagi_qe.testing import run_concurrently

pytestmark = pytest.mark.integration


async def test_concurrent_writes_of_distinct_keys(memory: Any) -> None:
    report = await run_concurrently(
        [lambda i=i: memory.store(f"aqe/test/cw/{i:03d}", {"i": i}) for i in range(100)],
        limit=50,
    )
    report.raise_first()
    assert report.max_in_flight > 1
    assert await memory.retrieve_many([f"aqe/test/cw/{i:03d}" for i in range(100)]) == {
        f"aqe/test/cw/{i:03d}": {"i": i} for i in range(100)
    }


async def test_concurrent_reads(memory: Any) -> None:
    await memory.store("aqe/test/config", {"threshold": 0.8})
    report = await run_concurrently(
        [lambda: memory.retrieve("aqe/test/config") for _ in range(100)], limit=50
    )
    report.raise_first()
    assert report.results == [{"threshold": 0.8}] * 100


async def test_concurrent_overwrites_of_one_key_leave_one_winner(memory: Any) -> None:
    report = await run_concurrently(
        [lambda i=i: memory.store("aqe/test/hot", i) for i in range(60)], limit=30
    )
    report.raise_first()
    versions = sorted(v for v in report.results if v is not None)
    assert versions == list(range(1, 61)), "every write got its own version"
    final = await memory.get_entry("aqe/test/hot")
    assert final is not None and final.version == 60
    winner = report.results.index(60)
    assert final.value == winner


async def test_concurrent_increments_are_exact(memory: Any) -> None:
    report = await run_concurrently(
        [lambda: memory.increment("aqe/test/hits") for _ in range(100)], limit=50
    )
    report.raise_first()
    assert await memory.retrieve("aqe/test/hits") == 100
    assert sorted(v for v in report.results if v is not None) == list(range(1, 101))


async def test_concurrent_float_increments_are_exact(memory: Any) -> None:
    report = await run_concurrently(
        [lambda: memory.increment("aqe/test/reward", 0.5) for _ in range(64)], limit=32
    )
    report.raise_first()
    assert await memory.retrieve("aqe/test/reward") == 32.0


async def test_if_absent_claim_has_exactly_one_winner(memory: Any) -> None:
    report = await run_concurrently(
        [
            lambda i=i: memory.store("aqe/test/job/claim", f"agent-{i}", if_absent=True)
            for i in range(50)
        ],
        limit=50,
    )
    winners = [i for i, result in enumerate(report.results) if result == 1]
    assert len(winners) == 1
    assert len(report.errors) == 49
    assert all(isinstance(exc, VersionConflictError) for _, exc in report.errors)
    assert await memory.retrieve("aqe/test/job/claim") == f"agent-{winners[0]}"


async def test_compare_and_set_has_exactly_one_winner_per_version(memory: Any) -> None:
    await memory.store("aqe/test/plan", {"owner": None})

    async def take_over(agent: int) -> bool:
        while True:
            entry = await memory.get_entry("aqe/test/plan")
            assert entry is not None
            try:
                await memory.store(
                    "aqe/test/plan",
                    {"owner": agent, "seen": entry.value},
                    expected_version=entry.version,
                )
                return True
            except VersionConflictError:
                await asyncio.sleep(0)

    report = await run_concurrently([lambda a=a: take_over(a) for a in range(20)], limit=20)
    report.raise_first()
    final = await memory.get_entry("aqe/test/plan")
    assert final is not None and final.version == 21
    owners = []
    value = final.value
    while value.get("owner") is not None:
        owners.append(value["owner"])
        value = value["seen"]
    assert sorted(owners) == list(range(20)), "every update built on the one before it"


async def test_mixed_workload(memory: Any) -> None:
    async def agent(n: int) -> None:
        await memory.store(f"aqe/test/mixed/{n}/result", {"n": n}, partition="results")
        await memory.increment("aqe/test/mixed/done")
        assert await memory.retrieve(f"aqe/test/mixed/{n}/result") == {"n": n}
        await memory.search(f"aqe/test/mixed/{n}/*")

    report = await run_concurrently([lambda n=n: agent(n) for n in range(50)], limit=25)
    report.raise_first()
    assert await memory.retrieve("aqe/test/mixed/done") == 50
    stats = await memory.get_stats()
    assert stats["partitions"]["results"] == 50


async def test_concurrent_store_many_batches(memory: Any) -> None:
    batches = [{f"aqe/test/b{b}/{i}": i for i in range(100)} for b in range(10)]
    report = await run_concurrently([lambda b=b: memory.store_many(b) for b in batches], limit=10)
    report.raise_first()
    assert (await memory.get_stats())["total_keys"] == 1000
