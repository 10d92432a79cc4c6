"""Measurement machinery: interleaved sections, the stall ticker, summaries.

Every benchmark compares "ours" (the library) with "raw" (a hand-written driver twin doing the
same work) in one process and one run:

- :class:`Harness` opens and closes :class:`Section` s, interleaves the two sides call by call
  (:meth:`Harness.interleave`, the order flipping every repetition) or alternates whole blocks of
  concurrent tasks (:meth:`Harness.blocks`);
- a :class:`Ticker` (1 ms period) runs throughout; each late tick is charged to whichever side's
  calls overlapped the delay, as wall-clock lateness and as the CPU-busy part of it;
- :func:`summarize` turns a section into rates, p50/p99 latencies and ours/raw ratios.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gc
import json
import signal
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast

from sqlalchemy import Executable
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

__all__ = [
    "SIDES",
    "BenchInterrupted",
    "CompiledStatement",
    "Harness",
    "Section",
    "Side",
    "Ticker",
    "dumps",
    "payload",
    "prefix_upper",
    "summarize",
]

T = TypeVar("T")
Side = Literal["ours", "raw"]
SIDES: tuple[Side, Side] = ("ours", "raw")

Op = Callable[[int], Awaitable[object]]
TaskOp = Callable[[Side, int, int, int], Awaitable[object]]  # (side, rep, task, j)
Log = Callable[[str], None]


def dumps(value: Any) -> str:
    """Compact JSON, as the library writes it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def payload(i: int) -> dict[str, Any]:
    """The benchmark's payload number ``i`` (about 100 bytes of JSON)."""
    return {"agent": f"agent-{i % 50}", "step": i, "ok": True, "notes": "x" * 48}


def prefix_upper(prefix: str) -> str:
    """The smallest string above every string starting with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


@dataclass
class Series:
    """Per-call latencies (seconds) of one side, plus wall time for concurrent sections."""

    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    items: int = 0


@dataclass
class Section:
    """One operation measured on both sides."""

    backend: str
    operation: str
    name: str
    unit: str  # "ops", "entries", "updates", "jobs"
    twin: str
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
            self._task = None

    async def _run(self) -> None:
        while True:
            cpu = time.process_time()
            due = time.perf_counter() + self.period
            await asyncio.sleep(self.period)
            woke = time.perf_counter()
            self.ticks.append((due, woke, time.process_time() - cpu))

    def max_late(self, started: float, ended: float) -> tuple[float, float]:
        """(wall, CPU-busy) worst lateness of the ticks due in [started, ended], seconds."""
        worst = busy = 0.0
        first = bisect.bisect_left(self.ticks, (started, 0.0, 0.0))
        for due, woke, cpu in self.ticks[first:]:
            if due > ended:
                break
            late = woke - due
            worst = max(worst, late)
            busy = max(busy, min(late, max(cpu - self.period, 0.0)))
        return worst, busy

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


class BenchInterrupted(KeyboardInterrupt):
    """The run was interrupted (Ctrl-C or SIGTERM); everything it created has been removed."""


def _no_log(message: str) -> None:
    return None


@dataclass
class Harness:
    """The run's sections, the stall ticker and the repetition count."""

    repeats: int
    log: Log = _no_log
    ticker: Ticker = field(default_factory=Ticker)
    sections: list[Section] = field(default_factory=list)
    #: Set by a signal handler: the next call raises CancelledError (a driver that swallows
    #: a task's cancellation cannot keep an interrupted run going).
    stopping: bool = False

    def check(self) -> None:
        """Raise CancelledError once the run has been told to stop."""
        if self.stopping:
            raise asyncio.CancelledError

    def open(
        self,
        backend: str,
        operation: str,
        name: str,
        twin: str,
        unit: str = "ops",
        *,
        items_per_call: int = 1,
        concurrent: bool = False,
    ) -> Section:
        """Collect garbage, log ``name`` and start a section.

        What survives the collection (earlier sections' samples, this run's fixture data) is
        frozen: a full collection during the section then walks only what the section itself
        allocated, not a heap that grows with every section already run (in one run of all four
        backends that re-walking showed up as 48-54 ms stalls in the last sections, 6-10 ms
        without it). Both sides alike; :func:`~lionagi_qe.bench.runner.run_bench` unfreezes at the
        end.
        """
        gc.collect()
        gc.freeze()
        self.log(f"{backend}: {name}")
        section = Section(
            backend,
            operation,
            name,
            unit,
            twin,
            items_per_call=items_per_call,
            concurrent=concurrent,
        )
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
                    self.check()
                    call = op(index)  # builds the call's payload (not part of the call)
                    # Let a tick that came due while the payload was built fire now, so the
                    # building is not charged to the call as an event-loop stall.
                    await asyncio.sleep(0)
                    await section.timed(side, call, items)
        self.close(section)

    async def blocks(
        self, section: Section, per_task: int, op: TaskOp, *, tasks: int, items: int = 1
    ) -> None:
        """``repeats`` x (``tasks`` tasks x ``per_task`` calls), one side's block after the other's.

        The order flips every repetition; each call's latency is kept, and the block's wall time
        gives the section's rate. Then the section is closed.
        """
        for rep in range(self.repeats):
            for side in SIDES if rep % 2 == 0 else SIDES[::-1]:

                async def worker(task: int, side: Side = side, rep: int = rep) -> None:
                    for j in range(per_task):
                        self.check()
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

    async def guarded(self, work: Awaitable[T]) -> T:
        """Await ``work`` with Ctrl-C and SIGTERM stopping it cleanly.

        A signal makes :meth:`check` refuse the next call and cancels the running task, so the
        run's ``finally`` blocks remove what it created; then :class:`BenchInterrupted` is raised.
        """
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def stop() -> None:
            self.stopping = True
            if task is not None:
                task.cancel()

        installed = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, stop)
                installed.append(signum)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread, or no signal support: Ctrl-C still cancels the run
        try:
            return await work
        except asyncio.CancelledError:
            if self.stopping:
                raise BenchInterrupted from None
            raise
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)

    @contextlib.asynccontextmanager
    async def ticking(self) -> AsyncIterator[None]:
        """Run the stall ticker for the duration of the block."""
        self.ticker.start()
        try:
            yield
        finally:
            await self.ticker.stop()


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0.01 steps, inclusive method) of sorted values."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    cuts = statistics.quantiles(sorted_values, n=100, method="inclusive")
    return cuts[round(q * 100) - 1]


def summarize(section: Section) -> dict[str, Any]:
    """ops/s (entries/s, updates/s…), p50/p99 ms and the ours/raw ratios of one section.

    ``ratio`` is ours' time per item over raw's (mean per call; for concurrent sections the
    inverse of throughput): 1.0 is parity, 2.0 twice as slow, 0.5 twice as fast.
    """
    sides: dict[str, dict[str, float]] = {}
    for side in SIDES:
        series = section.series[side]
        lat = sorted(series.latencies)
        mean = statistics.fmean(lat)
        rate = series.items / series.wall if section.concurrent else section.items_per_call / mean
        sides[side] = {
            "calls": len(lat),
            "ops_per_s": rate,
            "mean_ms": mean * 1e3,
            "p50_ms": quantile(lat, 0.50) * 1e3,
            "p99_ms": quantile(lat, 0.99) * 1e3,
            "stall_ms": section.stall.get(side, 0.0) * 1e3,
            "busy_stall_ms": section.busy_stall.get(side, 0.0) * 1e3,
        }
    ours, raw = sides["ours"], sides["raw"]
    return {
        "backend": section.backend,
        "operation": section.operation,
        "name": section.name,
        "raw_twin": section.twin,
        "unit": f"{section.unit}/s",
        "items_per_call": section.items_per_call,
        "concurrent": section.concurrent,
        "ours": ours,
        "raw": raw,
        "ratio": raw["ops_per_s"] / ours["ops_per_s"],
        "ratio_p50": ours["p50_ms"] / raw["p50_ms"],
        "stall_ms": ours["stall_ms"],
        "stall_between_ms": section.stall.get("between", 0.0) * 1e3,
    }


@dataclass(frozen=True)
class CompiledStatement:
    """A library statement as driver SQL, with its positional parameter order."""

    sql: str
    names: tuple[str, ...]
    defaults: dict[str, Any]

    @classmethod
    def of(cls, statement: Executable, dialect: Dialect) -> CompiledStatement:
        """Compile ``statement`` exactly as SQLAlchemy would send it through ``dialect``."""
        compiled = cast(ClauseElement, statement).compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        names = tuple(compiled.positiontup or ())
        return cls(compiled.string, names, dict(compiled.params))

    def args(self, **values: Any) -> list[Any]:
        """Positional arguments: ``values`` by name, the statement's own literals otherwise."""
        unknown = set(values) - set(self.names)
        if unknown:
            raise KeyError(f"statement has no parameters {sorted(unknown)}: {self.sql[:80]}")
        return [values[name] if name in values else self.defaults[name] for name in self.names]
