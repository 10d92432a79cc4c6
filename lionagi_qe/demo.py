"""A simulated QE fleet working through the memory store (``lionagi-qe demo``).

No language model is involved: the agents are small coroutines that coordinate only through the
store, the way a real fleet does. One run, with ``G`` test generators and ``R`` rounds:

- the **fleet commander** publishes a plan, hands it from ``planned`` to ``running`` with a
  compare-and-set (``expected_version``), waits for the counters to show every suite executed,
  then hands it to ``complete`` the same way;
- each **test generator** reads the plan (typed, ``as_type=FleetPlan``), writes one generated
  test suite per round and bumps a counter;
- two **test executors** find suites with a glob search, claim each with
  ``store(..., if_absent=True)`` (exactly one executor wins a claim), "run" the tests, store
  the results, bump the pass/fail counters with ``increment`` and merge their totals into a
  shared report with a compare-and-set retry loop;
- every agent keeps a heartbeat with a TTL; the executors sign off with a very short TTL, so by
  the time the summary is taken their heartbeats have expired and only the others are alive.

Key layout (everything under :data:`DEMO_PREFIX`, ``aqe/demo/``)::

    aqe/demo/fleet/plan                          plan; version grows with each hand-off
    aqe/demo/fleet/report                        executors' merged totals (CAS loop)
    aqe/demo/fleet/counters/{suites_generated,suites_executed,passed,failed}
    aqe/demo/<generator-id>/tests/<round>        a generated test suite
    aqe/demo/claims/<generator-id>/<round>       an executor's claim on that suite (TTL 60 s)
    aqe/demo/<executor-id>/results/<generator-id>/<round>
    aqe/demo/heartbeat/<agent-id>                heartbeats (TTL 30 s; executors 0.1 s at sign-off)

A run first deletes what a previous run left under ``aqe/demo/`` (and nothing else), so it can be
re-run any number of times; it leaves its own data for inspection
(``lionagi-qe memory ls aqe/demo/``) unless asked to clean up. Test outcomes depend only on the
seed, the number of generators and the number of rounds; which executor ran which suite, the
number of reads and of CAS retries depend on scheduling.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from lionagi_qe.backends.protocol import MemoryBackend
from lionagi_qe.errors import VersionConflictError

__all__ = [
    "DEMO_PREFIX",
    "AgentTally",
    "DemoSummary",
    "FleetPlan",
    "GeneratedSuite",
    "GeneratedTest",
    "clear_demo_data",
    "run_demo",
]

#: Every key the demo writes starts with this prefix; it deletes nothing outside it.
DEMO_PREFIX = "aqe/demo/"
#: The partition label of the demo's entries (counters live in ``default``: ``increment``
#: takes no partition).
DEMO_PARTITION = "demo"

_PLAN_KEY = f"{DEMO_PREFIX}fleet/plan"
_REPORT_KEY = f"{DEMO_PREFIX}fleet/report"
_COUNTERS = f"{DEMO_PREFIX}fleet/counters/"
_HEARTBEAT_TTL = 30.0
_SIGN_OFF_TTL = 0.1
_CLAIM_TTL = 60.0
_POLL_SECONDS = 0.01
_EXECUTORS = 2
_MODULES = ("auth", "billing", "search", "checkout", "inventory", "profile", "reports")
#: Chance that a generated test expects a wrong result (a "defect" the executor finds).
_DEFECT_RATE = 0.15


class FleetPlan(BaseModel):
    """The commander's plan: which generator covers which modules, for how many rounds."""

    status: str
    seed: int
    rounds: int
    assignments: dict[str, list[str]]
    executors: list[str]


class GeneratedTest(BaseModel):
    """One simulated test: does ``sum(inputs)`` equal ``expected``?"""

    name: str
    inputs: list[int]
    expected: int


class GeneratedSuite(BaseModel):
    """A suite of generated tests for one module."""

    generator: str
    round: int
    module: str
    tests: list[GeneratedTest]


@dataclass
class AgentTally:
    """What one agent did: its role, store calls, and for executors, what it ran."""

    agent_id: str
    role: str
    writes: int = 0
    reads: int = 0
    suites: int = 0
    passed: int = 0
    failed: int = 0
    claims_lost: int = 0
    cas_retries: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The tally as a JSON-ready dict."""
        return {
            "agent_id": self.agent_id,
            "role": self.role,
            "writes": self.writes,
            "reads": self.reads,
            "suites": self.suites,
            "passed": self.passed,
            "failed": self.failed,
            "claims_lost": self.claims_lost,
            "cas_retries": self.cas_retries,
        }


@dataclass
class DemoSummary:
    """The outcome of one demo run (see :meth:`as_dict` for the JSON form)."""

    seed: int
    rounds: int
    generators: int
    executors: int
    suites_generated: int
    suites_executed: int
    tests_passed: int
    tests_failed: int
    heartbeats_alive: list[str]
    heartbeats_expired: list[str]
    plan_version: int
    plan_status: str
    report: dict[str, Any]
    stats: dict[str, Any]
    elapsed_seconds: float
    removed_before: int
    agents: list[AgentTally] = field(default_factory=list)

    @property
    def entries_written(self) -> int:
        """Store calls that wrote (store, increment)."""
        return sum(agent.writes for agent in self.agents)

    @property
    def entries_read(self) -> int:
        """Entries read back (a search returning five entries counts five)."""
        return sum(agent.reads for agent in self.agents)

    def as_dict(self) -> dict[str, Any]:
        """The summary as one JSON-ready document."""
        return {
            "prefix": DEMO_PREFIX,
            "seed": self.seed,
            "rounds": self.rounds,
            "agents": {
                "total": len(self.agents),
                "commander": 1,
                "generators": self.generators,
                "executors": self.executors,
            },
            "suites": {"generated": self.suites_generated, "executed": self.suites_executed},
            "tests": {
                "total": self.tests_passed + self.tests_failed,
                "passed": self.tests_passed,
                "failed": self.tests_failed,
            },
            "entries": {"written": self.entries_written, "read": self.entries_read},
            "claims": {
                "won": self.suites_executed,
                "lost": sum(agent.claims_lost for agent in self.agents),
            },
            "cas_retries": sum(agent.cas_retries for agent in self.agents),
            "heartbeats": {
                "alive": len(self.heartbeats_alive),
                "expired": len(self.heartbeats_expired),
                "alive_agents": self.heartbeats_alive,
                "expired_agents": self.heartbeats_expired,
            },
            "plan": {"status": self.plan_status, "version": self.plan_version},
            "report": self.report,
            "stats": self.stats,
            "removed_before": self.removed_before,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "per_agent": [agent.as_dict() for agent in self.agents],
        }


async def clear_demo_data(memory: MemoryBackend) -> int:
    """Delete every live entry under :data:`DEMO_PREFIX`; return how many."""
    removed = 0
    for key in await memory.list_keys(DEMO_PREFIX):
        removed += await memory.delete(key)
    return removed


class _Fleet:
    """Shared state of one run: the store, the tallies and the plan's shape."""

    def __init__(self, memory: MemoryBackend, *, generators: int, rounds: int, seed: int) -> None:
        self.memory = memory
        self.seed = seed
        self.rounds = rounds
        self.commander = AgentTally("fleet-commander", "commander")
        self.generators = [
            AgentTally(f"test-gen-{index}", "test-generator") for index in range(1, generators + 1)
        ]
        self.executors = [
            AgentTally(f"test-exec-{index}", "test-executor") for index in range(1, _EXECUTORS + 1)
        ]

    @property
    def agents(self) -> list[AgentTally]:
        return [self.commander, *self.generators, *self.executors]

    @property
    def total_suites(self) -> int:
        return len(self.generators) * self.rounds

    async def heartbeat(self, agent: AgentTally, state: str, ttl: float = _HEARTBEAT_TTL) -> None:
        await self.memory.store(
            f"{DEMO_PREFIX}heartbeat/{agent.agent_id}",
            {"agent": agent.agent_id, "role": agent.role, "state": state},
            ttl=ttl,
            partition=DEMO_PARTITION,
        )
        agent.writes += 1

    async def counter(self, agent: AgentTally, name: str) -> int:
        value = await self.memory.retrieve(f"{_COUNTERS}{name}", default=0)
        agent.reads += 1
        return int(value)

    async def bump(self, agent: AgentTally, name: str, delta: int = 1) -> None:
        await self.memory.increment(f"{_COUNTERS}{name}", delta)
        agent.writes += 1

    async def hand_off(self, agent: AgentTally, status: str) -> int:
        """Move the plan to ``status`` with compare-and-set, retrying on a conflict."""

        def change(plan: dict[str, Any]) -> dict[str, Any]:
            return {**plan, "status": status}

        return await self.compare_and_set(agent, _PLAN_KEY, change)

    async def compare_and_set(
        self,
        agent: AgentTally,
        key: str,
        change: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> int:
        """Read-modify-write ``key`` with ``expected_version``; create it if it is absent."""
        while True:
            entry = await self.memory.get_entry(key)
            agent.reads += 1
            try:
                if entry is None:
                    version = await self.memory.store(
                        key, change({}), partition=DEMO_PARTITION, if_absent=True
                    )
                else:
                    version = await self.memory.store(
                        key,
                        change(dict(entry.value)),
                        partition=DEMO_PARTITION,
                        expected_version=entry.version,
                    )
            except VersionConflictError:
                agent.cas_retries += 1
                continue
            agent.writes += 1
            return version

    # -- the agents --------------------------------------------------------------------------

    async def run_commander(self) -> None:
        agent = self.commander
        rng = random.Random(f"{self.seed}:{agent.agent_id}")
        assignments = {
            generator.agent_id: sorted(rng.sample(_MODULES, k=min(self.rounds, len(_MODULES))))
            for generator in self.generators
        }
        plan = FleetPlan(
            status="planned",
            seed=self.seed,
            rounds=self.rounds,
            assignments=assignments,
            executors=[executor.agent_id for executor in self.executors],
        )
        await self.memory.store(_PLAN_KEY, plan, partition=DEMO_PARTITION)
        agent.writes += 1
        await self.heartbeat(agent, "planning")
        await self.hand_off(agent, "running")
        while await self.counter(agent, "suites_executed") < self.total_suites:
            await self.heartbeat(agent, "supervising")
            await asyncio.sleep(_POLL_SECONDS * 2)
        await self.hand_off(agent, "complete")
        await self.heartbeat(agent, "idle")

    async def _running_plan(self, agent: AgentTally) -> FleetPlan:
        while True:
            plan = await self.memory.retrieve(_PLAN_KEY, as_type=FleetPlan)
            agent.reads += 1
            if isinstance(plan, FleetPlan) and plan.status == "running":
                return plan
            await asyncio.sleep(_POLL_SECONDS)

    async def run_generator(self, agent: AgentTally) -> None:
        rng = random.Random(f"{self.seed}:{agent.agent_id}")
        await self.heartbeat(agent, "waiting for plan")
        plan = await self._running_plan(agent)
        modules = plan.assignments[agent.agent_id]
        for round_number in range(1, plan.rounds + 1):
            module = modules[(round_number - 1) % len(modules)]
            tests = []
            for index in range(1, rng.randint(3, 8) + 1):
                inputs = [rng.randint(-50, 50) for _ in range(rng.randint(2, 4))]
                expected = sum(inputs) + (rng.choice((-1, 1)) if rng.random() < _DEFECT_RATE else 0)
                tests.append(
                    GeneratedTest(name=f"test_{module}_{index}", inputs=inputs, expected=expected)
                )
            suite = GeneratedSuite(
                generator=agent.agent_id, round=round_number, module=module, tests=tests
            )
            await self.memory.store(
                f"{DEMO_PREFIX}{agent.agent_id}/tests/{round_number}",
                suite,
                partition=DEMO_PARTITION,
                metadata={"module": module},
            )
            agent.writes += 1
            agent.suites += 1
            await self.bump(agent, "suites_generated")
            await self.heartbeat(agent, f"generated round {round_number}")
            await asyncio.sleep(rng.uniform(0.0, 0.01))
        await self.heartbeat(agent, "done")

    async def run_executor(self, agent: AgentTally) -> None:
        await self.heartbeat(agent, "waiting for suites")
        await self._running_plan(agent)
        done: set[str] = set()
        suites_glob = f"{DEMO_PREFIX}test-gen-*/tests/*"
        while await self.counter(agent, "suites_executed") < self.total_suites:
            found = await self.memory.search(suites_glob)
            agent.reads += len(found)
            fresh = [key for key in found if key not in done]
            for key in fresh:
                done.add(key)
                await self._execute(agent, key, GeneratedSuite.model_validate(found[key]))
            if not fresh:
                await asyncio.sleep(_POLL_SECONDS)
        await self.compare_and_set(agent, _REPORT_KEY, lambda report: _merge(report, agent))
        # Sign off: a heartbeat that lapses almost at once, as a stopped agent's would.
        await self.heartbeat(agent, "signed off", ttl=_SIGN_OFF_TTL)

    async def _execute(self, agent: AgentTally, key: str, suite: GeneratedSuite) -> None:
        suffix = key.removeprefix(DEMO_PREFIX).replace("/tests/", "/")
        try:
            await self.memory.store(
                f"{DEMO_PREFIX}claims/{suffix}",
                {"by": agent.agent_id},
                ttl=_CLAIM_TTL,
                partition=DEMO_PARTITION,
                if_absent=True,
            )
        except VersionConflictError:
            agent.claims_lost += 1
            return
        agent.writes += 1
        failures = [test.name for test in suite.tests if sum(test.inputs) != test.expected]
        passed = len(suite.tests) - len(failures)
        await self.memory.store(
            f"{DEMO_PREFIX}{agent.agent_id}/results/{suffix}",
            {"suite": key, "passed": passed, "failed": len(failures), "failures": failures},
            partition=DEMO_PARTITION,
        )
        agent.writes += 1
        agent.suites += 1
        agent.passed += passed
        agent.failed += len(failures)
        await self.bump(agent, "passed", passed)
        await self.bump(agent, "failed", len(failures))
        await self.bump(agent, "suites_executed")
        await self.heartbeat(agent, f"ran {suffix}")


def _merge(report: dict[str, Any], agent: AgentTally) -> dict[str, Any]:
    merged = dict(report)
    merged[agent.agent_id] = {
        "suites": agent.suites,
        "passed": agent.passed,
        "failed": agent.failed,
    }
    return merged


async def run_demo(
    memory: MemoryBackend,
    *,
    generators: int = 3,
    rounds: int = 3,
    seed: int = 7,
    cleanup: bool = False,
    time_limit: float = 60.0,
    on_phase: Callable[[str], Awaitable[None] | None] | None = None,
) -> DemoSummary:
    """Run the simulated fleet on ``memory`` and return what happened.

    Args:
        memory: any backend; the demo touches only keys under :data:`DEMO_PREFIX`.
        generators: how many test-generator agents (besides the commander and two executors).
        rounds: suites each generator writes.
        seed: seeds every agent's random choices, so test outcomes are reproducible.
        cleanup: delete the run's entries after the summary is taken.
        time_limit: seconds the whole run may take before :class:`TimeoutError`.
        on_phase: called with a short description as each phase starts (progress display).

    Raises:
        ValueError: ``generators`` or ``rounds`` is below 1.
        TimeoutError: the fleet did not finish within ``time_limit``.
    """
    if generators < 1 or rounds < 1:
        raise ValueError("the demo needs at least one generator and one round")

    async def phase(text: str) -> None:
        if on_phase is not None:
            result = on_phase(text)
            if result is not None:
                await result

    started = time.perf_counter()
    await phase("clearing the previous run")
    removed_before = await clear_demo_data(memory)
    fleet = _Fleet(memory, generators=generators, rounds=rounds, seed=seed)
    await phase("fleet at work")
    async with asyncio.timeout(time_limit):
        await asyncio.gather(
            fleet.run_commander(),
            *(fleet.run_generator(agent) for agent in fleet.generators),
            *(fleet.run_executor(agent) for agent in fleet.executors),
        )
    await phase("waiting for signed-off heartbeats to lapse")
    await asyncio.sleep(_SIGN_OFF_TTL * 2)
    await phase("taking the summary")
    alive = await memory.search(f"{DEMO_PREFIX}heartbeat/*")
    alive_agents = sorted(key.rsplit("/", 1)[1] for key in alive)
    expired_agents = sorted(
        agent.agent_id for agent in fleet.agents if agent.agent_id not in alive_agents
    )
    plan_entry = await memory.get_entry(_PLAN_KEY)
    report = await memory.retrieve(_REPORT_KEY, default={})
    counters = await memory.retrieve_many(
        f"{_COUNTERS}{name}" for name in ("suites_generated", "suites_executed", "passed", "failed")
    )
    stats = await memory.get_stats()
    summary = DemoSummary(
        seed=seed,
        rounds=rounds,
        generators=generators,
        executors=len(fleet.executors),
        suites_generated=int(counters.get(f"{_COUNTERS}suites_generated", 0)),
        suites_executed=int(counters.get(f"{_COUNTERS}suites_executed", 0)),
        tests_passed=int(counters.get(f"{_COUNTERS}passed", 0)),
        tests_failed=int(counters.get(f"{_COUNTERS}failed", 0)),
        heartbeats_alive=alive_agents,
        heartbeats_expired=expired_agents,
        plan_version=plan_entry.version if plan_entry is not None else 0,
        plan_status=str(plan_entry.value.get("status")) if plan_entry is not None else "missing",
        report=report,
        stats={
            name: stats[name]
            for name in (
                "backend",
                "total_keys",
                "total_expired",
                "partitions",
                "size_bytes",
                "size_mb",
            )
            if name in stats
        },
        elapsed_seconds=0.0,
        removed_before=removed_before,
        agents=fleet.agents,
    )
    if cleanup:
        await phase("cleaning up")
        await clear_demo_data(memory)
    summary.elapsed_seconds = time.perf_counter() - started
    return summary
