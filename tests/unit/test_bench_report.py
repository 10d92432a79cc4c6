"""The benchmark's pure parts: summaries, ratios, §10 verdicts, the seed's table, option checks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lionagi_qe.bench import BenchOptions
from lionagi_qe.bench.harness import Harness, Section, Ticker, summarize
from lionagi_qe.bench.report import seed_rows, targets


def section(ours: list[float], raw: list[float], *, concurrent: bool = False) -> Section:
    s = Section("postgres", "store", "store", "ops", "asyncpg", concurrent=concurrent)
    s.series["ours"].latencies = ours
    s.series["raw"].latencies = raw
    s.series["ours"].items, s.series["raw"].items = len(ours), len(raw)
    s.series["ours"].wall, s.series["raw"].wall = sum(ours), sum(raw) / 2
    return s


def test_summary_ratio_is_time_per_item_ours_over_raw() -> None:
    summary = summarize(section([0.002] * 99 + [0.010], [0.001] * 100))
    assert summary["ours"]["ops_per_s"] == pytest.approx(1 / 0.00208)
    assert summary["ours"]["p50_ms"] == pytest.approx(2.0)
    assert summary["ours"]["p50_ms"] <= summary["ours"]["p99_ms"] <= 10.0
    assert summary["ratio"] == pytest.approx(2.08)
    assert summary["ratio_p50"] == pytest.approx(2.0)


def test_concurrent_summary_uses_wall_time() -> None:
    summary = summarize(section([0.01] * 10, [0.01] * 10, concurrent=True))
    assert summary["ours"]["ops_per_s"] == pytest.approx(100)
    assert summary["raw"]["ops_per_s"] == pytest.approx(200)
    assert summary["ratio"] == pytest.approx(2.0)


def result(backend: str, operation: str, ratio: float, **ours: Any) -> dict[str, Any]:
    side = {"ops_per_s": 1000.0, "p50_ms": 1.0, "p99_ms": 2.0, "busy_stall_ms": 1.0}
    return {
        "backend": backend,
        "operation": operation,
        "name": operation,
        "concurrent": operation.endswith("_concurrent"),
        "ratio": ratio,
        "ours": {**side, **ours},
        "raw": side,
    }


def test_targets_judge_the_section_10_promises() -> None:
    results = [
        result("postgres", "store", 1.2),
        result("postgres", "retrieve", 1.6),
        result("cached", "cache_hit", 1.0),
        result("postgres", "store_many", 2.0, ops_per_s=60_000.0),
        result("postgres", "search", 2.0, p50_ms=1.5),
        result("postgres", "store_concurrent", 0.5, ops_per_s=2000.0),
        result("postgres", "retrieve_concurrent", 1.5, ops_per_s=500.0, busy_stall_ms=12.0),
    ]
    verdicts = {t["target"]: t["passed"] for t in targets(results, 100_000)}
    assert verdicts == {
        "postgres store ≤ 1.3x raw": True,
        "postgres retrieve ≤ 1.5x raw": False,
        "cached cache hit ≤ 1.3x raw": True,
        "postgres store_many ≥ 50,000 entries/s": True,
        "postgres search 50 of 100,000 < 2 ms (p50)": True,
        "postgres store_concurrent: beats raw per-call": True,
        "postgres retrieve_concurrent: beats raw per-call": False,
        "event-loop stall ≤ 10 ms (ours, CPU-busy)": False,
    }


def test_seed_rows_only_for_backends_that_ran() -> None:
    rows = seed_rows([result("redis", "store", 1.0), result("redis", "retrieve", 1.0)])
    assert [(r["backend"], r["operation"], r["seed_throughput"]) for r in rows] == [
        ("redis", "Write", "100-500 ops/s"),
        ("redis", "Read", "200-1000 ops/s"),
    ]


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"backends": ("postgres", "oracle")}, "--backend must be among"),
        ({"backends": ()}, "--backend must be among"),
        ({"store_size": 1010}, "multiple of 50"),
        ({"store_size": 350}, "at least 400"),
        ({"ops": 0}, "at least 1"),
    ],
)
def test_option_checks(changes: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        BenchOptions.smoke_run(**changes).check()


async def test_interleave_alternates_and_stops_when_told() -> None:
    h = Harness(repeats=2)
    calls: list[str] = []

    async def ours(i: int) -> None:
        calls.append(f"ours{i}")

    async def raw(i: int) -> None:
        calls.append(f"raw{i}")

    async with h.ticking():
        await h.interleave(h.open("b", "op", "op", "twin"), 2, ours, raw)
    assert calls == ["ours0", "raw0", "ours1", "raw1", "raw0", "ours0", "raw1", "ours1"]
    h.stopping = True
    with pytest.raises(asyncio.CancelledError):
        await h.interleave(h.open("b", "op", "op", "twin"), 2, ours, raw)


def test_ticker_charges_a_late_tick_to_the_side_that_overlapped_it() -> None:
    ticker = Ticker()
    ticker.ticks = [(1.0, 1.0005, 0.0), (2.0, 2.050, 0.040)]
    s = Section("b", "op", "op", "ops", "twin", started=0.0, ended=3.0)
    s.intervals = [(1.9, 2.06, "ours"), (2.5, 2.6, "raw")]
    ticker.charge(s)
    assert s.stall["ours"] == pytest.approx(0.050)
    assert s.busy_stall["ours"] == pytest.approx(0.039)
    assert s.stall["raw"] == 0.0
    assert ticker.max_late(0.0, 3.0) == pytest.approx((0.050, 0.039))
