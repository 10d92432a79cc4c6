"""``lionagi-qe bench --smoke``: the report's shape on every backend, the table, the PNG.

Smoke runs measure nothing (tiny sizes, one repetition): these tests check the machinery, never
a speed. Each run creates and removes its own database / key prefixes; the tests check that too.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aredis
from sqlalchemy import make_url
from typer.testing import CliRunner, Result

from lionagi_qe.bench import BenchOptions, run_bench
from lionagi_qe.bench.harness import BenchInterrupted
from lionagi_qe.cli import app
from lionagi_qe.testing.servers import FoundServer

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None

MEMORY_OPS = {
    "store",
    "retrieve",
    "retrieve_miss",
    "increment",
    "store_many",
    "retrieve_many",
    "search",
    "list_keys",
    "store_concurrent",
    "retrieve_concurrent",
}
CACHED_OPS = MEMORY_OPS - {"retrieve", "retrieve_concurrent"} | {
    "cache_hit",
    "cache_miss_fill",
    "cache_hit_concurrent",
}
POSTGRES_OPS = MEMORY_OPS | {
    "q_update",
    "q_update_batch",
    "q_update_concurrent",
    "q_update_concurrent_one_pair",
    "q_update_batch_concurrent",
    "enqueue",
    "claim",
    "complete",
    "enqueue_concurrent",
    "claim_complete_concurrent",
}
EXPECTED = {
    "postgres": POSTGRES_OPS,
    "sqlite": MEMORY_OPS,
    "redis": MEMORY_OPS,
    "cached": CACHED_OPS,
}

BACKENDS = [
    pytest.param("postgres", marks=[pytest.mark.postgres]),
    pytest.param("sqlite"),
    pytest.param("redis", marks=[pytest.mark.redis]),
    pytest.param("cached", marks=[pytest.mark.postgres, pytest.mark.redis]),
]


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A runner in an empty directory, with no AQE_* URLs from the environment."""
    monkeypatch.chdir(tmp_path)
    names = ("AQE_DATABASE_URL", "AQE_REDIS_URL", "AQE_BENCH_DATABASE_URL", "AQE_BENCH_REDIS_URL")
    env: dict[str, str | None] = dict.fromkeys(names)
    return CliRunner(env={**env, "COLUMNS": "200"})


def server_args(request: pytest.FixtureRequest, backend: str) -> list[str]:
    """``--database-url`` / ``--redis-url`` of the test kit's servers the backend needs."""
    args: list[str] = []
    if backend in ("postgres", "cached"):
        server: FoundServer = request.getfixturevalue("aqe_postgres_server")
        args += ["--database-url", server.url]
    if backend in ("redis", "cached"):
        args += ["--redis-url", request.getfixturevalue("aqe_redis_url")]
    return args


def invoke(runner: CliRunner, *args: str) -> Result:
    """Run ``lionagi-qe *args``; an unexpected exception fails the test with its traceback."""
    result = runner.invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def assert_side(side: dict[str, Any]) -> None:
    assert side["calls"] >= 1
    assert side["ops_per_s"] > 0
    assert 0 < side["p50_ms"] <= side["p99_ms"]
    assert side["stall_ms"] >= 0
    assert 0 <= side["busy_stall_ms"] <= side["stall_ms"] + 1e-9


def leftovers(request: pytest.FixtureRequest, backend: str, run_id: str) -> list[str]:
    """Databases and Redis keys of the run that still exist (there must be none)."""
    found: list[str] = []

    async def look() -> None:
        if backend in ("postgres", "cached"):
            server: FoundServer = request.getfixturevalue("aqe_postgres_server")
            url = make_url(server.url)
            conn = await asyncpg.connect(
                host=url.host, port=url.port, user=url.username, password=url.password,
                database=url.database or "postgres",
            )  # fmt: skip
            try:
                rows = await conn.fetch(
                    "SELECT datname FROM pg_database WHERE datname LIKE $1", f"aqe_bench_{run_id}%"
                )
                found.extend(row[0] for row in rows)
            finally:
                await conn.close()
        if backend in ("redis", "cached"):
            client = aredis.Redis.from_url(request.getfixturevalue("aqe_redis_url"))
            try:
                async for key in client.scan_iter(match=f"aqe-bench*:{run_id}:*", count=1000):
                    found.append(key.decode())
                    break
            finally:
                await client.aclose()

    asyncio.run(look())
    return found


@pytest.mark.parametrize("backend", BACKENDS)
def test_smoke_json_report(
    backend: str, runner: CliRunner, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    png = tmp_path / "ratios.png"
    plot = ["--plot", str(png)] if HAS_MATPLOTLIB else []
    args = ["bench", "--smoke", "--json", "--quiet", "--backend", backend, *plot]
    result = invoke(runner, *args, *server_args(request, backend))
    assert result.exit_code == 0, result.output

    report = json.loads(result.stdout)
    assert set(report) >= {"config", "environment", "results", "targets", "seed"}
    assert report["config"]["smoke"] is True
    assert report["config"]["backends"] == [backend]
    assert report["targets"] == []  # smoke runs judge nothing
    results = report["results"]
    assert {r["backend"] for r in results} == {backend}
    assert {r["operation"] for r in results} == EXPECTED[backend]
    for r in results:
        assert_side(r["ours"])
        assert_side(r["raw"])
        assert r["ratio"] > 0
        assert r["ratio_p50"] > 0
        assert r["unit"].endswith("/s")
        assert r["raw_twin"]
    by_op = {r["operation"]: r for r in results}
    assert by_op["store_many"]["items_per_call"] == 200
    assert by_op["store_concurrent"]["concurrent"] is True
    if backend in ("postgres", "redis"):
        assert {row["operation"] for row in report["seed"]} == {
            "Write",
            "Read",
            "Search (50 keys)",
            "Concurrent (50 ops)",
        }
    assert leftovers(request, backend, report["config"]["run_id"]) == []
    if HAS_MATPLOTLIB:
        assert report["plot"] == str(png)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.redis
def test_table_output(runner: CliRunner, request: pytest.FixtureRequest) -> None:
    result = invoke(
        runner, "bench", "--smoke", "-q", "--backend", "redis", *server_args(request, "redis")
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "lionagi_qe vs the raw driver" in out
    for column in ("ratio", "ours /s", "raw /s", "p50/p99", "stall ms"):
        assert column in out
    for operation in ("store_many (200)", "search (50 of 500)", "list_keys (50 of 500)"):
        assert operation in out
    assert "SMOKE RUN" in out
    assert "The seed's expected performance" in out
    assert "100-500 ops/s" in out  # the seed's Redis write expectation, beside ours
    assert "targets" not in out.lower().split("raw twins")[0]  # smoke: no verdicts


@pytest.mark.postgres
def test_growth_smoke(runner: CliRunner, request: pytest.FixtureRequest) -> None:
    args = ["bench", "--growth", "--smoke", "--json"]
    result = invoke(runner, *args, *server_args(request, "postgres"))
    assert result.exit_code == 0, result.output
    assert "cleanup_expired of 1,000 expired entries" in result.stderr  # tables: stderr
    report = json.loads(result.stdout)
    assert report["config"]["mode"] == "growth"
    operations = {r["operation"] for r in report["results"]}
    assert operations == {
        f"{op}@{size}"
        for op in ("retrieve", "search", "list_keys", "claim")
        for size in ("1k", "2k")
    }
    for r in report["results"]:
        assert_side(r["ours"])
        assert_side(r["raw"])
    cleanup = report["cleanup"]
    assert cleanup["removed"] == cleanup["expired"] == 1000
    for writer in (cleanup["writer_alone"], cleanup["writer_during_cleanup"]):
        assert writer["calls"] >= 1
        assert writer["p50_ms"] <= writer["p99_ms"] <= writer["max_ms"]
    assert leftovers(request, "postgres", report["config"]["run_id"]) == []


@pytest.mark.postgres
@pytest.mark.redis
def test_sigterm_stops_the_run_and_removes_what_it_created(
    request: pytest.FixtureRequest,
) -> None:
    server: FoundServer = request.getfixturevalue("aqe_postgres_server")
    options = BenchOptions.smoke_run(
        backends=("cached",),
        database_url=server.url,
        redis_url=request.getfixturevalue("aqe_redis_url"),
    )
    opened: list[str] = []

    def log(message: str) -> None:
        opened.append(message)
        if message == "cached: store":  # the database and both prefixes exist by now
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(BenchInterrupted):
        asyncio.run(run_bench(options, log))
    assert "cached: retrieve (cache hit)" not in opened  # stopped within the section
    run_id = next(m for m in opened if m.startswith("run "))[len("run ") :]
    assert leftovers(request, "cached", run_id) == []


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--backend", "mongodb"], "--backend must be among"),
        (["--size", "1234"], "--size must be a multiple of 50"),
        (["--plot", "ratios.svg"], "--plot writes a PNG"),
    ],
)
def test_bad_options_are_usage_errors(runner: CliRunner, args: list[str], fragment: str) -> None:
    result = invoke(runner, "bench", "--smoke", *args)
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message
    assert fragment in message
