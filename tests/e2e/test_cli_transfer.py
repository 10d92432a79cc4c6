"""``lionagi-qe export``, ``import`` and ``migrate`` end to end (CliRunner, real stores)."""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url
from typer.testing import CliRunner, Result

import lionagi_qe.cli.transfer as cli_transfer
from lionagi_qe.backends.redis import RedisMemory
from lionagi_qe.backends.sql import PostgresMemory
from lionagi_qe.cache import CachedMemory
from lionagi_qe.cli import app
from lionagi_qe.transfer import MigrateSummary, verify

pytestmark = [pytest.mark.e2e]


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    """A runner in an empty working directory, with no AQE_* URLs from the environment."""
    monkeypatch.chdir(tmp_path)
    yield CliRunner(env={"AQE_DATABASE_URL": None, "AQE_REDIS_URL": None, "COLUMNS": "200"})


@pytest.fixture
def redis_prefix(aqe_redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Redis stores and caches the CLI opens write under a prefix of this test's own."""
    prefix = f"aqe-test:{uuid.uuid4().hex[:12]}:"
    monkeypatch.setattr(
        "lionagi_qe.factory.RedisMemory", functools.partial(RedisMemory, prefix=prefix + "s:")
    )
    monkeypatch.setattr(
        "lionagi_qe.factory.CachedMemory", functools.partial(CachedMemory, prefix=prefix + "c:")
    )
    yield prefix

    async def cleanup() -> None:
        client = RedisMemory(url=aqe_redis_url).client
        try:
            keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
            if keys:
                await client.unlink(*keys)
        finally:
            await client.aclose()

    asyncio.run(cleanup())


def _sqlite(tmp_path: Path, name: str) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / name}"


def invoke(runner: CliRunner, *args: str) -> Result:
    """Run ``lionagi-qe *args``; an unexpected exception fails the test with its traceback."""
    result = runner.invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def ok_json(runner: CliRunner, *args: str) -> Any:
    """Run a command with ``--json`` that must succeed; stdout must be one JSON document."""
    result = invoke(runner, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def one_line_error(result: Result, exit_code: int, *fragments: str) -> str:
    """The command failed with ``exit_code`` and one ``error:`` line ends stderr."""
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in last, last
    return last


def put(runner: CliRunner, url: str, key: str, value: str, *options: str) -> None:
    result = invoke(runner, "memory", "put", key, value, *options, "--database-url", url)
    assert result.exit_code == 0, result.output


def seed(runner: CliRunner, url: str, prefix: str = "aqe/t/") -> None:
    put(runner, url, f"{prefix}plain", '{"f": 0.30000000000000004, "n": null, "i": 1}')
    put(runner, url, f"{prefix}ttl", '"beat"', "--ttl", "300", "--partition", "heartbeats")
    put(runner, url, f"{prefix}\u00fc\U0001f600", "[1.0, true]", "--partition", "results")
    put(runner, url, "aqe/other/x", "1")


def entries(runner: CliRunner, url: str, *redis: str) -> dict[str, Any]:
    """Every live value, read back through ``memory search``."""
    found: dict[str, Any] = ok_json(
        runner, "memory", "search", "aqe/*", "--database-url", url, *redis
    )
    return found


# -- export / import ---------------------------------------------------------------------------


def test_export_then_import_round_trip(runner: CliRunner, tmp_path: Path) -> None:
    source, target = _sqlite(tmp_path, "a.db"), _sqlite(tmp_path, "b.db")
    seed(runner, source)
    exported = invoke(runner, "export", "dump.jsonl", "--database-url", source, "--json")
    assert exported.exit_code == 0, exported.output
    summary = json.loads(exported.stdout)  # stdout holds the one document, nothing else
    assert summary["entries"] == 4 and summary["file"] == "dump.jsonl" and summary["prefix"] is None
    assert summary["bytes"] == (tmp_path / "dump.jsonl").stat().st_size
    assert summary["entries_per_second"] > 0
    assert "exporting" in exported.stderr and "4/4" in exported.stderr  # the progress bar

    lines = (tmp_path / "dump.jsonl").read_text("utf-8").split("\n")[:-1]
    documents = {doc["key"]: doc for doc in map(json.loads, lines)}
    assert documents["aqe/t/ttl"]["partition"] == "heartbeats"
    assert 290 < documents["aqe/t/ttl"]["ttl"] <= 300
    assert documents["aqe/t/plain"]["ttl"] is None

    imported = ok_json(runner, "import", "dump.jsonl", "--database-url", target)
    assert (imported["lines"], imported["entries"]) == (4, 4)
    assert entries(runner, target) == entries(runner, source)
    assert entries(runner, target)["aqe/t/\u00fc\U0001f600"] == [1.0, True]
    stats = ok_json(runner, "memory", "stats", "--database-url", target)
    assert stats["partitions"] == {"default": 2, "heartbeats": 1, "results": 1}
    shown = invoke(runner, "memory", "get", "aqe/t/ttl", "--database-url", target)
    assert "partition heartbeats" in shown.stdout and "expires 20" in shown.stdout


def test_export_prefix_and_human_output(runner: CliRunner, tmp_path: Path) -> None:
    source = _sqlite(tmp_path, "a.db")
    seed(runner, source)
    result = invoke(runner, "export", "t.jsonl", "--prefix", "aqe/t/", "--database-url", source)
    assert result.exit_code == 0, result.output
    assert "exported 3 entries" in result.stdout and "t.jsonl" in result.stdout
    keys = [json.loads(line)["key"] for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert keys == ["aqe/t/plain", "aqe/t/ttl", "aqe/t/\u00fc\U0001f600"]
    imported = invoke(runner, "import", "t.jsonl", "--database-url", _sqlite(tmp_path, "b.db"))
    assert imported.exit_code == 0, imported.output
    assert "imported 3 entries" in imported.stdout


def test_import_of_a_malformed_file_names_the_line_and_writes_nothing(
    runner: CliRunner, tmp_path: Path
) -> None:
    target = _sqlite(tmp_path, "b.db")
    put(runner, target, "aqe/keep", '"me"')
    (tmp_path / "bad.jsonl").write_text(
        '{"key": "aqe/a", "value": 1}\n'
        '{"key": "aqe/b", "value": 2}\n'
        '{"key": "aqe/c", "value": NaN}\n'
    )
    result = invoke(runner, "import", "bad.jsonl", "--database-url", target, "--json")
    one_line_error(result, 1, "line 3:", "NaN")
    assert result.stdout == ""
    assert ok_json(runner, "memory", "ls", "--database-url", target) == ["aqe/keep"]
    (tmp_path / "bad.jsonl").write_text('{"key": "x/a", "value": 1}\n')
    one_line_error(
        invoke(runner, "import", "bad.jsonl", "--database-url", target),
        1,
        "line 1:",
        "must start with 'aqe/' namespace",
    )


def test_file_problems_are_usage_errors(runner: CliRunner, tmp_path: Path) -> None:
    url = ("--database-url", _sqlite(tmp_path, "a.db"))
    assert invoke(runner, "import", "missing.jsonl", *url).exit_code == 2
    one_line_error(invoke(runner, "export", "no/such/dir/out.jsonl", *url), 2, "no/such/dir")
    (tmp_path / "folder").mkdir()
    assert invoke(runner, "export", "folder", *url).exit_code == 2
    assert invoke(runner, "export", "out.jsonl", "--batch-size", "0", *url).exit_code == 2


# -- migrate -----------------------------------------------------------------------------------


def test_migrate_between_sqlite_files_verifies_and_is_idempotent(
    runner: CliRunner, tmp_path: Path
) -> None:
    source, target = _sqlite(tmp_path, "a.db"), _sqlite(tmp_path, "b.db")
    seed(runner, source)
    put(runner, target, "aqe/zz/already", "0")
    result = invoke(runner, "migrate", "--from", source, "--to", target, "--json")
    assert result.exit_code == 0, result.output
    first = json.loads(result.stdout)
    assert first["source"] == {"url": source, "redis_url": None}
    assert first["target"] == {"url": target, "redis_url": None}
    assert (first["read"], first["written"], first["expired"], first["ok"]) == (4, 4, 0, True)
    check = first["verification"]
    assert (check["source"], check["matched"], check["missing"], check["different"]) == (4, 4, 0, 0)
    assert check["extra"] == 1 and check["ok"] is True
    assert "copying" in result.stderr and "verifying" in result.stderr
    state = entries(runner, target)
    second = ok_json(runner, "migrate", "--from", source, "--to", target)
    assert second["verification"]["matched"] == 4
    assert entries(runner, target) == state
    assert ok_json(runner, "memory", "stats", "--database-url", target)["total_keys"] == 5

    human = invoke(runner, "migrate", "--from", source, "--to", target, "--prefix", "aqe/t/")
    assert human.exit_code == 0, human.output
    assert "copied 3 of 3 entries" in human.stdout
    assert "verified: 3 of 3 source entries match" in human.stdout


def test_migrate_defaults_a_side_to_database_url(runner: CliRunner, tmp_path: Path) -> None:
    source, target = _sqlite(tmp_path, "a.db"), _sqlite(tmp_path, "b.db")
    seed(runner, source)
    moved = ok_json(runner, "migrate", "--to", target, "--database-url", source, "--redis-url", "")
    assert moved["source"]["url"] == source and moved["written"] == 4
    back = ok_json(
        runner, "migrate", "--from", target, "--prefix", "aqe/t/", "--database-url", source
    )
    assert back["target"]["url"] == source and back["verification"]["matched"] == 3


def test_migrate_usage_errors(runner: CliRunner, tmp_path: Path) -> None:
    url = _sqlite(tmp_path, "a.db")
    one_line_error(invoke(runner, "migrate"), 2, "--from or --to")
    one_line_error(invoke(runner, "migrate", "--from", url, "--to", url), 2, "same store")
    assert invoke(runner, "migrate", "--from", url, "--to", "x", "--batch-size", "0").exit_code == 2
    one_line_error(
        invoke(
            runner,
            "migrate",
            "--from",
            url,
            "--to",
            _sqlite(tmp_path, "b.db"),
            "--prefix",
            "aqe/\x01",
        ),
        1,
        "prefix",
    )


def test_failed_verification_exits_1(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target = _sqlite(tmp_path, "a.db"), _sqlite(tmp_path, "b.db")
    seed(runner, source)
    real = cli_transfer.migrate

    async def lossy(origin: Any, destination: Any, **options: Any) -> MigrateSummary:
        # A target that loses a write after acknowledging it.
        options["check"] = False
        copied = await real(origin, destination, **options)
        await destination.delete("aqe/t/plain")
        await destination.store("aqe/t/ttl", "changed")
        check = await verify(origin, destination)
        return MigrateSummary(copied.read, copied.written, 0, copied.seconds, check)

    monkeypatch.setattr(cli_transfer, "migrate", lossy)
    result = invoke(runner, "migrate", "--from", source, "--to", target, "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["verification"]["missing"] == 1 and report["verification"]["different"] == 1
    assert report["verification"]["examples"] == ["aqe/t/plain", "aqe/t/ttl"]
    human = invoke(runner, "migrate", "--from", source, "--to", target)
    one_line_error(human, 1, "verification failed: 1 missing, 1 different", "aqe/t/plain")


@pytest.mark.integration
@pytest.mark.redis
@pytest.mark.postgres
def test_migrate_redis_to_postgres_and_back_through_a_cache(
    runner: CliRunner, tmp_path: Path, aqe_database_url: str, aqe_redis_url: str, redis_prefix: str
) -> None:
    keys = f"aqe/cli-transfer/{uuid.uuid4().hex[:8]}/"
    seed(runner, aqe_redis_url, keys)
    # A password on the PostgreSQL URL (the test server trusts us; any password will do).
    password = "s3cret-pw"
    database = make_url(aqe_database_url).set(password=password)
    pg_url = database.render_as_string(hide_password=False)
    try:
        result = invoke(
            runner, "migrate", "--from", aqe_redis_url, "--to", pg_url, "--prefix", keys, "--json"
        )
        assert result.exit_code == 0, result.output
        assert password not in result.output
        report = json.loads(result.stdout)
        assert report["target"]["url"] == database.render_as_string(hide_password=True)
        assert report["verification"]["matched"] == 3 and report["ok"] is True
        on_postgres = ok_json(runner, "memory", "search", f"{keys}*", "--database-url", pg_url)
        assert on_postgres == ok_json(
            runner, "memory", "search", f"{keys}*", "--database-url", aqe_redis_url
        )

        # Into a cached store (SQLite + this test's Redis cache), then out of one.
        cached = _sqlite(tmp_path, "cached.db")
        into = ok_json(
            runner, "migrate", "--from", pg_url, "--to", cached, "--to-redis", aqe_redis_url
        )
        assert into["target"]["redis_url"] is not None and into["verification"]["matched"] == 3
        out = ok_json(
            runner,
            "migrate",
            "--from",
            cached,
            "--from-redis",
            aqe_redis_url,
            "--to",
            _sqlite(tmp_path, "plain.db"),
        )
        assert out["ok"] is True and out["read"] == 3
    finally:
        asyncio.run(_delete_prefix(aqe_database_url, keys))


async def _delete_prefix(url: str, prefix: str) -> None:
    memory = PostgresMemory(url)
    try:
        for key in await memory.list_keys(prefix):
            await memory.delete(key)
    finally:
        await memory.close()


def test_unreachable_source_is_one_line_without_password(runner: CliRunner, tmp_path: Path) -> None:
    url = "postgresql+asyncpg://agent:s3cret-pw@127.0.0.1:1/aqe"
    result = invoke(runner, "migrate", "--from", url, "--to", _sqlite(tmp_path, "b.db"))
    one_line_error(result, 1)
    assert "s3cret-pw" not in result.output
    exported = invoke(runner, "export", "x.jsonl", "--database-url", url)
    one_line_error(exported, 1)
    assert "s3cret-pw" not in exported.output
    assert not (tmp_path / "x.jsonl").exists()
