"""Simulated QE agents for the fleet scenarios: plain coroutines over the public API, no model.

Each agent keeps nothing that matters in process memory: what it plans, executes, reports,
learns or is doing lives in the store, so another agent (or a new instance of the same one)
picks it up from there. The agents use only ``lionagi_qe``'s public API: ``AgentMemory``,
``WorkQueue``, the memory backends and their typed errors.
"""

from __future__ import annotations

import asyncio
import enum
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel

from lionagi_qe import (
    AgentMemory,
    Job,
    MemoryBackend,
    MemoryEntry,
    PersistenceError,
    VersionConflictError,
    WorkQueue,
)

__all__ = [
    "CaseResult",
    "Executor",
    "FleetAgent",
    "FleetCommander",
    "HeartbeatAgent",
    "Outcome",
    "Planner",
    "QueueConsumer",
    "Reporter",
    "ResilientAgent",
    "SuiteResult",
    "pipeline_key",
]


class Outcome(enum.StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"


class CaseResult(BaseModel):
    name: str
    outcome: Outcome
    duration: float


class SuiteResult(BaseModel):
    """What an executor hands to a reporter: typed, with values JSON has no native form for."""

    run_id: uuid.UUID
    agent: str
    finished_at: datetime
    coverage: Decimal
    cases: list[CaseResult]
    tags: tuple[str, ...]

    @property
    def passed(self) -> int:
        return sum(case.outcome is Outcome.PASSED for case in self.cases)


def pipeline_key(run: str) -> str:
    """The shared document a run's stage is handed off through (compare-and-set)."""
    return f"aqe/pipeline/{run}"


def simulate_case(name: str) -> CaseResult:
    """A deterministic 'test run': the outcome depends only on the test's name."""
    weight = sum(name.encode())
    outcome = (Outcome.PASSED, Outcome.PASSED, Outcome.FAILED, Outcome.SKIPPED)[weight % 4]
    return CaseResult(name=name, outcome=outcome, duration=(weight % 97) / 100)


class Planner:
    """Writes a plan and opens the run's pipeline document (only one planner may open it)."""

    def __init__(self, backend: MemoryBackend, agent_id: str = "planner") -> None:
        self.backend = backend
        self.memory = AgentMemory(backend, agent_id)

    async def plan(self, run: str, tests: list[str]) -> int:
        """Store the plan; return the pipeline document's version (1).

        Raises:
            VersionConflictError: another planner already opened this run.
        """
        await self.memory.store_result(f"plan/{run}", {"tests": tests})
        return await self.backend.store(
            pipeline_key(run),
            {"stage": "planned", "plan": self.memory.key_for(f"plan/{run}"), "owner": None},
            partition="pipeline",
            if_absent=True,
        )


class Executor:
    """Takes a planned run by compare-and-set, runs its tests, hands the results on."""

    def __init__(self, backend: MemoryBackend, agent_id: str) -> None:
        self.backend = backend
        self.agent_id = agent_id
        self.memory = AgentMemory(backend, agent_id)

    async def take(self, run: str, seen: MemoryEntry | None = None) -> int | None:
        """The pipeline's new version if this executor took the run, None if another did.

        ``seen``: the pipeline entry as this executor last read it (read now if not given).
        """
        entry = seen if seen is not None else await self.backend.get_entry(pipeline_key(run))
        if entry is None or entry.value["stage"] != "planned":
            return None
        try:
            return await self.backend.store(
                pipeline_key(run),
                {**entry.value, "stage": "executing", "owner": self.agent_id},
                partition="pipeline",
                expected_version=entry.version,
            )
        except VersionConflictError:
            return None

    async def execute(self, run: str, version: int) -> int:
        """Run the plan of a run this executor took at ``version``; return the new version."""
        pipeline = await self.backend.retrieve(pipeline_key(run))
        plan = await self.memory.retrieve_context(pipeline["plan"])
        result = SuiteResult(
            run_id=uuid.uuid5(uuid.NAMESPACE_URL, run),
            agent=self.agent_id,
            finished_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
            coverage=Decimal("87.25"),
            cases=[simulate_case(name) for name in plan["tests"]],
            tags=("fleet", run),
        )
        await self.memory.store_result(f"results/{run}", result)
        return await self.backend.store(
            pipeline_key(run),
            {**pipeline, "stage": "executed", "results": self.memory.key_for(f"results/{run}")},
            partition="pipeline",
            expected_version=version,
        )


class Reporter:
    """Reads executed results (typed) and closes the run."""

    def __init__(self, backend: MemoryBackend, agent_id: str = "reporter") -> None:
        self.backend = backend
        self.memory = AgentMemory(backend, agent_id)

    async def report(self, run: str) -> dict[str, Any]:
        entry = await self.backend.get_entry(pipeline_key(run))
        assert entry is not None and entry.value["stage"] == "executed", entry
        result = await self.backend.retrieve(entry.value["results"], as_type=SuiteResult)
        assert isinstance(result, SuiteResult)
        report = {
            "run": run,
            "executor": result.agent,
            "passed": result.passed,
            "total": len(result.cases),
            "coverage": str(result.coverage),
        }
        await self.memory.store_result(f"report/{run}", report)
        await self.backend.store(
            pipeline_key(run),
            {**entry.value, "stage": "reported"},
            partition="pipeline",
            expected_version=entry.version,
        )
        return report


class FleetCommander:
    """Publishes the fleet plan and aggregates per-fleet status from what the fleets wrote."""

    def __init__(self, backend: MemoryBackend) -> None:
        self.backend = backend
        self.memory = AgentMemory(backend, "fleet-commander")

    async def publish(self, fleets: dict[str, list[str]]) -> None:
        await self.memory.store_result("plan", {"fleets": fleets})

    async def fleet_status(self, fleet: str) -> dict[str, Any]:
        """Status of one fleet's agents: agent id → status document."""
        prefix = f"aqe/fleet/{fleet}/status/"
        found = await self.backend.search(prefix + "*")
        return {key[len(prefix) :]: value for key, value in found.items()}

    async def overview(self) -> dict[str, dict[str, int]]:
        """Per fleet: agents reporting, tasks done (the counter), and how many finished."""
        plan = await self.memory.get_memory("plan")
        summary: dict[str, dict[str, int]] = {}
        for fleet in plan["fleets"]:
            statuses = await self.fleet_status(fleet)
            done = await self.backend.retrieve(f"aqe/fleet/{fleet}/done", default=0)
            summary[fleet] = {
                "agents": len(statuses),
                "tasks_done": int(done),
                "finished": sum(s["state"] == "finished" for s in statuses.values()),
            }
        return summary


class FleetAgent:
    """One agent of a fleet: does its tasks, reports its status and counts what it did."""

    def __init__(self, backend: MemoryBackend, fleet: str, agent_id: str) -> None:
        self.backend = backend
        self.fleet = fleet
        self.agent_id = agent_id

    @property
    def status_key(self) -> str:
        return f"aqe/fleet/{self.fleet}/status/{self.agent_id}"

    async def run(self, tasks: int) -> None:
        for task in range(tasks):
            await self.backend.store(
                self.status_key,
                {"state": "working", "task": task},
                partition=f"fleet-{self.fleet}",
            )
            await self.backend.increment(f"aqe/fleet/{self.fleet}/done")
            await asyncio.sleep(0)
        await self.backend.store(
            self.status_key, {"state": "finished", "task": tasks}, partition=f"fleet-{self.fleet}"
        )


class HeartbeatAgent:
    """Writes ``aqe/heartbeat/{agent}`` with a TTL every round."""

    def __init__(self, backend: MemoryBackend, agent_id: str, ttl: float) -> None:
        self.backend = backend
        self.agent_id = agent_id
        self.ttl = ttl

    @property
    def key(self) -> str:
        return f"aqe/heartbeat/{self.agent_id}"

    async def beat(self, round_number: int) -> int:
        return await self.backend.store(
            self.key,
            {"agent": self.agent_id, "round": round_number},
            ttl=self.ttl,
            partition="heartbeats",
        )


@dataclass
class QueueConsumer:
    """A work-queue consumer: retries what fails, records each completion in the memory."""

    queue: WorkQueue
    memory: MemoryBackend
    name: str
    completions: Counter[str]
    holding: set[str]
    overlaps: list[str]
    lease: float = 30.0
    claimed: int = 0
    failed: int = 0

    async def work_one(self, job: Job) -> None:
        if job.id in self.holding:
            self.overlaps.append(job.id)  # two consumers hold the same job at once
        self.holding.add(job.id)
        try:
            await asyncio.sleep(0)
            if job.attempts <= job.payload["flaky"]:
                # A simulated failure: the job goes back to the queue for a retry.
                self.failed += 1
                await self.queue.fail(job, f"flaky attempt {job.attempts} by {self.name}")
                return
            result = {"n": job.payload["n"], "square": job.payload["n"] ** 2, "by": self.name}
            # if_absent: a second completion of one job would raise VersionConflictError.
            await self.memory.store(
                f"aqe/jobs/{job.id}",
                {**result, "attempts": job.attempts},
                partition="job_results",
                if_absent=True,
            )
            await self.queue.complete(job, result)
            self.completions[job.id] += 1
            await self.memory.increment("aqe/jobs-done")
        finally:
            self.holding.discard(job.id)

    async def run(self, total: int, deadline: float) -> None:
        """Work until ``total`` jobs are done (counted in the memory) or the deadline passes."""
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            job = await self.queue.claim(self.name, lease=self.lease)
            if job is None:
                if await self.memory.retrieve("aqe/jobs-done", default=0) >= total:
                    return
                await asyncio.sleep(0.02)  # idle: a lapsed lease may free a job soon
                continue
            self.claimed += 1
            await self.work_one(job)


@dataclass
class ResilientAgent:
    """An agent that records a failed task and keeps going with the next ones."""

    memory: AgentMemory
    journal: MemoryBackend | None = None
    failures: list[tuple[str, type[PersistenceError]]] = field(default_factory=list)
    done: list[str] = field(default_factory=list)

    async def run(self, tasks: dict[str, Any]) -> None:
        for name, value in tasks.items():
            try:
                await self.memory.store_result(name, value)
            except PersistenceError as exc:
                self.failures.append((name, type(exc)))
                if self.journal is not None:
                    await self.journal.store(
                        f"aqe/failures/{self.memory.agent_id}/{name}",
                        {"error": type(exc).__name__, "message": str(exc)[:200]},
                        partition="failures",
                    )
                continue
            self.done.append(name)
