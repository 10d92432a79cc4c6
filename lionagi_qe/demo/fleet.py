"""The simulated QE fleet: agents that coordinate through the WorkQueue and memory, and learn.

Four roles, each a coroutine that talks to the others only through the store:

- the **fleet commander** publishes the plan and hands it on with compare-and-set
  (``planned`` → ``running`` → one version per round → ``complete``); each round it enqueues one
  generation job per module slot (dedupe keys make a re-enqueue harmless) and waits for the
  round to be learned before the next one, so every round's choices use the previous rounds'
  Q-values;
- **test generators** claim generation jobs, pick a test strategy epsilon-greedily from the
  ``test-generator`` Q-values of the module's kind, write the suite into memory
  (:class:`~lionagi_qe.AgentMemory`), extend their lease with a job heartbeat, enqueue an
  execution job and complete theirs;
- **test executors** claim execution jobs and run the suites; a suite sometimes breaks its
  environment (more often for some strategies), so the job fails and is retried, and after its
  last attempt it is ``dead``; results go to memory, counters are bumped with ``increment``
  only after ``complete`` succeeded, and every outcome becomes an analysis job;
- the **coverage analyser** claims analysis jobs, merges the branches reached into a coverage
  map per module (compare-and-set), turns each outcome into a reward (``record_reward``,
  ``record_pattern_use``) and, once a round is complete, applies the round's temporal-difference
  updates in one ``batch_update_q_values`` call, in job order, and stores the best strategy per
  kind as a learned pattern.

Every agent has a learning session (started and ended) and a heartbeat entry with a TTL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from lionagi_qe.backends.protocol import MemoryBackend
from lionagi_qe.coordination import AgentMemory, Job, WorkQueue
from lionagi_qe.demo import simulation as sim
from lionagi_qe.demo.summary import AgentTally, DemoSummary
from lionagi_qe.errors import InvalidArgumentError, SchemaMissingError, VersionConflictError
from lionagi_qe.learning.db_manager import DatabaseManager

__all__ = ["DEFAULT_FLEET", "STAGES", "Progress", "clear_demo_data", "fleet_prefixes", "run_demo"]

logger = logging.getLogger(__name__)

DEFAULT_FLEET = "demo"
#: The queues' stages, in pipeline order.
STAGES = ("generate", "execute", "analyse")
#: Generation jobs per round for each test generator.
JOBS_PER_GENERATOR = 2
MAX_ATTEMPTS = 3
#: The learning rate of a pair's n-th update is ``max(MIN_ALPHA, 1 / n)``: a running mean of
#: its rewards at first (no bias towards the most-tried action), then a recency-weighted one.
MIN_ALPHA = 0.2
GAMMA = 0.9
_LEASE = 30.0
_HEARTBEAT_TTL = 30.0
#: Idle agents poll their queue after this long, doubling up to ``_POLL_MAX`` while idle: on
#: SQLite every claim takes the write lock, so idle polling must not crowd out real work.
_POLL = 0.005
_POLL_MAX = 0.08
_PARTITION = "demo"
_PRIORITY = {"api": 2, "data": 1, "ui": 0}
_COUNTERS = (
    "suites_generated",
    "suites_executed",
    "tests_passed",
    "tests_failed",
    "retries",
    "dead",
    "reward_micros",
)

#: ``on_progress(stage, done, total)``: a stage finished one more job (done == 0 at the start).
Progress = Callable[[str, int, int], None]


def _check_fleet(fleet: str) -> str:
    if not (
        isinstance(fleet, str)
        and 0 < len(fleet) <= 40
        and all(ch.isascii() and (ch.isalnum() or ch == "-") for ch in fleet)
        and fleet != "patterns"
    ):
        raise InvalidArgumentError("fleet must be 1-40 letters, digits or '-' (not 'patterns')")
    return fleet


def fleet_prefixes(fleet: str = DEFAULT_FLEET) -> tuple[str, ...]:
    """Every key prefix a fleet writes: its own, its agents' and its learned patterns'.

    Agents' ids are ``{fleet}.{role}-{n}`` (a fleet name has no ``.``), so no prefix reaches
    another fleet's keys.
    """
    return (f"aqe/{fleet}/", f"aqe/{fleet}.", f"aqe/patterns/{fleet}.")


def _queues(database: DatabaseManager, fleet: str) -> dict[str, WorkQueue]:
    return {stage: WorkQueue(database, f"{fleet}:{stage}") for stage in STAGES}


async def clear_demo_data(
    memory: MemoryBackend, database: DatabaseManager, fleet: str = DEFAULT_FLEET
) -> dict[str, int]:
    """Delete what a run of ``fleet`` left: its entries and its queues' jobs (not its learning).

    Returns ``{"entries": n, "jobs": m}``.
    """
    entries = 0
    for prefix in fleet_prefixes(_check_fleet(fleet)):
        for key in await memory.list_keys(prefix):
            entries += await memory.delete(key)
    jobs = 0
    for queue in _queues(database, fleet).values():
        jobs += await queue.clear()
    return {"entries": entries, "jobs": jobs}


async def _check_schema(database: DatabaseManager) -> None:
    """SQLite (the embedded default) upgrades itself; PostgreSQL must be at head already."""
    from lionagi_qe.db import migrate
    from lionagi_qe.db.translate import SCHEMA_HINT

    if database.dialect == "sqlite":
        await migrate.upgrade(database.engine)
    elif await migrate.current(database.engine) != migrate.head():
        raise SchemaMissingError(SCHEMA_HINT)


@dataclass
class _Stage:
    total: int
    done: int = 0
    completed_ids: list[str] = field(default_factory=list)


class _Fleet:
    """One run: the store, the queues, the agents' tallies and the run's shape."""

    def __init__(
        self,
        memory: MemoryBackend,
        database: DatabaseManager,
        *,
        fleet: str,
        generators: int,
        executors: int,
        rounds: int,
        seed: int,
        run_number: int,
        on_progress: Progress | None,
    ) -> None:
        self.memory = memory
        self.db = database
        self.fleet = fleet
        self.seed = seed
        self.rounds = rounds
        self.run_number = run_number
        self.per_round = JOBS_PER_GENERATOR * generators
        self.queues = _queues(database, fleet)
        self.on_progress = on_progress
        self.stages = {stage: _Stage(total=rounds * self.per_round) for stage in STAGES}
        self.prefix = f"aqe/{fleet}/"
        self.plan_key = f"{self.prefix}fleet/plan"
        self.report_key = f"{self.prefix}fleet/report"
        self.counters = f"{self.prefix}fleet/counters/"
        self.commander = AgentTally(f"{fleet}.commander", "fleet-commander")
        self.generators = [
            AgentTally(f"{fleet}.test-gen-{n}", "test-generator") for n in range(1, generators + 1)
        ]
        self.executors = [
            AgentTally(f"{fleet}.test-exec-{n}", "test-executor") for n in range(1, executors + 1)
        ]
        self.analyser = AgentTally(f"{fleet}.coverage-analyzer", "coverage-analyzer")
        self.pending: dict[int, list[dict[str, Any]]] = defaultdict(list)
        self.q_updates = 0

    @property
    def agents(self) -> list[AgentTally]:
        return [self.commander, *self.generators, *self.executors, self.analyser]

    def state_of(self, kind: str) -> str:
        return f"{self.fleet}:{kind}"

    # -- shared moves ----------------------------------------------------------------------

    def advance(self, stage: str, job: Job | None) -> None:
        progress = self.stages[stage]
        progress.done += 1
        if job is not None:
            progress.completed_ids.append(job.id)
        if self.on_progress is not None:
            self.on_progress(stage, progress.done, progress.total)

    async def heartbeat(self, agent: AgentTally, state: str) -> None:
        await self.memory.store(
            f"{self.prefix}heartbeat/{agent.agent_id.split('.', 1)[1]}",
            {"agent": agent.agent_id, "role": agent.role, "state": state},
            ttl=_HEARTBEAT_TTL,
            partition=_PARTITION,
        )
        agent.writes += 1

    async def bump(self, agent: AgentTally, name: str, delta: int = 1) -> None:
        await self.memory.increment(f"{self.counters}{name}", delta)
        agent.writes += 1

    async def compare_and_set(
        self, agent: AgentTally, key: str, change: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> int:
        """Read-modify-write ``key`` with ``expected_version``; create it if it is absent."""
        while True:
            entry = await self.memory.get_entry(key)
            agent.reads += 1
            try:
                if entry is None:
                    version = await self.memory.store(
                        key, change({}), partition=_PARTITION, if_absent=True
                    )
                else:
                    version = await self.memory.store(
                        key,
                        change(dict(entry.value)),
                        partition=_PARTITION,
                        expected_version=entry.version,
                    )
            except VersionConflictError:
                agent.cas_retries += 1
                continue
            agent.writes += 1
            return version

    async def sign_report(self, agent: AgentTally) -> int:
        """Merge an executor's totals into the fleet report."""

        def merge(report: dict[str, Any]) -> dict[str, Any]:
            return {**report, agent.agent_id: agent.report()}

        return await self.compare_and_set(agent, self.report_key, merge)

    async def hand_off(self, agent: AgentTally, **changes: Any) -> int:
        return await self.compare_and_set(agent, self.plan_key, lambda plan: {**plan, **changes})

    async def plan_status(self, agent: AgentTally) -> str | None:
        plan = await self.memory.retrieve(self.plan_key)
        agent.reads += 1
        return plan.get("status") if isinstance(plan, dict) else None

    async def consume(
        self, agent: AgentTally, stage: str, handle: Callable[[AgentTally, Job], Awaitable[None]]
    ) -> None:
        """Claim and handle jobs of ``stage`` until the plan is complete."""
        queue = self.queues[stage]
        session = await self.db.start_session(
            agent.role, f"{self.fleet} run {self.run_number} {agent.agent_id}", "demo"
        )
        agent.session_id = session
        await self.heartbeat(agent, "ready")
        pause = _POLL
        while True:
            job = await queue.claim(agent.agent_id, lease=_LEASE)
            if job is None:
                agent.idle_polls += 1
                if await self.plan_status(agent) == "complete":
                    break
                await asyncio.sleep(pause)
                pause = min(pause * 2, _POLL_MAX)
                continue
            pause = _POLL
            agent.claims += 1
            await handle(agent, job)
        await self.heartbeat(agent, "signed off")
        await self.db.end_session(session, "completed", total_reward=round(agent.reward, 6))

    # -- the agents ------------------------------------------------------------------------

    async def run_commander(self) -> None:
        agent = self.commander
        session = await self.db.start_session(
            agent.role, f"{self.fleet} run {self.run_number} {agent.agent_id}", "demo"
        )
        agent.session_id = session
        plan = {
            "status": "planned",
            "fleet": self.fleet,
            "seed": self.seed,
            "rounds": self.rounds,
            "round": 0,
            "jobs_per_round": self.per_round,
            "generators": [g.agent_id for g in self.generators],
            "executors": [e.agent_id for e in self.executors],
        }
        await self.memory.store(self.plan_key, plan, partition=_PARTITION)
        agent.writes += 1
        await self.heartbeat(agent, "planning")
        await self.hand_off(agent, status="running")
        generate = self.queues["generate"]
        for round_number in range(1, self.rounds + 1):
            for index in range(self.per_round):
                module = sim.module_for(round_number, index, self.per_round)
                await generate.enqueue(
                    {"round": round_number, "index": index, "module": module},
                    priority=_PRIORITY[sim.MODULES[module]],
                    dedupe_key=f"generate:{round_number}:{index}",
                    max_attempts=MAX_ATTEMPTS,
                )
                agent.enqueued += 1
            await self.hand_off(agent, round=round_number)
            await self.heartbeat(agent, f"supervising round {round_number}")
            learned = f"{self.prefix}fleet/rounds/{round_number}"
            pause = _POLL
            while not await self.memory.exists(learned):
                agent.reads += 1
                await asyncio.sleep(pause)
                # A read, not a claim: it may poll more often than the idle consumers.
                pause = min(pause * 2, _POLL_MAX / 4)
        await self.hand_off(agent, status="complete")
        await self.heartbeat(agent, "signed off")
        total = await self.memory.retrieve(f"{self.counters}reward_micros", default=0)
        await self.db.end_session(session, "completed", total_reward=total / 1e6)

    async def generate(self, agent: AgentTally, job: Job) -> None:
        round_number, index, module = (job.payload[k] for k in ("round", "index", "module"))
        kind = sim.MODULES[module]
        actions = await self.db.get_all_q_values_for_state("test-generator", self.state_of(kind))
        agent.reads += 1
        q_values = {row["action_hash"]: row["q_value"] for row in actions}
        visits = sum(row["visit_count"] for row in actions)
        strategy, explored = sim.choose_strategy(
            q_values, visits, sim.rng(self.seed, "choose", round_number, index)
        )
        agent.explored += explored
        suite = sim.generate_suite(
            self.seed,
            round_number,
            index,
            module,
            strategy,
            explored=explored,
            generator=agent.agent_id,
        )
        memory = AgentMemory(self.memory, agent.agent_id)
        name = f"suites/{round_number}/{index}"
        await memory.store_result(name, suite, partition=_PARTITION)
        agent.writes += 1
        # Writing the suite took a while in a real fleet: keep the claim alive.
        job = await self.queues["generate"].heartbeat(job, lease=_LEASE)
        await self.queues["execute"].enqueue(
            {
                "round": round_number,
                "index": index,
                "module": module,
                "kind": kind,
                "strategy": strategy,
                "suite": memory.key_for(name),
                "session": agent.session_id,
            },
            priority=_PRIORITY[kind],
            dedupe_key=f"execute:{round_number}:{index}",
            max_attempts=MAX_ATTEMPTS,
        )
        agent.enqueued += 1
        outcome = {"strategy": strategy, "tests": len(suite.tests)}
        await self.queues["generate"].complete(job, outcome)
        agent.completed += 1
        agent.suites += 1
        await self.bump(agent, "suites_generated")
        await self.heartbeat(agent, f"wrote {module} suite ({strategy})")
        self.advance("generate", job)

    async def execute(self, agent: AgentTally, job: Job) -> None:
        work = job.payload
        round_number, index = work["round"], work["index"]
        queue = self.queues["execute"]
        analysis = {k: work[k] for k in ("round", "index", "module", "kind", "strategy", "session")}
        if sim.is_flaky_attempt(self.seed, round_number, index, job.attempts, work["strategy"]):
            state = await queue.fail(job, f"environment broke on attempt {job.attempts}")
            agent.failures += 1
            await self.bump(agent, "retries")
            if state == "dead":
                await self.bump(agent, "dead")
                await self.queues["analyse"].enqueue(
                    {**analysis, "outcome": "dead", "attempts": job.attempts},
                    dedupe_key=f"analyse:{round_number}:{index}",
                )
                agent.enqueued += 1
                self.advance("execute", None)
            return
        suite = await self.memory.retrieve(work["suite"], as_type=sim.GeneratedSuite)
        agent.reads += 1
        assert isinstance(suite, sim.GeneratedSuite)
        run = sim.run_suite(suite)
        memory = AgentMemory(self.memory, agent.agent_id)
        name = f"results/{round_number}/{index}"
        result = {
            "suite": work["suite"],
            "module": work["module"],
            "strategy": work["strategy"],
            "attempts": job.attempts,
            "passed": run.passed,
            "failed": run.failed,
            "failures": run.failures,
            "branches": run.branches,
        }
        await memory.store_result(name, result, partition=_PARTITION)
        result_key = memory.key_for(name)
        agent.writes += 1
        await self.queues["analyse"].enqueue(
            {**analysis, "outcome": "ran", "attempts": job.attempts, "result": result_key},
            dedupe_key=f"analyse:{round_number}:{index}",
        )
        agent.enqueued += 1
        await queue.complete(job, {"passed": run.passed, "failed": run.failed})
        # Counted only once the completion is accepted: a lost lease would raise above.
        agent.completed += 1
        agent.suites += 1
        agent.passed += run.passed
        agent.failed += run.failed
        await self.bump(agent, "suites_executed")
        await self.bump(agent, "tests_passed", run.passed)
        await self.bump(agent, "tests_failed", run.failed)
        await self.heartbeat(agent, f"ran {work['module']} suite")
        self.advance("execute", job)

    async def analyse(self, agent: AgentTally, job: Job) -> None:
        work = job.payload
        round_number, kind, strategy = work["round"], work["kind"], work["strategy"]
        state = self.state_of(kind)
        branches: list[int] = []
        if work["outcome"] == "ran":
            result = await self.memory.retrieve(work["result"])
            suite = await self.memory.retrieve(f"{result['suite']}", as_type=sim.GeneratedSuite)
            agent.reads += 2
            assert isinstance(suite, sim.GeneratedSuite)
            reward = sim.reward_for(suite.tests, work["attempts"])
            branches = list(result["branches"])
        else:
            reward = sim.reward_for(None, work["attempts"])
        await self.db.record_reward(
            "test-generator",
            state,
            strategy,
            reward,
            session_id=work["session"],
            reward_source=agent.agent_id,
        )
        await self.db.record_pattern_use(
            "test-generator",
            f"{state}:{strategy}",
            success=reward >= 0.5,
            reward=reward,
            pattern_type="test-strategy",
            pattern_data={"kind": kind, "strategy": strategy},
        )

        def merge(coverage: dict[str, Any]) -> dict[str, Any]:
            reached = sorted(set(coverage.get("branches", [])) | set(branches))
            return {
                "module": work["module"],
                "branches": reached,
                "of": sim.BRANCHES_PER_MODULE,
                "suites": coverage.get("suites", 0) + 1,
            }

        await self.compare_and_set(agent, f"{self.prefix}coverage/{work['module']}", merge)
        # In micro-units: an integer sum does not depend on the order the jobs came in.
        await self.memory.increment(f"{self.counters}reward_micros", round(reward * 1e6))
        await self.queues["analyse"].complete(job, {"reward": reward})
        agent.completed += 1
        agent.reward += reward
        self.advance("analyse", job)
        pending = self.pending[round_number]
        pending.append({"index": work["index"], "state": state, "action": strategy, "r": reward})
        if len(pending) == self.per_round:
            await self.learn(agent, round_number, pending)

    async def learn(
        self, agent: AgentTally, round_number: int, pending: list[dict[str, Any]]
    ) -> None:
        """Apply a finished round's TD updates in job order; mark the round learned."""
        states = sorted({item["state"] for item in pending})
        visits: dict[tuple[str, str], int] = {}
        for state in states:
            for row in await self.db.get_all_q_values_for_state("test-generator", state):
                visits[state, row["action_hash"]] = row["visit_count"]
        updates = []
        for item in sorted(pending, key=lambda item: item["index"]):
            pair = (item["state"], item["action"])
            visits[pair] = visits.get(pair, 0) + 1
            updates.append(
                {
                    "agent_type": "test-generator",
                    "state_hash": item["state"],
                    "action_hash": item["action"],
                    "reward": item["r"],
                    # One suite is one episode: nothing follows it.
                    "next_max_q": 0.0,
                    "alpha": max(MIN_ALPHA, 1.0 / visits[pair]),
                    "gamma": GAMMA,
                }
            )
        self.q_updates += await self.db.batch_update_q_values(updates)
        memory = AgentMemory(self.memory, agent.agent_id)
        for state in states:
            best = await self.db.get_best_action("test-generator", state)
            if best is not None:
                await memory.store_learned_pattern(
                    state.split(":", 1)[1],
                    {"best_strategy": best["action_hash"], "q_value": best["q_value"]},
                )
                agent.writes += 1
        await self.memory.store(
            f"{self.prefix}fleet/rounds/{round_number}",
            {"updates": len(updates)},
            partition=_PARTITION,
        )
        agent.writes += 1
        await self.heartbeat(agent, f"learned round {round_number}")


async def _learning_snapshot(database: DatabaseManager, fleet: str) -> dict[str, Any]:
    states: dict[str, Any] = {}
    for kind in sorted(set(sim.MODULES.values())):
        state = f"{fleet}:{kind}"
        rows = await database.get_all_q_values_for_state("test-generator", state)
        if not rows:
            continue
        best = rows[0]
        visits = sum(row["visit_count"] for row in rows)
        states[state] = {
            "best_action": best["action_hash"],
            "q_value": round(best["q_value"], 6),
            "visits": visits,
            "epsilon": round(sim.epsilon_for(visits), 4),
            "actions": {
                row["action_hash"]: {
                    "q_value": round(row["q_value"], 6),
                    "visits": row["visit_count"],
                }
                for row in sorted(rows, key=lambda row: row["action_hash"])
            },
        }
    return states


async def _previous_runs(database: DatabaseManager, fleet: str) -> int:
    sessions = await database.list_sessions("fleet-commander", status="completed", limit=10_000)
    return sum(1 for s in sessions if str(s.get("session_name") or "").startswith(f"{fleet} run "))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return round(value, 6)
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


async def run_demo(
    memory: MemoryBackend,
    database: DatabaseManager,
    *,
    generators: int = 3,
    rounds: int = 3,
    seed: int = 7,
    fleet: str = DEFAULT_FLEET,
    cleanup: bool = False,
    time_limit: float = 60.0,
    on_progress: Progress | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> DemoSummary:
    """Run the simulated fleet and return what happened.

    Args:
        memory: any backend (entries go under :func:`fleet_prefixes`).
        database: the SQL store of the queues and the Q-learning data; an SQLite database is
            upgraded to the newest schema first, a PostgreSQL one must be up to date.
        generators: test generators; each round has ``2 * generators`` generation jobs, and
            there are ``max(2, ceil(generators / 2))`` executors and one analyser.
        rounds: rounds of the pipeline; each round's choices use what earlier rounds learned.
        seed: seeds every simulated outcome.
        fleet: the fleet's name: its key prefix, queue names (``{fleet}:generate`` …) and
            learning states (``{fleet}:api`` …); fleets never touch each other's data.
        cleanup: delete the run's entries and jobs after the summary (learning is kept).
        time_limit: seconds the whole run may take before :class:`TimeoutError`.
        on_progress: called as ``(stage, done, total)`` whenever a stage finishes a job.
        on_phase: called with a short description as each phase starts.

    Raises:
        InvalidArgumentError: fewer than one generator or round; a bad fleet name.
        SchemaMissingError: PostgreSQL without the newest schema (run ``lionagi-qe db upgrade``).
        TimeoutError: the fleet did not finish within ``time_limit``.
    """
    if generators < 1 or rounds < 1:
        raise InvalidArgumentError("the demo needs at least one generator and one round")
    fleet = _check_fleet(fleet)

    def phase(text: str) -> None:
        if on_phase is not None:
            on_phase(text)

    started = time.perf_counter()
    phase("preparing the store")
    await _check_schema(database)
    phase("clearing the previous run")
    removed = await clear_demo_data(memory, database, fleet)
    previous_runs = await _previous_runs(database, fleet)
    learned_before = await _learning_snapshot(database, fleet)
    crew = _Fleet(
        memory,
        database,
        fleet=fleet,
        generators=generators,
        executors=max(2, -(-generators // 2)),
        rounds=rounds,
        seed=seed,
        run_number=previous_runs + 1,
        on_progress=on_progress,
    )
    for stage, progress in crew.stages.items():
        if on_progress is not None:
            on_progress(stage, 0, progress.total)
    phase("fleet at work")
    async with asyncio.timeout(time_limit):
        await asyncio.gather(
            crew.run_commander(),
            *(crew.consume(agent, "generate", crew.generate) for agent in crew.generators),
            *(crew.consume(agent, "execute", crew.execute) for agent in crew.executors),
            crew.consume(crew.analyser, "analyse", crew.analyse),
        )
        # The executors merge their tallies into one report at once: compare-and-set retries.
        await asyncio.gather(*(crew.sign_report(executor) for executor in crew.executors))
    phase("taking the summary")
    jobs = {stage: await queue.stats() for stage, queue in crew.queues.items()}
    counters = await memory.retrieve_many(f"{crew.counters}{name}" for name in _COUNTERS)
    coverage = await memory.search(f"{crew.prefix}coverage/*")
    heartbeats = await memory.search(f"{crew.prefix}heartbeat/*")
    plan_entry = await memory.get_entry(crew.plan_key)
    report = await memory.retrieve(crew.report_key, default={})
    learned_patterns = await AgentMemory(memory, crew.analyser.agent_id).get_learned_patterns()
    stats = await memory.get_stats()
    learning_stats = await database.get_learning_statistics("test-generator")
    summary = DemoSummary(
        fleet=fleet,
        seed=seed,
        rounds=rounds,
        run=crew.run_number,
        jobs_per_round=crew.per_round,
        jobs={
            stage: {
                **counts,
                "total": sum(counts.values()),
                "completed_by_agents": len(crew.stages[stage].completed_ids),
                "completed_twice": len(crew.stages[stage].completed_ids)
                - len(set(crew.stages[stage].completed_ids)),
            }
            for stage, counts in jobs.items()
        },
        counters={name: counters.get(f"{crew.counters}{name}", 0) for name in _COUNTERS},
        coverage={
            value["module"]: {
                "branches": len(value["branches"]),
                "of": value["of"],
                "percent": round(100.0 * len(value["branches"]) / value["of"], 1),
                "suites": value["suites"],
            }
            for value in sorted(coverage.values(), key=lambda v: v["module"])
        },
        learning={
            "agent_type": "test-generator",
            "alpha": f"max({MIN_ALPHA}, 1/visits)",
            "gamma": GAMMA,
            "updates": crew.q_updates,
            "visits_before": sum(s["visits"] for s in learned_before.values()),
            "states": await _learning_snapshot(database, fleet),
            "patterns": learned_patterns,
        },
        learning_stats=_jsonable(
            {
                name: learning_stats.get(name)
                for name in ("q_values", "rewards", "sessions", "patterns")
            }
        ),
        heartbeats=sorted(value["agent"] for value in heartbeats.values()),
        plan_version=plan_entry.version if plan_entry is not None else 0,
        plan_status=str(plan_entry.value.get("status")) if plan_entry is not None else "missing",
        report=report,
        stats={
            name: stats[name]
            for name in ("backend", "total_keys", "total_expired", "partitions", "size_bytes")
            if name in stats
        },
        removed_before=removed,
        agents=crew.agents,
    )
    if cleanup:
        phase("cleaning up")
        await clear_demo_data(memory, database, fleet)
    summary.elapsed_seconds = time.perf_counter() - started
    return summary
