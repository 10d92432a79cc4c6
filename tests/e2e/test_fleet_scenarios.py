"""The agent fleet end to end, with simulated agents and no language model (SPEC §3, §4, §6, §8).

The original test inventory's agent scenarios, each on every backend where it makes sense:
results and typed read-back, plan → execution → report hand-offs by compare-and-set, a fleet
commander's plan and per-fleet status, learned values read by a new instance, high-frequency
heartbeats, cache entries and sessions that expire, PostgreSQL beside Redis, many writers, many
readers of a shared configuration, a work queue with several consumers (one of which crashes),
an agent that keeps working after memory errors, and stores isolated from each other.

Each scenario asserts what a naive store would get wrong: lost counter updates, two winners of
one compare-and-set, a job handed out twice, a TTL ignored, a stale cached read, a foreign key
seen. Waiting for expiry polls with a bounded deadline; nothing asserts on speed.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as redis
from fleet import (
    CaseResult,
    Executor,
    FleetAgent,
    FleetCommander,
    HeartbeatAgent,
    Outcome,
    Planner,
    QueueConsumer,
    Reporter,
    ResilientAgent,
    SuiteResult,
    pipeline_key,
    simulate_case,
)
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from lionagi_qe import (
    AgentMemory,
    BackendUnavailableError,
    CachedMemory,
    ClosedError,
    DatabaseManager,
    KeyNotFoundError,
    LeaseLostError,
    MemoryBackend,
    PostgresMemory,
    RedisMemory,
    SerializationError,
    VersionConflictError,
    WorkQueue,
)
from lionagi_qe.testing import run_concurrently
from lionagi_qe.testing.servers import FoundServer, create_database, drop_database

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

#: Operations in flight at once in the many-agents scenarios: enough for every race, and within
#: the connection budget of a PostgreSQL server shared with other test workers.
IN_FLIGHT = 20

#: Nothing listens there: connecting is refused at once.
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


# --------------------------------------------------------------------------------------------
# helpers and fixtures


async def wait_until(
    condition: Callable[[], Awaitable[bool]], *, within: float = 8.0, interval: float = 0.05
) -> None:
    """Poll ``condition`` until it holds; fail after ``within`` seconds (never a fixed sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await condition():
        assert loop.time() < deadline, f"condition not met within {within} s"
        await asyncio.sleep(interval)


def redis_prefix() -> str:
    return f"aqe-fleet-test:{uuid.uuid4().hex[:12]}:"


async def delete_redis_prefix(url: str, prefix: str) -> None:
    """Delete this test's own keys (never anything outside ``prefix``)."""
    client = redis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        for start in range(0, len(keys), 500):
            await client.unlink(*keys[start : start + 500])
    finally:
        await client.aclose()


STORE_KINDS = [
    pytest.param("postgres", marks=[pytest.mark.postgres]),
    pytest.param("sqlite"),
    pytest.param("redis", marks=[pytest.mark.redis]),
    pytest.param("cached", marks=[pytest.mark.postgres, pytest.mark.redis]),
]


@dataclass
class StoreTarget:
    """Where a kind of store lives, so independent instances can be opened on the same data."""

    kind: str
    database_url: str | None
    redis_url: str | None
    prefix: str


@pytest.fixture(params=STORE_KINDS)
def store_target(request: pytest.FixtureRequest) -> StoreTarget:
    kind: str = request.param
    database_url = redis_url = None
    if kind in ("postgres", "cached"):
        request.getfixturevalue("postgres_memory")  # empties the worker's tables before/after
        database_url = request.getfixturevalue("aqe_database_url")
    if kind == "sqlite":
        database_url = request.getfixturevalue("aqe_sqlite_url")
    if kind in ("redis", "cached"):
        redis_url = request.getfixturevalue("aqe_redis_url")
    return StoreTarget(kind, database_url, redis_url, redis_prefix())


OpenStore = Callable[[], MemoryBackend]


@pytest_asyncio.fixture(loop_scope="session")
async def open_store(store_target: StoreTarget) -> AsyncIterator[OpenStore]:
    """Opens a new, independent backend instance (own pool) on the target's data."""
    opened: list[Any] = []

    def open_one() -> MemoryBackend:
        target = store_target
        backend: Any
        if target.kind in ("postgres", "sqlite"):
            assert target.database_url is not None
            backend = PostgresMemory(target.database_url)
        elif target.kind == "redis":
            backend = RedisMemory(url=target.redis_url, prefix=target.prefix)
        else:
            assert target.database_url is not None
            backend = CachedMemory(
                PostgresMemory(target.database_url),
                redis_url=target.redis_url,
                prefix=target.prefix,
            )
        opened.append(backend)
        return backend  # type: ignore[no-any-return]

    try:
        yield open_one
    finally:
        for backend in opened:
            await backend.close()
        if store_target.redis_url is not None:
            await delete_redis_prefix(store_target.redis_url, store_target.prefix)


# --------------------------------------------------------------------------------------------
# 1. results stored by an agent and read back, typed


def suite_result(run: str, agent: str, tests: list[str]) -> SuiteResult:
    return SuiteResult(
        run_id=uuid.uuid5(uuid.NAMESPACE_URL, run),
        agent=agent,
        finished_at=datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC),
        coverage=Decimal("91.125"),
        cases=[simulate_case(name) for name in tests],
        tags=("nightly", run),
    )


async def test_results_stored_by_an_agent_are_read_back_typed(memory: Any) -> None:
    executor = AgentMemory(memory, "test-executor")
    gate = AgentMemory(memory, "quality-gate")
    tests = [f"test_{name}" for name in ("login", "logout", "refund", "flaky", "merge")]
    result = suite_result("run-1", "test-executor", tests)
    assert {case.outcome for case in result.cases} == set(Outcome)

    await executor.store_result("results/run-1", result)
    key = "aqe/test-executor/results/run-1"

    # Stored in its JSON form: what another language or the CLI would read.
    assert await gate.retrieve_context(key) == result.model_dump(mode="json")
    for _ in range(2):  # the second read is a cache hit on the cached tier
        typed = await memory.retrieve(key, as_type=SuiteResult)
        assert typed == result
        assert isinstance(typed.run_id, uuid.UUID) and typed.coverage == Decimal("91.125")
        assert typed.finished_at == result.finished_at and typed.finished_at.tzinfo is not None
        assert typed.tags == ("nightly", "run-1") and typed.passed == result.passed
    cases = await memory.retrieve(key, as_type=SuiteResult)
    assert [c.outcome for c in cases.cases] == [c.outcome for c in result.cases]

    await executor.store_result("cases/run-1", result.cases)
    assert (
        await memory.retrieve("aqe/test-executor/cases/run-1", as_type=list[CaseResult])
        == result.cases
    )

    entry = await memory.get_entry(key)
    assert entry is not None
    assert (entry.partition, entry.version, entry.expires_at) == ("agent_results", 1, None)

    # A value that is not what the reader expects is a typed error, never a half-built object.
    with pytest.raises(SerializationError):
        await memory.retrieve(key, as_type=CaseResult)
    assert await memory.retrieve("aqe/test-executor/results/none", as_type=SuiteResult) is None

    # The next run overwrites nothing of the first; the gate finds both, in key order, typed.
    second = suite_result("run-2", "test-executor", tests[:2])
    await executor.store_result("results/run-2", second)
    found = await gate.search_memory("aqe/test-executor/results/*")
    assert list(found) == [key, "aqe/test-executor/results/run-2"]
    assert [SuiteResult.model_validate(v) for v in found.values()] == [result, second]


# --------------------------------------------------------------------------------------------
# 2. plan → execution → results hand-off by compare-and-set


async def test_plan_execution_report_hand_off(memory: Any) -> None:
    run = "release-7"
    tests = [f"test_case_{i}" for i in range(12)]
    assert await Planner(memory).plan(run, tests) == 1
    # A second planner cannot open the same run: the plan stays the first planner's.
    with pytest.raises(VersionConflictError):
        await Planner(memory, "planner-2").plan(run, ["other"])
    pipeline = await memory.retrieve(pipeline_key(run))
    assert pipeline == {"stage": "planned", "plan": f"aqe/planner/plan/{run}", "owner": None}
    assert await memory.retrieve(f"aqe/planner/plan/{run}") == {"tests": tests}

    # Eight executors see the planned run, then race to take it: exactly one does.
    executors = [Executor(memory, f"executor-{i}") for i in range(8)]
    seen = await asyncio.gather(*(memory.get_entry(pipeline_key(run)) for _ in executors))
    assert {entry.version for entry in seen} == {1}
    taken = await asyncio.gather(
        *(executor.take(run, entry) for executor, entry in zip(executors, seen, strict=True))
    )
    winners = [(e, v) for e, v in zip(executors, taken, strict=True) if v is not None]
    assert len(winners) == 1, f"{len(winners)} executors took one run: {taken}"
    winner, version = winners[0]
    assert version == 2
    assert (await memory.retrieve(pipeline_key(run)))["owner"] == winner.agent_id

    # Stale or made-up versions are refused and change nothing.
    for wrong in (1, 3, 99):
        with pytest.raises(VersionConflictError):
            await memory.store(pipeline_key(run), {"stage": "hijacked"}, expected_version=wrong)
    with pytest.raises(VersionConflictError):
        await memory.store("aqe/pipeline/no-such-run", {"stage": "x"}, expected_version=1)
    assert await memory.exists("aqe/pipeline/no-such-run") is False
    entry = await memory.get_entry(pipeline_key(run))
    assert entry is not None and entry.version == 2 and entry.value["stage"] == "executing"

    assert await winner.execute(run, version) == 3
    # A loser that still holds version 2 cannot overwrite the results hand-off.
    loser = next(e for e in executors if e is not winner)
    with pytest.raises(VersionConflictError):
        await loser.execute(run, version)
    assert (await memory.retrieve(pipeline_key(run)))["results"] == (
        f"aqe/{winner.agent_id}/results/{run}"
    )
    assert await memory.retrieve(f"aqe/{loser.agent_id}/results/{run}") is not None  # its draft

    report = await Reporter(memory).report(run)
    expected_passed = sum(simulate_case(t).outcome is Outcome.PASSED for t in tests)
    assert report == {
        "run": run,
        "executor": winner.agent_id,
        "passed": expected_passed,
        "total": len(tests),
        "coverage": "87.25",
    }
    final = await memory.get_entry(pipeline_key(run))
    assert final is not None and final.version == 4 and final.value["stage"] == "reported"
    assert final.partition == "pipeline"
    assert await AgentMemory(memory, "planner").retrieve_context(f"aqe/reporter/report/{run}") == (
        report
    )


# --------------------------------------------------------------------------------------------
# 3. a fleet commander's plan and per-fleet status


async def test_fleet_commander_plan_and_status_per_fleet(memory: Any) -> None:
    # '_' and '%' are ordinary characters: fleet qa_1 must never see fleet qaX1 or perf%.
    fleets = {
        "qa_1": ["gen", "exec", "cov"],
        "qaX1": ["gen", "exec"],
        "perf%": ["load", "soak", "spike", "stress"],
        "sec": ["scan"],
    }
    tasks = {"qa_1": 4, "qaX1": 3, "perf%": 5, "sec": 2}
    commander = FleetCommander(memory)
    await commander.publish(fleets)

    agents = [
        FleetAgent(memory, fleet, agent) for fleet, names in fleets.items() for agent in names
    ]
    await asyncio.gather(*(agent.run(tasks[agent.fleet]) for agent in agents))

    overview = await commander.overview()
    assert overview == {
        fleet: {
            "agents": len(names),
            "tasks_done": len(names) * tasks[fleet],
            "finished": len(names),
        }
        for fleet, names in fleets.items()
    }
    assert await commander.fleet_status("qa_1") == {
        name: {"state": "finished", "task": 4} for name in fleets["qa_1"]
    }
    assert list(await commander.fleet_status("qaX1")) == ["exec", "gen"]  # code-point order

    # Aggregates over every fleet: glob, regex, listing and statistics agree.
    statuses = await memory.search("aqe/fleet/*/status/*")
    assert len(statuses) == sum(map(len, fleets.values()))
    counters = await memory.search(r"^aqe/fleet/[^/]+/done$", regex=True)
    assert counters == {
        f"aqe/fleet/{fleet}/done": len(names) * tasks[fleet] for fleet, names in fleets.items()
    }
    assert await memory.list_keys("aqe/fleet/qa_1/") == [
        "aqe/fleet/qa_1/done",
        *(f"aqe/fleet/qa_1/status/{name}" for name in sorted(fleets["qa_1"])),
    ]
    stats = await memory.get_stats()
    for fleet, names in fleets.items():
        assert stats["partitions"][f"fleet-{fleet}"] == len(names)
    assert stats["total_keys"] == 1 + len(statuses) + len(counters)  # + the commander's plan

    # Standing one fleet down clears its statuses and nothing else (cached reads included).
    load_status = "aqe/fleet/perf%/status/load"
    assert await memory.retrieve(load_status) == {"state": "finished", "task": 5}
    assert await memory.clear_partition("fleet-perf%") == len(fleets["perf%"])
    assert await memory.retrieve(load_status) is None
    assert await memory.retrieve("aqe/fleet/perf%/done") == 20  # another partition
    assert await commander.fleet_status("perf%") == {}
    assert (await commander.overview())["qa_1"]["agents"] == 3
    assert len(await memory.search("aqe/fleet/*/status/*")) == len(statuses) - 4


# --------------------------------------------------------------------------------------------
# 4. learned values read by a new agent instance


class Heuristic(BaseModel):
    name: str
    weight: float
    targets: list[str]


async def test_learned_patterns_are_read_by_a_new_instance(open_store: OpenStore) -> None:
    first = open_store()
    analyzer = AgentMemory(first, "coverage-analyzer")
    neighbour = AgentMemory(first, "coverage-analyzer-2")  # its prefix extends the other's
    learned: dict[str, Any] = {
        "gap-first": {"weight": 0.8, "seen": 12},
        "branch/deep": [1, 2, 3],
        "prefers_mutation": True,
        "threshold": 0.30000000000000004,
        "nothing-yet": None,
        "heuristic": Heuristic(name="h", weight=0.25, targets=["auth", "billing"]),
    }
    for name, data in learned.items():
        await analyzer.store_learned_pattern(name, data)
    await neighbour.store_learned_pattern("unrelated", "x")
    await analyzer.store_result("scratch", "short-lived", ttl=60)  # results are not patterns
    await first.close()
    with pytest.raises(ClosedError):
        await analyzer.get_learned_patterns()

    # Another process, another pool: it starts with nothing but the store.
    second = open_store()
    successor = AgentMemory(second, "coverage-analyzer")
    expected = {**learned, "heuristic": learned["heuristic"].model_dump(mode="json")}
    patterns = await successor.get_learned_patterns()
    assert patterns == expected
    assert list(patterns) == sorted(expected)  # key order
    assert await AgentMemory(second, "coverage-analyzer-2").get_learned_patterns() == {
        "unrelated": "x"
    }
    assert await AgentMemory(second, "flaky-hunter").get_learned_patterns() == {}
    heuristic = await second.retrieve("aqe/patterns/coverage-analyzer/heuristic", as_type=Heuristic)
    assert heuristic == learned["heuristic"]
    for name in learned:
        entry = await second.get_entry(f"aqe/patterns/coverage-analyzer/{name}")
        assert entry is not None
        assert (entry.partition, entry.expires_at, entry.version) == ("patterns", None, 1)
        assert await second.ttl(f"aqe/patterns/coverage-analyzer/{name}") is None

    # ...and keeps learning on top of it.
    await successor.store_learned_pattern("gap-first", {"weight": 0.9, "seen": 13})
    refined = await second.get_entry("aqe/patterns/coverage-analyzer/gap-first")
    assert refined is not None and refined.version == 2
    assert (await successor.get_learned_patterns())["gap-first"] == {"weight": 0.9, "seen": 13}


LEARNING_URLS = [
    pytest.param("aqe_database_url", id="postgres", marks=[pytest.mark.postgres]),
    pytest.param("aqe_sqlite_url", id="sqlite"),
]


@pytest.mark.parametrize("url_fixture", LEARNING_URLS)
async def test_q_values_learned_by_a_fleet_are_read_by_a_new_instance(
    url_fixture: str, request: pytest.FixtureRequest
) -> None:
    url: str = request.getfixturevalue(url_fixture)
    agent_type = f"fleet-learner-{uuid.uuid4().hex[:12]}"
    state = "state:module=auth:step=0"
    good, bad = "action:mutation", "action:unit"
    alpha, gamma, next_max = 0.1, 0.9, 0.5
    rewards = {good: 1.0, bad: 0.1}
    instances, updates_each = 5, 8

    learner = DatabaseManager(url, min_connections=1, max_connections=instances)
    try:
        assert await learner.register_agent_type(agent_type, "simulated fleet learner")

        async def instance() -> None:
            # Five agent instances share one agent type's values and update them concurrently.
            for _ in range(updates_each):
                for action in (good, bad):
                    await learner.update_q_value(
                        agent_type,
                        state,
                        action,
                        rewards[action],
                        next_max,
                        alpha,
                        gamma,
                        action_data={"action": action},
                    )

        await asyncio.gather(*(instance() for _ in range(instances)))
    finally:
        await learner.close()

    def sequential(reward: float, n: int) -> float:
        q = 0.0
        for _ in range(n):
            q = q + alpha * (reward + gamma * next_max - q)
        return q

    total = instances * updates_each
    successor = DatabaseManager(url, min_connections=1, max_connections=2)
    try:
        best = await successor.get_best_action(agent_type, state)
        assert best is not None
        assert best["action_hash"] == good and best["action_data"] == {"action": good}
        # Every concurrent update landed exactly once: same target, so order does not matter.
        assert best["visit_count"] == total
        assert best["q_value"] == pytest.approx(sequential(rewards[good], total), rel=1e-12)
        assert type(best["q_value"]) is float
        q_bad = await successor.get_q_value(agent_type, state, bad)
        assert q_bad == pytest.approx(sequential(rewards[bad], total), rel=1e-12)
        assert await successor.get_best_action(agent_type, "state:never-seen") is None

        # The new instance continues from the stored value.
        after = await successor.update_q_value(
            agent_type, state, good, rewards[good], next_max, alpha, gamma
        )
        assert after == pytest.approx(sequential(rewards[good], total + 1), rel=1e-12)
        assert (await successor.get_best_action(agent_type, state) or {})["visit_count"] == (
            total + 1
        )
    finally:
        await successor.close()


# --------------------------------------------------------------------------------------------
# 5. high-frequency heartbeats


async def test_high_frequency_heartbeats_last_write_wins_then_expire(memory: Any) -> None:
    agents_count, rounds, ttl = 30, 20, 1.0
    agents = [HeartbeatAgent(memory, f"agent-{i:02d}", ttl) for i in range(agents_count)]
    survivor = HeartbeatAgent(memory, "survivor", ttl)
    barrier = asyncio.Barrier(agents_count)
    done = asyncio.Event()
    observed: dict[str, list[int]] = {}

    gate = asyncio.Semaphore(IN_FLIGHT)

    async def live(agent: HeartbeatAgent) -> None:
        for round_number in range(rounds - 1):
            async with gate:
                await agent.beat(round_number)
            await asyncio.sleep(0)
        await barrier.wait()  # the last round of every agent lands together
        async with gate:
            await agent.beat(rounds - 1)

    async def monitor() -> None:
        # A fleet monitor polling while agents beat: an agent's round never goes backwards.
        while not done.is_set():
            seen = await memory.search("aqe/heartbeat/agent-*")
            seen |= await memory.retrieve_many([agent.key for agent in agents[::3]])
            for key, value in seen.items():
                history = observed.setdefault(key, [])
                assert not history or value["round"] >= history[-1], (key, history, value)
                history.append(value["round"])
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(monitor())
    try:
        await asyncio.gather(*(live(agent) for agent in agents))
    finally:
        done.set()
        await watcher
    assert observed, "the monitor saw no heartbeat"

    final = await memory.retrieve_many([agent.key for agent in agents])
    assert final == {
        agent.key: {"agent": agent.agent_id, "round": rounds - 1} for agent in agents
    }, "a heartbeat is missing or not its agent's last round"
    for agent in agents[:5]:
        remaining = await memory.ttl(agent.key)
        assert remaining is not None and 0 < remaining <= ttl

    # The agents stop; only the survivor keeps beating. Every other heartbeat expires.
    beats = 0

    async def stopped_agents_expired() -> bool:
        nonlocal beats
        beats += 1
        await survivor.beat(beats)
        if await memory.search("aqe/heartbeat/agent-*"):
            return False
        keys: list[str] = await memory.list_keys("aqe/heartbeat/")
        return keys == [survivor.key]

    await wait_until(stopped_agents_expired, interval=0.1)
    assert await memory.retrieve_many([agent.key for agent in agents]) == {}
    assert not await memory.exists(agents[0].key)
    assert await memory.retrieve(survivor.key) == {"agent": "survivor", "round": beats}
    stats = await memory.get_stats()
    assert stats["total_keys"] == 1 and stats["partitions"].get("heartbeats") == 1


# --------------------------------------------------------------------------------------------
# 6. cache entries with a TTL, sessions that expire


async def test_cache_entries_and_sessions_expire_refreshed_ones_stay(memory: Any) -> None:
    loop = asyncio.get_running_loop()
    permanent, cached = "aqe/results/coverage", "aqe/cache/coverage-report"
    active, abandoned = "aqe/session/gen-1", "aqe/session/gen-2"
    session_ttl = 0.6
    await memory.store(permanent, {"lines": 812}, partition="agent_results")
    await memory.store(cached, {"html": "<p>report</p>"}, ttl=0.3, partition="cache")
    started = loop.time()
    assert await memory.store(active, {"user": "gen-1"}, ttl=session_ttl, partition="sessions") == 1
    await memory.store(abandoned, {"user": "gen-2"}, ttl=0.3, partition="sessions")
    assert await memory.retrieve(cached) == {"html": "<p>report</p>"}
    assert list(await memory.search("aqe/session/*")) == [active, abandoned]

    # The active session is refreshed with expire() past its first TTL; the other is abandoned.
    refreshes = 0
    while True:
        assert await memory.expire(active, session_ttl), "the refreshed session expired"
        refreshes += 1
        if loop.time() - started > 1.5 * session_ttl and await memory.retrieve(abandoned) is None:
            break
        assert loop.time() - started < 8, "the abandoned session never expired"
        await asyncio.sleep(0.05)

    assert await memory.retrieve(active) == {"user": "gen-1"}
    entry = await memory.get_entry(active)
    assert entry is not None and entry.version == 1 + refreshes  # expire() counts as a write
    remaining = await memory.ttl(active)
    assert remaining is not None and 0 < remaining <= session_ttl
    # The abandoned session and the cache entry are gone from every read path.
    for key in (abandoned, cached):
        assert await memory.retrieve(key, default="gone") == "gone"
        assert await memory.get_entry(key) is None
        assert not await memory.exists(key)
        with pytest.raises(KeyNotFoundError):
            await memory.ttl(key)
        assert await memory.expire(key, 60) is False  # an expired entry cannot be revived
    assert await memory.search("aqe/session/*") == {active: {"user": "gen-1"}}
    assert await memory.list_keys("aqe/") == [permanent, active]
    stats = await memory.get_stats()
    assert stats["total_keys"] == 2
    assert stats["partitions"].get("sessions") == 1 and stats["partitions"].get("cache", 0) == 0

    # The agent comes back: a new session, a new entry (version 1).
    assert await memory.store(abandoned, {"user": "gen-2"}, ttl=60, partition="sessions") == 1

    # Nobody refreshes the active session any more: it expires too; results are permanent.
    async def active_expired() -> bool:
        return not await memory.exists(active)

    await wait_until(active_expired)
    assert await memory.list_keys("aqe/") == [permanent, abandoned]
    await memory.cleanup_expired()
    stats = await memory.get_stats()
    assert stats["total_keys"] == 2 and stats["total_expired"] == 0
    assert await memory.retrieve(permanent) == {"lines": 812}


# --------------------------------------------------------------------------------------------
# 7. PostgreSQL for permanent data beside Redis for the ephemeral


@pytest.mark.postgres
@pytest.mark.redis
async def test_postgres_for_permanent_data_beside_redis_for_ephemeral(
    postgres_memory: Any, redis_memory: Any, aqe_engine: AsyncEngine, aqe_redis_url: str
) -> None:
    names = [f"agent-{i}" for i in range(5)]
    for name in names:
        await AgentMemory(postgres_memory, name).store_result("results", {"agent": name, "ok": 1})
        ephemeral = AgentMemory(redis_memory, name)
        await ephemeral.store_memory("heartbeat", {"alive": True}, ttl=0.4, partition="heartbeats")
        await ephemeral.store_memory("cache/plan", {"steps": 3}, ttl=0.4, partition="cache")

    permanent_keys = [f"aqe/{name}/results" for name in names]
    ephemeral_keys = sorted(
        f"aqe/{name}/{suffix}" for name in names for suffix in ("heartbeat", "cache/plan")
    )
    assert await postgres_memory.list_keys() == permanent_keys
    assert await redis_memory.list_keys() == ephemeral_keys
    assert list(await postgres_memory.search("aqe/agent-*/*")) == permanent_keys
    assert list(await redis_memory.search("aqe/agent-*/*")) == ephemeral_keys
    assert await postgres_memory.retrieve("aqe/agent-0/heartbeat") is None
    assert await redis_memory.retrieve("aqe/agent-0/results") is None
    assert (await postgres_memory.get_stats())["partitions"] == {"agent_results": 5}
    assert (await redis_memory.get_stats())["partitions"] == {"cache": 5, "heartbeats": 5}

    async def ephemeral_gone() -> bool:
        keys: list[str] = await redis_memory.list_keys()
        return keys == []

    await wait_until(ephemeral_gone)
    assert (await redis_memory.get_stats())["total_keys"] == 0
    assert await postgres_memory.list_keys() == permanent_keys  # permanent data stays

    # The cache tier in front of the same database: two "processes" sharing one Redis prefix.
    prefix = redis_prefix()
    writer = CachedMemory(PostgresMemory(aqe_engine), redis_url=aqe_redis_url, prefix=prefix)
    reader = CachedMemory(PostgresMemory(aqe_engine), redis_url=aqe_redis_url, prefix=prefix)
    try:
        key = "aqe/config/quality-gate"
        for n in range(1, 16):
            await writer.store(key, {"min_coverage": 80 + n})
            for _ in range(2):  # a miss that fills, then a hit: both fresh
                assert await reader.retrieve(key) == {"min_coverage": 80 + n}, n
            assert await writer.retrieve(key) == {"min_coverage": 80 + n}
        stats = await reader.get_stats()
        assert stats["cache_hits"] >= 15 and stats["cache_fills"] >= 1
        # The tier reads what PostgresMemory wrote (the database is the source of truth)...
        assert await reader.retrieve("aqe/agent-3/results") == {"agent": "agent-3", "ok": 1}
        await writer.delete(key)
        assert await reader.retrieve(key) is None
        # ...and never writes under another store's Redis prefix.
        assert await redis_memory.list_keys() == []
    finally:
        await writer.close()
        await reader.close()
        await delete_redis_prefix(aqe_redis_url, prefix)


# --------------------------------------------------------------------------------------------
# 8. many agents writing concurrently


async def test_many_agents_write_concurrently_without_lost_updates(memory: Any) -> None:
    agents_count, writes = 50, 20
    roster = "aqe/fleet/roster"
    cas_retries = Counter[int]()

    async def agent(i: int) -> None:
        own = AgentMemory(memory, f"worker-{i:02d}")
        for j in range(writes):
            await own.store_result(f"result/{j:02d}", {"agent": i, "write": j})
            await memory.increment("aqe/fleet/writes")
        await memory.increment("aqe/fleet/score", 0.25)  # a float counter
        # Join the roster by compare-and-set: read, append, write at that version, else retry.
        while True:
            entry = await memory.get_entry(roster)
            try:
                if entry is None:
                    await memory.store(roster, [i], if_absent=True)
                else:
                    await memory.store(roster, [*entry.value, i], expected_version=entry.version)
                return
            except VersionConflictError:
                cas_retries[i] += 1

    # At most IN_FLIGHT agents at once: enough for any race, within a shared server's budget.
    report = await run_concurrently(
        [functools.partial(agent, i) for i in range(agents_count)], limit=IN_FLIGHT
    )
    report.raise_first()
    assert report.max_in_flight > 1

    total = agents_count * writes
    writes_counter = await memory.retrieve("aqe/fleet/writes")
    assert writes_counter == total and type(writes_counter) is int, "lost or doubled increments"
    assert await memory.retrieve("aqe/fleet/score") == agents_count * 0.25
    assert sum(cas_retries.values()) > 0  # the roster really was contended
    members = await memory.retrieve(roster)
    assert sorted(members) == list(range(agents_count)), "a roster update was lost"
    entry = await memory.get_entry(roster)
    assert entry is not None and entry.version == agents_count

    keys = [
        f"aqe/worker-{i:02d}/result/{j:02d}" for i in range(agents_count) for j in range(writes)
    ]
    assert await memory.list_keys("aqe/worker-") == keys
    values = await memory.retrieve_many(keys)
    assert values == {
        f"aqe/worker-{i:02d}/result/{j:02d}": {"agent": i, "write": j}
        for i in range(agents_count)
        for j in range(writes)
    }
    assert len(await memory.search("aqe/worker-07/result/*")) == writes
    stats = await memory.get_stats()
    assert stats["total_keys"] == total + 3
    assert stats["partitions"]["agent_results"] == total


# --------------------------------------------------------------------------------------------
# 9. many readers of a shared configuration


async def test_many_readers_of_a_shared_configuration(memory: Any) -> None:
    key, readers_count, final = "aqe/config/fleet", 50, 25
    assert await memory.store(key, {"version": 1, "parallelism": 1}, partition="config") == 1
    written = asyncio.Event()
    gate = asyncio.Semaphore(IN_FLIGHT)  # 50 readers, at most IN_FLIGHT reads at once

    async def writer() -> None:
        for n in range(2, final + 1):
            version = await memory.store(
                key, {"version": n, "parallelism": n}, partition="config", expected_version=n - 1
            )
            assert version == n
            await asyncio.sleep(0.005)
        written.set()

    async def reader(r: int) -> list[int]:
        seen: list[int] = []

        async def read() -> int:
            if r % 2:
                entry = await memory.get_entry(key)
                assert entry is not None
                # The value and the version header always belong to the same write.
                assert entry.value["version"] == entry.version
                return int(entry.version)
            value = await memory.retrieve(key)
            assert value["parallelism"] == value["version"]
            return int(value["version"])

        while not written.is_set():
            async with gate:
                seen.append(await read())
            await asyncio.sleep(0.002)
        # The final write has returned: no reader may see an older configuration any more.
        for _ in range(3):
            async with gate:
                latest = await read()
            assert latest == final, f"reader {r} saw version {latest} after the final write"
            seen.append(latest)
        return seen

    results = await asyncio.gather(writer(), *(reader(r) for r in range(readers_count)))
    histories: list[list[int]] = results[1:]  # type: ignore[assignment]
    for r, seen in enumerate(histories):
        assert seen == sorted(seen), f"reader {r} saw versions go backwards: {seen}"
        assert set(seen) <= set(range(1, final + 1))
    assert len({v for seen in histories for v in seen}) > 2  # readers overlapped the writer


# --------------------------------------------------------------------------------------------
# 10. a work queue with several consumers

#: Where a WorkQueue runs: PostgreSQL (SKIP LOCKED) and SQLite (one writer at a time).
QUEUE_BACKENDS = [pytest.param("postgres", marks=[pytest.mark.postgres]), pytest.param("sqlite")]


@dataclass
class QueueSite:
    """A database for queues and the memory the consumers record their results in."""

    database: AsyncEngine | str
    memory: Any


@pytest.fixture(params=QUEUE_BACKENDS)
def queue_site(request: pytest.FixtureRequest) -> QueueSite:
    if request.param == "postgres":
        return QueueSite(
            request.getfixturevalue("aqe_engine"), request.getfixturevalue("postgres_memory")
        )
    if request.param == "sqlite":
        return QueueSite(
            request.getfixturevalue("aqe_sqlite_url"), request.getfixturevalue("sqlite_memory")
        )
    raise NotImplementedError(request.param)


@pytest_asyncio.fixture(loop_scope="session")
async def make_queue(queue_site: QueueSite) -> AsyncIterator[Callable[[], WorkQueue]]:
    """New queues of unique names (the table is shared by the worker's tests); closed after."""
    queues: list[WorkQueue] = []

    def make() -> WorkQueue:
        queues.append(WorkQueue(queue_site.database, f"fleet-{uuid.uuid4().hex}"))
        return queues[-1]

    try:
        yield make
    finally:
        for queue in queues:
            await queue.close()


async def test_work_queue_consumers_retry_and_reclaim_a_crashed_consumers_job(
    queue_site: QueueSite, make_queue: Callable[[], WorkQueue]
) -> None:
    memory = queue_site.memory
    queue = make_queue()
    total = 200
    flaky = {n: (0, 0, 1, 0, 2)[n % 5] if n % 3 else 0 for n in range(total)}
    ids = {
        await queue.enqueue({"n": n, "flaky": flaky[n]}, priority=n % 4): n for n in range(total)
    }
    assert len(ids) == total

    # The crashed consumer takes a job (the highest priority, oldest) and never reports back.
    crashed = await queue.claim("crashed", lease=0.3)
    assert crashed is not None and crashed.attempts == 1
    assert crashed.payload == {"n": 3, "flaky": 0}  # priority 3, oldest; never fails

    completions: Counter[str] = Counter()
    holding: set[str] = set()
    overlaps: list[str] = []
    consumers = [
        QueueConsumer(queue, memory, f"consumer-{c}", completions, holding, overlaps)
        for c in range(5)
    ]
    deadline = asyncio.get_running_loop().time() + 30
    await asyncio.gather(*(consumer.run(total, deadline) for consumer in consumers))

    assert overlaps == [], "a job was held by two consumers at once"
    assert set(completions) == set(ids), "a job was never completed"
    assert all(count == 1 for count in completions.values()), completions.most_common(3)
    assert await memory.retrieve("aqe/jobs-done") == total
    expected_failures = sum(flaky.values())
    assert sum(consumer.failed for consumer in consumers) == expected_failures
    assert sum(consumer.claimed for consumer in consumers) == total + expected_failures
    assert all(consumer.claimed > 0 for consumer in consumers), "a consumer never got work"

    # Results recorded once each; a retried job completed on the attempt after its failures.
    results = await memory.search("aqe/jobs/*")
    assert len(results) == total
    for job_id, n in ids.items():
        result = results[f"aqe/jobs/{job_id}"]
        assert result["n"] == n and result["square"] == n * n
        if job_id == crashed.id:
            assert result["attempts"] == 2 and result["by"] != "crashed"
        else:
            assert result["attempts"] == flaky[n] + 1

    # The crashed consumer comes back: its lease was lost to the consumer that reclaimed it.
    with pytest.raises(LeaseLostError):
        await queue.complete(crashed, {"late": True})
    with pytest.raises(LeaseLostError):
        await queue.heartbeat(crashed)
    with pytest.raises(LeaseLostError):
        await queue.fail(crashed, "late")
    assert await queue.stats() == {"queued": 0, "active": 0, "done": total, "failed": 0, "dead": 0}
    assert await queue.claim("anyone") is None


async def test_work_queue_slow_consumer_heartbeats_and_keeps_its_job(
    queue_site: QueueSite, make_queue: Callable[[], WorkQueue]
) -> None:
    queue, other = make_queue(), make_queue()
    await queue.enqueue({"suite": "long"})
    await other.enqueue({"suite": "elsewhere"})
    job = await queue.claim("slow", lease=0.3)
    assert job is not None
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < 0.9:  # three leases long, heartbeating all along
        job = await queue.heartbeat(job, lease=0.3)
        assert await queue.claim("eager", lease=0.3) is None, "a held job was handed out"
        await asyncio.sleep(0.05)
    await queue.complete(job, {"passed": 12})
    assert (await queue.stats())["done"] == 1
    # Queues on one table never see each other's jobs.
    assert (await other.stats())["queued"] == 1
    other_job = await other.claim("eager")
    assert other_job is not None and other_job.payload == {"suite": "elsewhere"}
    await other.complete(other_job)


# --------------------------------------------------------------------------------------------
# 11. an agent that keeps working after a memory error


async def test_agent_keeps_working_after_bad_values(memory: Any) -> None:
    agent = ResilientAgent(AgentMemory(memory, "test-generator"), journal=memory)
    tasks: dict[str, Any] = {
        "t1": {"tests": 3},
        "t2": {"coverage": float("nan")},
        "t3": ["ok"],
        "t4": {"name": "nul\x00byte"},
        "t5": {"handle": object()},
        "t6": {"tests": 6},
    }
    await agent.run(tasks)
    assert agent.done == ["t1", "t3", "t6"]
    assert agent.failures == [
        ("t2", SerializationError),
        ("t4", SerializationError),
        ("t5", SerializationError),
    ]
    assert await memory.search("aqe/test-generator/*") == {
        "aqe/test-generator/t1": {"tests": 3},
        "aqe/test-generator/t3": ["ok"],
        "aqe/test-generator/t6": {"tests": 6},
    }
    journal = await memory.search("aqe/failures/test-generator/*")
    assert list(journal) == [f"aqe/failures/test-generator/{t}" for t in ("t2", "t4", "t5")]
    assert {value["error"] for value in journal.values()} == {"SerializationError"}

    # A counter holding text: increment is refused, the value kept; the next counter works.
    await memory.store("aqe/test-generator/count", "three")
    with pytest.raises(SerializationError):
        await memory.increment("aqe/test-generator/count")
    assert await memory.retrieve("aqe/test-generator/count") == "three"
    assert await memory.increment("aqe/test-generator/runs") == 1

    # A batch with one bad value stores nothing (all or nothing); the agent retries without it.
    batch = {"aqe/test-generator/b1": 1, "aqe/test-generator/b2": float("inf")}
    with pytest.raises(SerializationError):
        await memory.store_many(batch)
    assert await memory.retrieve_many(list(batch)) == {}
    assert await memory.store_many({"aqe/test-generator/b1": 1}) == 1


@pytest.mark.redis
async def test_agent_keeps_working_after_an_unreachable_or_closed_backend(
    memory: Any, aqe_redis_url: str
) -> None:
    unreachable = RedisMemory(url=UNREACHABLE_REDIS, socket_timeout=0.5, socket_connect_timeout=0.5)
    closed = RedisMemory(url=aqe_redis_url, prefix=redis_prefix())
    await closed.close()  # closed before its first call: it never wrote a key
    try:
        agent = ResilientAgent(AgentMemory(unreachable, "executor"), journal=memory)
        await agent.run({"a": 1, "b": 2})
        agent.memory = AgentMemory(closed, "executor")
        await agent.run({"c": 3})
        assert agent.done == []
        assert agent.failures == [
            ("a", BackendUnavailableError),
            ("b", BackendUnavailableError),
            ("c", ClosedError),
        ]
        # The agent moves on to a healthy store and its next tasks succeed.
        agent.memory = AgentMemory(memory, "executor")
        await agent.run({"d": 4, "e": 5})
        assert agent.done == ["d", "e"]
        assert await memory.search("aqe/executor/*") == {"aqe/executor/d": 4, "aqe/executor/e": 5}
        journal = await memory.search("aqe/failures/executor/*")
        assert {key.rsplit("/", 1)[1]: value["error"] for key, value in journal.items()} == {
            "a": "BackendUnavailableError",
            "b": "BackendUnavailableError",
            "c": "ClosedError",
        }
    finally:
        await unreachable.close()


@pytest.mark.postgres
async def test_agent_on_the_cache_tier_keeps_working_while_redis_is_down(
    postgres_memory: Any, aqe_engine: AsyncEngine
) -> None:
    tier = CachedMemory(PostgresMemory(aqe_engine), redis_url=UNREACHABLE_REDIS)
    try:
        agent = ResilientAgent(AgentMemory(tier, "reporter"), journal=postgres_memory)
        await agent.run({f"r{i}": {"i": i} for i in range(6)})
        assert agent.failures == [] and len(agent.done) == 6
        for i in range(6):
            assert await tier.retrieve(f"aqe/reporter/r{i}") == {"i": i}
        assert await postgres_memory.retrieve("aqe/reporter/r5") == {"i": 5}
    finally:
        await tier.close()


# --------------------------------------------------------------------------------------------
# 12. backends isolated from each other


async def exercise_isolation(one: MemoryBackend, two: MemoryBackend) -> None:
    """Writes, partitions, counters, expiry and statistics of ``one`` never show in ``two``.

    Both stores get the same keys and partition names (fresh ones each call).
    """
    run = uuid.uuid4().hex[:8]
    shared, counter, own = f"aqe/{run}/shared/key", f"aqe/{run}/shared/counter", f"aqe/{run}/one/"
    partition = f"shared-{run}"
    await two.store(shared, "two's", partition=partition)
    await two.store(f"aqe/{run}/two/x", 2, partition=f"two-{run}")
    before = await two.get_stats()
    one_before = await one.get_stats()

    await one.store(shared, "one's", partition=partition)
    await one.store_many({f"{own}{i}": i for i in range(5)}, partition=partition)
    await one.store(f"{own}short", 0, ttl=0.2, partition=partition)
    assert await one.increment(counter, 5) == 5
    assert await two.increment(counter) == 1

    assert await two.retrieve(shared) == "two's"
    assert await two.list_keys(f"aqe/{run}/") == [counter, shared, f"aqe/{run}/two/x"]
    assert await two.search(f"{own}*") == {}
    assert await one.retrieve(f"aqe/{run}/two/x") is None
    assert len(await one.list_keys(own)) == 6
    assert (await one.get_stats())["partitions"][partition] == 7

    assert await one.clear_partition(partition) == 7
    assert await two.retrieve(shared) == "two's"
    assert (await two.get_stats())["partitions"][partition] == 1
    await asyncio.sleep(0.3)
    await one.cleanup_expired()
    after = await two.get_stats()
    assert after["total_keys"] == before["total_keys"] + 1  # only its own counter was added
    assert after["size_bytes"] > before["size_bytes"]
    assert (await one.get_stats())["total_keys"] == one_before["total_keys"] + 1  # the counter
    assert await one.delete(counter) is True
    assert await two.retrieve(counter) == 1


@pytest.mark.redis
async def test_redis_stores_with_different_prefixes_are_isolated(aqe_redis_url: str) -> None:
    # The second prefix extends the first: a store scanning its prefix would see the other.
    base = redis_prefix()
    one = RedisMemory(url=aqe_redis_url, prefix=base)
    two = RedisMemory(url=aqe_redis_url, prefix=base + "b:")
    try:
        await exercise_isolation(one, two)
        await exercise_isolation(two, one)
    finally:
        await one.close()
        await two.close()
        await delete_redis_prefix(aqe_redis_url, base)


@pytest.fixture
def second_postgres_database(aqe_postgres_server: FoundServer) -> Iterator[str]:
    name = f"aqe_fleet_{uuid.uuid4().hex[:12]}"
    url = create_database(aqe_postgres_server.url, name)
    try:
        yield url
    finally:
        drop_database(aqe_postgres_server.url, name)


@pytest.mark.postgres
async def test_postgres_stores_on_different_databases_are_isolated(
    postgres_memory: Any, second_postgres_database: str
) -> None:
    other = PostgresMemory(second_postgres_database, auto_migrate=True)
    try:
        await exercise_isolation(postgres_memory, other)
        await exercise_isolation(other, postgres_memory)
    finally:
        await other.close()


async def test_sqlite_stores_on_different_files_are_isolated(
    sqlite_memory: Any, tmp_path: Path
) -> None:
    other = PostgresMemory(f"sqlite+aiosqlite:///{tmp_path / 'other-fleet.db'}")
    try:
        await exercise_isolation(sqlite_memory, other)
        await exercise_isolation(other, sqlite_memory)
    finally:
        await other.close()
