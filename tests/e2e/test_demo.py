"""``lionagi-qe demo`` end to end: the fleet through the queue, memory and learning store.

The embedded default (SQLite in the working directory), PostgreSQL, the Redis cache in front of
PostgreSQL and Redis alone for the memory. No assertion depends on timing: the heartbeats'
TTL (30 s) is far longer than any run, and nothing waits for an entry to expire.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from typer.testing import CliRunner, Result

from lionagi_qe import DatabaseManager
from lionagi_qe.backends.protocol import MemoryBackend
from lionagi_qe.backends.sql import PostgresMemory
from lionagi_qe.cli import app
from lionagi_qe.demo import DEMO_PREFIX, DemoSummary, fleet_prefixes, run_demo
from lionagi_qe.demo.fleet import MAX_ATTEMPTS
from lionagi_qe.errors import InvalidArgumentError

pytestmark = [pytest.mark.e2e]

#: For seed 7 these are the strategies the simulation makes best (see demo.simulation.QUALITY).
BEST_FOR_SEED_7 = {"api": "boundary-values", "data": "property-based", "ui": "mutation"}


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    """A runner in an empty working directory, with no AQE_* URLs from the environment."""
    monkeypatch.chdir(tmp_path)
    yield CliRunner(env={"AQE_DATABASE_URL": None, "AQE_REDIS_URL": None, "COLUMNS": "200"})


def invoke(runner: CliRunner, *args: str) -> Result:
    """Run ``lionagi-qe *args``; an unexpected exception fails the test with its traceback."""
    result = runner.invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def ok_json(runner: CliRunner, *args: str) -> Any:
    """Run a command with ``--json`` that must succeed; return its one JSON document."""
    result = invoke(runner, *args, "--json")
    assert result.exit_code == 0, result.output
    assert "━" not in result.stderr  # no progress bars with --json
    return json.loads(result.stdout)


def fleet_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def check_summary(summary: dict[str, Any], *, generators: int, rounds: int) -> None:
    """What every finished run must show, whatever the scheduling."""
    per_stage = 2 * generators * rounds
    executors = max(2, -(-generators // 2))
    assert summary["agents"] == {
        "total": generators + executors + 2,
        "commander": 1,
        "generators": generators,
        "executors": executors,
        "analysers": 1,
    }
    jobs = summary["jobs"]
    assert sorted(jobs) == ["analyse", "execute", "generate"]
    for stage, counts in jobs.items():
        assert counts["queued"] == counts["active"] == counts["failed"] == 0, stage
        assert counts["done"] + counts["dead"] == counts["total"] == per_stage, stage
        # Every job completed exactly once: no completion accepted twice, none lost.
        assert counts["completed_twice"] == 0, stage
        assert counts["completed_by_agents"] == counts["done"], stage
    assert jobs["generate"]["dead"] == jobs["analyse"]["dead"] == 0

    results = summary["results"]
    suites = results["suites"]
    assert suites == {
        "generated": per_stage,
        "executed": jobs["execute"]["done"],
        "dead": jobs["execute"]["dead"],
    }
    assert results["failed_attempts"] >= MAX_ATTEMPTS * suites["dead"]
    tests = results["tests"]
    assert tests["total"] == tests["passed"] + tests["failed"]
    assert 4 * suites["executed"] <= tests["total"] <= 8 * suites["executed"]
    report = results["report"]
    assert len(report) == executors
    assert sum(item["suites"] for item in report.values()) == suites["executed"]
    assert sum(item["passed"] for item in report.values()) == tests["passed"]
    assert sum(item["failed"] for item in report.values()) == tests["failed"]
    assert sum(item["failures"] for item in report.values()) == results["failed_attempts"]
    assert results["coverage"], "no coverage merged"
    assert all(0 <= item["percent"] <= 100 for item in results["coverage"].values())

    learning = summary["learning"]
    assert learning["updates"] == per_stage
    states = learning["states"]
    assert states, "nothing learned"
    assert sum(item["visits"] for item in states.values()) == learning["visits_before"] + per_stage
    for item in states.values():
        assert item["q_value"] == max(value["q_value"] for value in item["actions"].values())
        assert item["actions"][item["best_action"]]["q_value"] == item["q_value"]
    assert learning["patterns"], "no learned patterns stored"

    assert summary["heartbeats"]["alive"] == summary["agents"]["total"]
    assert summary["plan"] == {"status": "complete", "version": rounds + 3}
    assert summary["learning_stats"]["rewards"]["count"] >= per_stage
    per_agent = summary["per_agent"]
    assert sum(a["completed"] for a in per_agent) == sum(c["done"] for c in jobs.values())


def deterministic(summary: dict[str, Any]) -> dict[str, Any]:
    """The parts of a summary that depend only on the seed, options and learning history."""
    results = {k: v for k, v in summary["results"].items() if k != "report"}
    jobs = {
        stage: {k: v for k, v in counts.items() if k != "completed_by_agents"}
        for stage, counts in summary["jobs"].items()
    }
    return {
        "jobs": jobs,
        "results": results,
        "learning": summary["learning"],
        "plan": summary["plan"],
        "total_keys": summary["stats"]["total_keys"],
    }


# -- the embedded default --------------------------------------------------------------------


def test_demo_on_the_embedded_default_learns_across_runs(runner: CliRunner, tmp_path: Path) -> None:
    first = ok_json(runner, "demo", "--agents", "2", "--rounds", "2")
    assert first["database_url"] == "sqlite+aiosqlite:///./aqe-memory.db"
    assert first["memory"] == {
        "backend": "sqlite",
        "url": "sqlite+aiosqlite:///./aqe-memory.db",
        "cache_url": None,
    }
    assert (tmp_path / "aqe-memory.db").is_file()
    check_summary(first, generators=2, rounds=2)
    assert first["run"] == 1
    assert first["learning"]["visits_before"] == 0
    assert first["removed_before"] == {"entries": 0, "jobs": 0}

    # Re-runnable: the previous run's entries and jobs go, its learning stays.
    second = ok_json(runner, "demo", "--agents", "2", "--rounds", "2")
    check_summary(second, generators=2, rounds=2)
    assert second["run"] == 2
    assert second["removed_before"]["jobs"] == 3 * 8
    # Every live entry of the first run (all demo keys); a heartbeat may have lapsed meanwhile.
    removed = second["removed_before"]["entries"]
    assert first["stats"]["total_keys"] - first["agents"]["total"] <= removed
    assert removed <= first["stats"]["total_keys"]
    first_visits = sum(item["visits"] for item in first["learning"]["states"].values())
    assert second["learning"]["visits_before"] == first_visits
    for state, item in first["learning"]["states"].items():
        assert second["learning"]["states"][state]["visits"] >= item["visits"]

    # One result entry per executed suite, kept for inspection.
    kept = ok_json(runner, "memory", "ls", "aqe/demo.")
    results = [key for key in kept if "/results/" in key]
    assert len(results) == second["results"]["suites"]["executed"]
    assert "aqe/demo/fleet/plan" in ok_json(runner, "memory", "ls", DEMO_PREFIX)

    human = invoke(runner, "demo", "--agents", "2", "--rounds", "2")
    assert human.exit_code == 0, human.output
    out = human.stdout
    for section in (
        "QE fleet demo 'demo' on sqlite",
        "run 3",
        "Jobs",
        "Results",
        "Learned Q-values",
    ):
        assert section in out, section
    for section in ("Store", "Agents", "elapsed", "demo:execute", "lionagi-qe memory ls aqe/demo/"):
        assert section in out, section
    # The progress display goes to stderr only.
    assert "generate suites" in human.stderr and "18/" not in out
    assert "generate suites" not in out


def test_same_seed_same_outcome_other_seed_other_outcome(runner: CliRunner, tmp_path: Path) -> None:
    def fresh(name: str, *args: str) -> dict[str, Any]:
        url = f"sqlite+aiosqlite:///{tmp_path / name}"
        document: dict[str, Any] = ok_json(runner, "demo", "--database-url", url, *args)
        check_summary(document, generators=3, rounds=3)
        return document

    first = fresh("a.db")
    again = fresh("b.db")
    assert deterministic(again) == deterministic(first)
    other = fresh("c.db", "--seed", "8")
    assert deterministic(other) != deterministic(first)


def test_cleanup_leaves_other_keys_and_the_learning(runner: CliRunner, tmp_path: Path) -> None:
    url = ("--database-url", f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}")
    put = invoke(runner, "memory", "put", "aqe/mine/keep", '"kept"', *url)
    assert put.exit_code == 0, put.output
    summary = ok_json(runner, "demo", "--agents", "1", "--rounds", "1", "--cleanup", *url)
    check_summary(summary, generators=1, rounds=1)
    assert ok_json(runner, "memory", "ls", *url) == ["aqe/mine/keep"]
    again = ok_json(runner, "demo", "--agents", "1", "--rounds", "1", *url)
    assert again["removed_before"] == {"entries": 0, "jobs": 0}
    assert again["run"] == 2 and again["learning"]["visits_before"] == 2


def test_bad_options_are_one_line_errors(runner: CliRunner) -> None:
    assert invoke(runner, "demo", "--agents", "0").exit_code == 2
    bad_fleet = invoke(runner, "demo", "--fleet", "no/slashes")
    assert bad_fleet.exit_code == 1
    assert bad_fleet.stderr.strip().startswith("error: fleet must be")
    two_redis = invoke(
        runner, "demo", "--database-url", "redis://127.0.0.1:1/0", "--redis-url", "redis://x"
    )
    assert two_redis.exit_code == 1
    assert "two Redis URLs" in two_redis.stderr
    assert "\n" not in two_redis.stderr.strip()


# -- through the API: learning, and the other memories ---------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def sqlite_store(aqe_sqlite_url: str) -> AsyncIterator[DatabaseManager]:
    db = DatabaseManager(aqe_sqlite_url, min_connections=1, max_connections=5)
    try:
        yield db
    finally:
        await db.close()


async def _run(memory: MemoryBackend, db: DatabaseManager, **options: Any) -> dict[str, Any]:
    summary = await run_demo(memory, db, **options)
    assert isinstance(summary, DemoSummary)
    document: dict[str, Any] = summary.as_dict()
    return document


async def test_the_better_strategy_ends_with_the_higher_q_value(
    sqlite_store: DatabaseManager,
) -> None:
    memory = PostgresMemory(sqlite_store)
    try:
        for _ in range(2):
            summary = await _run(memory, sqlite_store, seed=7)
            check_summary(summary, generators=3, rounds=3)
    finally:
        await memory.close()
    states = summary["learning"]["states"]
    assert {state.split(":")[1]: item["best_action"] for state, item in states.items()} == (
        BEST_FOR_SEED_7
    )
    for state, item in states.items():
        actions = item["actions"]
        if "random" in actions:
            assert (
                actions[BEST_FOR_SEED_7[state.split(":")[1]]]["q_value"]
                > (actions["random"]["q_value"])
            )
    # Epsilon decays as a state is visited.
    assert all(item["epsilon"] < 0.3 for item in states.values())


async def test_bad_arguments_raise_before_running(sqlite_store: DatabaseManager) -> None:
    memory = PostgresMemory(sqlite_store)
    try:
        with pytest.raises(InvalidArgumentError):
            await run_demo(memory, sqlite_store, generators=0)
        with pytest.raises(InvalidArgumentError):
            await run_demo(memory, sqlite_store, fleet="patterns")
    finally:
        await memory.close()


@pytest.mark.integration
@pytest.mark.postgres
def test_demo_on_postgres(runner: CliRunner, aqe_database_url: str) -> None:
    fleet = fleet_name()
    url = ("--database-url", aqe_database_url)
    first = ok_json(runner, "demo", "--fleet", fleet, "--cleanup", *url)
    check_summary(first, generators=3, rounds=3)
    assert first["memory"]["backend"] == "postgresql"
    assert first["queues"]["execute"] == f"{fleet}:execute"
    for prefix in fleet_prefixes(fleet):
        assert ok_json(runner, "memory", "ls", prefix, *url) == []
    second = ok_json(runner, "demo", "--fleet", fleet, "--agents", "1", "--rounds", "1", *url)
    check_summary(second, generators=1, rounds=1)
    assert second["run"] == 2
    assert second["learning"]["visits_before"] == 18
    human = invoke(runner, "demo", "--fleet", fleet, "--cleanup", *url)
    assert human.exit_code == 0, human.output
    assert f"QE fleet demo '{fleet}' on postgresql" in human.stdout


@pytest.mark.integration
@pytest.mark.postgres
@pytest.mark.redis
async def test_demo_with_the_cache_tier(cached_memory: Any, aqe_database_url: str) -> None:
    """Memory through the Redis cache; the queues and learning stay in PostgreSQL."""
    db = DatabaseManager(aqe_database_url, min_connections=1, max_connections=5)
    fleet = fleet_name()
    try:
        first = await _run(cached_memory, db, fleet=fleet, generators=2, rounds=2)
        check_summary(first, generators=2, rounds=2)
        assert first["stats"]["backend"] == "cached"
        second = await _run(cached_memory, db, fleet=fleet, generators=2, rounds=2, cleanup=True)
        check_summary(second, generators=2, rounds=2)
        assert second["run"] == 2 and second["learning"]["visits_before"] == 8
        for prefix in fleet_prefixes(fleet):
            assert await cached_memory.list_keys(prefix) == []
    finally:
        await db.close()


@pytest.mark.integration
@pytest.mark.redis
async def test_demo_with_memory_on_redis(redis_memory: Any, sqlite_store: DatabaseManager) -> None:
    """Redis alone for the memory, the queues and learning in SQLite (the CLI's redis:// case)."""
    summary = await _run(redis_memory, sqlite_store, generators=1, rounds=2)
    check_summary(summary, generators=1, rounds=2)
    assert summary["stats"]["backend"] == "redis"


@pytest.mark.postgres
@pytest.mark.redis
async def test_the_demo_stores_follow_the_settings(
    aqe_database_url: str, aqe_redis_url: str
) -> None:
    """Statement and lock timeouts, pool size and the cache's settings reach the demo's stores."""
    from lionagi_qe.cache import CachedMemory
    from lionagi_qe.cli.demo import open_stores
    from lionagi_qe.config import Settings

    settings = Settings(
        database_url=aqe_database_url,
        statement_timeout=12.5,
        lock_timeout=3.25,
        pool_size=3,
        cache_ttl=42.0,
        redis_socket_timeout=0.5,
    )
    database, memory = open_stores(
        settings, aqe_database_url, aqe_redis_url, sql_url=aqe_database_url
    )
    try:
        assert isinstance(memory, CachedMemory)
        assert memory._tier._cache_ttl_ms == 42_000
        assert memory._client.connection_pool.connection_kwargs["socket_timeout"] == 0.5
        assert database.engine.pool.size() == 3  # type: ignore[attr-defined]
        async with database.engine.connect() as connection:
            timeouts = [
                (await connection.exec_driver_sql(f"SHOW {name}")).scalar_one()
                for name in ("statement_timeout", "lock_timeout")
            ]
        assert timeouts == ["12500ms", "3250ms"]
    finally:
        await memory.close()
        await database.close()
