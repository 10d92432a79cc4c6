"""Test helpers: bounded concurrency, a live performance tracker and a server health check."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from lionagi_qe.config import mask_url
from lionagi_qe.testing.servers import check_postgres, check_redis

__all__ = [
    "ConcurrencyReport",
    "PerformanceTracker",
    "ServerHealth",
    "health_check",
    "run_concurrently",
    "run_sync",
]

T = TypeVar("T")


def run_sync(factory: Callable[[], Awaitable[T]], *, timeout: float = 300.0) -> T:
    """Run a coroutine to completion on a private loop in a fresh thread.

    For synchronous code (session fixtures, CLI helpers) that may be called while another
    event loop is running in this thread.
    """
    box: dict[str, Any] = {}

    async def main() -> T:
        return await factory()

    def target() -> None:
        try:
            box["result"] = asyncio.run(main())
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="aqe-run-sync", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"coroutine did not finish within {timeout} s")
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]


@dataclass
class ConcurrencyReport(Generic[T]):
    """What :func:`run_concurrently` saw: results in call order, and every exception."""

    results: list[T | None]
    errors: list[tuple[int, BaseException]]
    elapsed: float
    max_in_flight: int

    @property
    def ok(self) -> bool:
        """True if no operation raised."""
        return not self.errors

    def raise_first(self) -> None:
        """Re-raise the first exception, if any, chained into one message listing them all."""
        if self.errors:
            _, first = self.errors[0]
            summary = "; ".join(f"#{i}: {type(e).__name__}: {e}" for i, e in self.errors[:10])
            raise AssertionError(f"{len(self.errors)} operations failed: {summary}") from first


async def run_concurrently(
    operations: Iterable[Callable[[], Awaitable[T]]], *, limit: int = 10
) -> ConcurrencyReport[T]:
    """Run every operation with at most ``limit`` in flight; collect results and exceptions.

    Unlike ``asyncio.gather`` nothing is cancelled when one fails, and every exception is kept
    with the index of the operation that raised it.
    """
    if limit < 1:
        raise ValueError("limit must be >= 1")
    factories = list(operations)
    results: list[T | None] = [None] * len(factories)
    errors: list[tuple[int, BaseException]] = []
    gate = asyncio.Semaphore(limit)
    in_flight = 0
    peak = 0

    async def run(index: int, factory: Callable[[], Awaitable[T]]) -> None:
        nonlocal in_flight, peak
        async with gate:
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                results[index] = await factory()
            except Exception as exc:
                errors.append((index, exc))
            finally:
                in_flight -= 1

    started = time.perf_counter()
    await asyncio.gather(*(run(i, f) for i, f in enumerate(factories)))
    errors.sort(key=lambda pair: pair[0])
    return ConcurrencyReport(results, errors, time.perf_counter() - started, peak)


@dataclass
class _Series:
    samples: list[float] = field(default_factory=list)


class PerformanceTracker:
    """Collects timings per operation name; figures are readable at any time during a test."""

    def __init__(self) -> None:
        self._series: dict[str, _Series] = {}

    def record(self, name: str, seconds: float) -> None:
        """Add one timing."""
        self._series.setdefault(name, _Series()).samples.append(seconds)

    @contextmanager
    def track(self, name: str) -> Iterator[None]:
        """Time the ``with`` block (works around ``await`` too) under ``name``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.record(name, time.perf_counter() - started)

    def stats(self, name: str) -> dict[str, float]:
        """count, total, mean, p50, p99, max (seconds) and ops_per_second for ``name``."""
        samples = sorted(self._series.get(name, _Series()).samples)
        if not samples:
            return {"count": 0.0}
        total = sum(samples)
        return {
            "count": float(len(samples)),
            "total": total,
            "mean": total / len(samples),
            "p50": _percentile(samples, 50),
            "p99": _percentile(samples, 99),
            "max": samples[-1],
            "ops_per_second": len(samples) / total if total > 0 else math.inf,
        }

    def names(self) -> list[str]:
        """Every operation name seen so far."""
        return sorted(self._series)

    def report(self) -> str:
        """A small text table of every series."""
        lines = [f"{'operation':<28}{'count':>8}{'p50 ms':>10}{'p99 ms':>10}{'ops/s':>12}"]
        for name in self.names():
            s = self.stats(name)
            lines.append(
                f"{name:<28}{int(s['count']):>8}{s['p50'] * 1e3:>10.3f}"
                f"{s['p99'] * 1e3:>10.3f}{s['ops_per_second']:>12.1f}"
            )
        return "\n".join(lines)


def _percentile(sorted_samples: list[float], percent: float) -> float:
    rank = max(0, math.ceil(percent / 100 * len(sorted_samples)) - 1)
    return sorted_samples[rank]


@dataclass(frozen=True)
class ServerHealth:
    """One server's health: None problem means it answered; ``url`` has its password masked."""

    name: str
    url: str
    problem: str | None
    how_to_start: str

    @property
    def ok(self) -> bool:
        """True if the server answered."""
        return self.problem is None


_START_POSTGRES = (
    "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | head -n1) main start "
    "(Debian), or: docker compose -f docker-compose-test.yml up -d postgres"
)
_START_REDIS = (
    "redis-server --daemonize yes --port 6379 --save '' --appendonly no, "
    "or: docker compose -f docker-compose-test.yml up -d redis"
)


def _masked(url: str) -> str:
    return mask_url(url) or url


def health_check(postgres_url: str | None, redis_url: str | None) -> list[ServerHealth]:
    """Probe each given server; every unreachable one says why and how to start it."""
    report: list[ServerHealth] = []
    if postgres_url is not None:
        report.append(
            ServerHealth(
                "PostgreSQL", _masked(postgres_url), check_postgres(postgres_url), _START_POSTGRES
            )
        )
    if redis_url is not None:
        report.append(
            ServerHealth("Redis", _masked(redis_url), check_redis(redis_url), _START_REDIS)
        )
    return report
