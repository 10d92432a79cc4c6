"""The ``lionagi-qe`` command line, end to end, on SQLite files and on PostgreSQL.

Each command runs its own ``asyncio.run``, so these are plain (synchronous) tests.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url
from typer.testing import CliRunner, Result

from lionagi_qe.cli import app
from lionagi_qe.db import migrate

pytestmark = [pytest.mark.e2e]


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    """A runner in an empty working directory, with no AQE_* URLs from the environment."""
    monkeypatch.chdir(tmp_path)
    yield CliRunner(env={"AQE_DATABASE_URL": None, "AQE_REDIS_URL": None, "COLUMNS": "200"})


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """URL of a fresh (not yet migrated) SQLite file."""
    return f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"


def invoke(runner: CliRunner, *args: str, input: str | None = None) -> Result:
    """Run ``lionagi-qe *args``; an unexpected exception fails the test with its traceback."""
    result = runner.invoke(app, list(args), input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def ok_json(runner: CliRunner, *args: str) -> Any:
    """Run a command with ``--json`` that must succeed; return its one JSON document."""
    result = invoke(runner, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_one_line_error(result: Result, exit_code: int, *fragments: str) -> str:
    """The command failed with ``exit_code`` and exactly one ``error:`` line on stderr."""
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    message = result.stderr.strip()
    assert message.startswith("error: "), result.output
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message
    return message


# -- db --------------------------------------------------------------------------------------


def test_db_upgrade_current_check_downgrade_round_trip(runner: CliRunner, sqlite_url: str) -> None:
    head = migrate.head()
    url = ("--database-url", sqlite_url)

    before = ok_json(runner, "db", "current", *url)
    assert before == {
        "database_url": sqlite_url,
        "current": None,
        "head": head,
        "up_to_date": False,
    }
    empty_check = invoke(runner, "db", "check", *url)
    assert empty_check.exit_code == 1
    assert "add_table qe_memory" in empty_check.stdout

    upgraded = ok_json(runner, "db", "upgrade", *url)
    assert upgraded == {"database_url": sqlite_url, "from": None, "to": head, "head": head}
    assert ok_json(runner, "db", "current", *url)["up_to_date"] is True
    check = ok_json(runner, "db", "check", *url)
    assert check["drift"] is False
    assert check["differences"] == []
    human = invoke(runner, "db", "check", *url)
    assert human.exit_code == 0
    assert "no drift" in human.stdout
    again = invoke(runner, "db", "upgrade", *url)
    assert again.exit_code == 0
    assert f"already at {head}" in again.stdout

    downgraded = ok_json(runner, "db", "downgrade", *url)
    assert downgraded["from"] == head
    assert downgraded["to"] is None
    current = invoke(runner, "db", "current", *url)
    assert current.exit_code == 0
    assert "none" in current.stdout
    assert "lionagi-qe db upgrade" in current.stdout

    upgraded_again = invoke(runner, "db", "upgrade", "head", *url)
    assert upgraded_again.exit_code == 0
    assert "upgraded" in upgraded_again.stdout
    assert ok_json(runner, "db", "current", *url)["current"] == head


def test_db_check_lists_drift_and_exits_1(
    runner: CliRunner, sqlite_url: str, tmp_path: Path
) -> None:
    assert invoke(runner, "db", "upgrade", "--database-url", sqlite_url).exit_code == 0
    with sqlite3.connect(tmp_path / "cli.db") as connection:
        connection.execute("ALTER TABLE qe_memory ADD COLUMN stray_column INTEGER")

    result = invoke(runner, "db", "check", "--database-url", sqlite_url, "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["drift"] is True
    assert any("stray_column" in line for line in report["differences"])

    human = invoke(runner, "db", "check", "--database-url", sqlite_url)
    assert human.exit_code == 1
    assert "remove_column qe_memory.stray_column" in human.stdout


def test_db_upgrade_to_an_unknown_revision_is_one_line(runner: CliRunner, sqlite_url: str) -> None:
    result = invoke(runner, "db", "upgrade", "no-such-revision", "--database-url", sqlite_url)
    assert_one_line_error(result, 1, "no-such-revision")


# -- memory ----------------------------------------------------------------------------------


def exercise_memory_commands(runner: CliRunner, database_url: str, prefix: str) -> None:
    """put/get/ls/search/delete/stats/cleanup, with and without --json, under ``prefix``."""
    url = ("--database-url", database_url)
    k1, k2, k3, k4 = (f"{prefix}{name}" for name in ("k1", "k2", "k3", "short-lived"))

    assert ok_json(runner, "memory", "put", k1, '{"suite": "auth", "tests": [1, 2]}', *url) == {
        "key": k1,
        "version": 1,
    }
    assert (
        ok_json(runner, "memory", "put", k1, '{"suite": "auth", "tests": [1, 2, 3]}', *url)[
            "version"
        ]
        == 2
    )
    stored = invoke(
        runner, "memory", "put", k2, '"plain text"', "--partition", "results", "--ttl", "600", *url
    )
    assert stored.exit_code == 0, stored.output
    assert "stored" in stored.stdout
    assert "version 1" in stored.stdout
    assert ok_json(runner, "memory", "put", k3, "null", *url)["version"] == 1
    from_stdin = invoke(runner, "memory", "put", k3, "-", "--json", *url, input='{"x": 1}')
    assert json.loads(from_stdin.stdout)["version"] == 2
    assert ok_json(runner, "memory", "put", k3, "null", *url)["version"] == 3

    assert ok_json(runner, "memory", "get", k1, *url) == {"suite": "auth", "tests": [1, 2, 3]}
    assert ok_json(runner, "memory", "get", k2, *url) == "plain text"
    assert ok_json(runner, "memory", "get", k3, *url) is None
    shown = invoke(runner, "memory", "get", k2, *url)
    assert shown.exit_code == 0
    assert '"plain text"' in shown.stdout
    assert "partition results" in shown.stdout
    assert "version 1" in shown.stdout

    assert ok_json(runner, "memory", "ls", prefix, *url) == [k1, k2, k3]
    listed = invoke(runner, "memory", "ls", prefix, *url)
    assert listed.exit_code == 0
    assert all(key in listed.stdout for key in (k1, k2, k3))
    assert "3 key(s)" in listed.stdout

    assert ok_json(runner, "memory", "search", f"{prefix}k[12]", *url) == {
        k1: {"suite": "auth", "tests": [1, 2, 3]},
        k2: "plain text",
    }
    assert list(ok_json(runner, "memory", "search", f"{prefix}k*", "--limit", "1", *url)) == [k1]
    assert list(ok_json(runner, "memory", "search", "k[23]$", "--regex", *url)) == [k2, k3]
    found = invoke(runner, "memory", "search", f"{prefix}*", *url)
    assert found.exit_code == 0
    assert '{"suite":"auth","tests":[1,2,3]}' in found.stdout
    assert "3 match(es)" in found.stdout

    stats = ok_json(runner, "memory", "stats", *url)
    assert stats["total_keys"] >= 3
    assert stats["partitions"]["results"] >= 1
    assert stats["size_bytes"] > 0
    human_stats = invoke(runner, "memory", "stats", *url)
    assert human_stats.exit_code == 0
    assert "total_keys" in human_stats.stdout
    assert "results" in human_stats.stdout

    assert ok_json(runner, "memory", "delete", k1, *url) == {"key": k1, "deleted": True}
    assert ok_json(runner, "memory", "delete", k1, *url) == {"key": k1, "deleted": False}
    assert "nothing deleted" in invoke(runner, "memory", "delete", k1, *url).stdout
    missing = invoke(runner, "memory", "get", k1, *url)
    assert_one_line_error(missing, 1, f"no live entry for '{k1}'")
    missing_json = invoke(runner, "memory", "get", k1, "--json", *url)
    assert missing_json.exit_code == 1
    assert json.loads(missing_json.stdout) is None

    assert ok_json(runner, "memory", "put", k4, "1", "--ttl", "0.05", *url)["version"] == 1
    time.sleep(0.3)
    assert ok_json(runner, "memory", "get", k2, *url) == "plain text"
    assert invoke(runner, "memory", "get", k4, *url).exit_code == 1
    assert ok_json(runner, "memory", "cleanup", *url)["removed"] >= 1
    assert "removed 0 expired entries" in invoke(runner, "memory", "cleanup", *url).stdout

    for key in (k2, k3):
        assert ok_json(runner, "memory", "delete", key, *url)["deleted"] is True
    assert ok_json(runner, "memory", "ls", prefix, *url) == []


def test_memory_commands_on_sqlite(runner: CliRunner, sqlite_url: str) -> None:
    exercise_memory_commands(runner, sqlite_url, "aqe/cli-test/")


def test_memory_uses_the_embedded_sqlite_default(runner: CliRunner, tmp_path: Path) -> None:
    result = invoke(runner, "memory", "put", "aqe/default/x", "[1, 2]")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "aqe-memory.db").is_file()
    assert ok_json(runner, "memory", "get", "aqe/default/x") == [1, 2]


@pytest.mark.parametrize(
    ("args", "exit_code", "fragment"),
    [
        (("memory", "put", "aqe/x", "{bad json"), 2, "not valid JSON"),
        (("memory", "put", "aqe/x", "{bad json", "--json"), 2, "not valid JSON"),
        (("memory", "put", "not-aqe/x", "1"), 1, "must start with 'aqe/' namespace"),
        (("memory", "get", "x"), 1, "must start with 'aqe/' namespace"),
        (("memory", "get", "x", "--json"), 1, "must start with 'aqe/' namespace"),
        (("memory", "delete", "x"), 1, "must start with 'aqe/' namespace"),
        (("memory", "put", "aqe/x", "NaN"), 2, "NaN is not a JSON value"),
        (("memory", "put", "aqe/x", "[-Infinity]"), 2, "-Infinity is not a JSON value"),
        (("memory", "put", "aqe/x", '"nul \\u0000"'), 1, "NUL"),
        (("memory", "put", "aqe/x", "1", "--ttl", "0"), 1, "ttl"),
        (("memory", "put", "aqe/x", "1", "--partition", ""), 1, "partition"),
        (("memory", "search", "aqe/[abc"), 1, "["),
        (("memory", "search", "(", "--regex"), 1, "("),
    ],
)
def test_bad_input_is_one_line_error(
    runner: CliRunner, sqlite_url: str, args: tuple[str, ...], exit_code: int, fragment: str
) -> None:
    result = invoke(runner, *args, "--database-url", sqlite_url)
    message = assert_one_line_error(result, exit_code)
    assert fragment.lower() in message.lower()
    assert result.stdout == ""


def test_unreachable_database_is_one_line_without_password(runner: CliRunner) -> None:
    url = "postgresql+asyncpg://agent:s3cret-pw@127.0.0.1:1/aqe"
    for args in (("memory", "ls"), ("db", "current"), ("db", "upgrade")):
        result = invoke(runner, *args, "--database-url", url)
        assert_one_line_error(result, 1)
        assert "s3cret-pw" not in result.output


def test_unreachable_and_unsupported_urls_are_one_line(runner: CliRunner, sqlite_url: str) -> None:
    redis_alone = invoke(
        runner, "memory", "ls", "--database-url", "redis://:secret-pw@127.0.0.1:1/0"
    )
    assert_one_line_error(redis_alone, 1)
    assert "secret-pw" not in redis_alone.output
    # The cache tier falls back to the database when Redis cannot be reached.
    cached = invoke(
        runner, "memory", "ls", "--database-url", sqlite_url, "--redis-url", "redis://127.0.0.1:1/0"
    )
    assert cached.exit_code == 0, cached.output
    assert (
        invoke(runner, "memory", "ls", "--database-url", sqlite_url, "--redis-url", "").exit_code
        == 0
    )
    mysql = invoke(runner, "db", "current", "--database-url", "mysql://u:pw@host/db")
    assert_one_line_error(mysql, 1, "unsupported database")


def test_invalid_settings_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner(env={"AQE_DATABASE_URL": None, "AQE_REDIS_URL": None, "AQE_POOL_SIZE": "x"})
    result = invoke(runner, "memory", "ls")
    assert_one_line_error(result, 1, "invalid settings", "AQE_POOL_SIZE")


def test_usage_errors_exit_2(runner: CliRunner) -> None:
    assert invoke(runner, "memory", "get").exit_code == 2
    assert invoke(runner, "memory", "search", "aqe/*", "--limit", "-1").exit_code == 2
    assert invoke(runner, "demo", "--agents", "0").exit_code == 2


# -- PostgreSQL ------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.postgres
def test_memory_commands_on_postgres(runner: CliRunner, aqe_database_url: str) -> None:
    exercise_memory_commands(runner, aqe_database_url, f"aqe/cli-test/{uuid.uuid4().hex[:8]}/")


@pytest.mark.integration
@pytest.mark.postgres
def test_db_current_and_check_on_postgres(runner: CliRunner, aqe_database_url: str) -> None:
    parsed = make_url(aqe_database_url)
    # With no password in the fixture's URL the server trusts us, so any password will do.
    password = parsed.password or "s3cret-pw"
    url = parsed.set(password=password).render_as_string(hide_password=False)
    current = invoke(runner, "db", "current", "--database-url", url, "--json")
    assert current.exit_code == 0, current.output
    assert password not in current.output
    report = json.loads(current.stdout)
    assert report["up_to_date"] is True
    assert f"{parsed.username}:***@" in report["database_url"]
    human = invoke(runner, "db", "current", "--database-url", url)
    assert human.exit_code == 0
    assert password not in human.output
    check = ok_json(runner, "db", "check", "--database-url", url)
    assert check == {
        "database_url": report["database_url"],
        "current": migrate.head(),
        "head": migrate.head(),
        "drift": False,
        "differences": [],
    }
