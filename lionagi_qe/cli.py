"""``lionagi-qe``: the command line (typer + rich).

Every command takes ``--database-url`` and ``--redis-url`` (default: ``Settings``, i.e. the
``AQE_DATABASE_URL`` / ``AQE_REDIS_URL`` environment variables or ``.env``, else the embedded
SQLite file ``./aqe-memory.db``); an empty ``--redis-url ""`` turns a configured cache tier off.
Commands that print data take ``--json`` and then write exactly one JSON document to stdout.

Errors are one red line ``error: <message>`` on stderr, never a traceback, with passwords
masked. Exit codes: 0 success, 1 a failed operation (a missing key, a storage error, drift found
by ``db check``), 2 a usage error (bad options, a value that is not JSON), 130 interrupted.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.json import JSON
from rich.table import Table
from rich.text import Text
from sqlalchemy import Column, make_url
from sqlalchemy import Table as SqlTable
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from lionagi_qe import __version__
from lionagi_qe.backends.protocol import MemoryBackend
from lionagi_qe.config import Settings, mask_url
from lionagi_qe.errors import PersistenceError

__all__ = ["app", "main"]

T = TypeVar("T")

#: Exit code of a failed operation.
EXIT_FAILURE = 1
#: Exit code of a usage error (what typer/click use for bad options too).
EXIT_USAGE = 2
#: Exit code after Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="lionagi-qe",
    help="Persistence for fleets of QE agents: memory, migrations and a demo fleet.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Manage the database schema (Alembic migrations).", no_args_is_help=True)
memory_app = typer.Typer(help="Read and write the agent memory store.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(memory_app, name="memory")

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="Database URL (PostgreSQL or SQLite). Default: AQE_DATABASE_URL, else the "
        "embedded SQLite file ./aqe-memory.db.",
        show_default=False,
    ),
]
RedisUrl = Annotated[
    str | None,
    typer.Option(
        "--redis-url",
        help='Redis URL of the cache tier. Default: AQE_REDIS_URL (none); "" turns it off.',
        show_default=False,
    ),
]
JsonOutput = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout (for scripts).")
]


# -- output and errors -----------------------------------------------------------------------


def _stdout() -> Console:
    # Built per call: the test runner swaps sys.stdout between invocations.
    return Console(highlight=False)


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


def _emit_json(document: Any) -> None:
    """Write ``document`` as one JSON document (no rich formatting, no wrapping)."""
    sys.stdout.write(json.dumps(document, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


class _Secrets:
    """Passwords of the URLs in use, to scrub from any message before it is shown."""

    def __init__(self) -> None:
        self.values: set[str] = set()

    def add(self, url: str | None) -> None:
        if not url:
            return
        try:
            password = make_url(url).password
        except (ArgumentError, ValueError):
            try:
                password = urlsplit(url).password
            except ValueError:
                password = None
        if password:
            self.values.add(str(password))

    def scrub(self, text: str) -> str:
        for secret in sorted(self.values, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text


_secrets = _Secrets()


def _fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Print ``error: message`` as one red line on stderr and exit with ``code``."""
    line = " ".join(_secrets.scrub(message).split()) or "unknown error"
    _stderr().print(
        Text(f"error: {line}", style="bold red"), soft_wrap=True, markup=False, highlight=False
    )
    raise typer.Exit(code)


@contextmanager
def _reported_errors() -> Iterator[None]:
    """Turn every exception into one ``error:`` line and an exit code (never a traceback)."""
    from alembic.util import CommandError

    from lionagi_qe.db.translate import translate

    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        _fail("interrupted", EXIT_INTERRUPTED)
    except (PersistenceError, ValueError, CommandError) as exc:
        # ValueError: bad input (InvalidKeyError, InvalidTTLError, ... are ValueErrors too).
        _fail(str(exc) or type(exc).__name__)
    except (SQLAlchemyError, ConnectionError) as exc:
        _fail(str(translate(exc)))
    except TimeoutError:
        _fail("timed out")
    except OSError as exc:
        _fail(str(translate(exc)))
    except Exception as exc:
        _fail(f"unexpected {type(exc).__name__}: {exc}")


def _run(work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work()`` in a fresh event loop, reporting errors as one line."""
    with _reported_errors():

        async def runner() -> T:
            return await work()

        return asyncio.run(runner())
    raise AssertionError("unreachable")  # pragma: no cover


def _resolve_urls(database_url: str | None, redis_url: str | None) -> tuple[str, str | None]:
    """The URLs to use: the options, else ``Settings``; remember their passwords to scrub."""
    if database_url is None or redis_url is None:
        try:
            settings = Settings()
        except ValidationError as exc:
            problems = "; ".join(
                f"AQE_{'_'.join(map(str, error['loc'])).upper()}: {error['msg']}"
                for error in exc.errors()
            )
            _fail(f"invalid settings: {problems}")
        database_url = database_url or settings.database_url
        redis_url = settings.redis_url if redis_url is None else redis_url
    redis = redis_url or None
    _secrets.add(database_url)
    _secrets.add(redis)
    return database_url, redis


# -- db --------------------------------------------------------------------------------------


async def _on_engine(database_url: str, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Run ``work`` on a throwaway engine (no pool), translating driver errors."""
    from lionagi_qe.db.engine import create_engine
    from lionagi_qe.db.translate import translate

    engine = create_engine(database_url, poolclass=NullPool)
    try:
        return await work(engine)
    except (SQLAlchemyError, OSError) as exc:
        raise translate(exc) from exc
    finally:
        await engine.dispose()


def _describe_difference(diff: Any) -> str:
    """One readable line for an item of Alembic's ``compare_metadata`` output."""
    if isinstance(diff, list):
        return "; ".join(_describe_difference(item) for item in diff)
    if not (isinstance(diff, tuple) and diff and isinstance(diff[0], str)):
        return str(diff)
    operation = diff[0]
    if operation.startswith("modify_") and len(diff) >= 7:
        _op, _schema, table, column, _info, old, new = diff[:7]
        return f"{operation} {table}.{column}: {old!r} -> {new!r}"
    target = diff[-1]
    if isinstance(target, SqlTable):
        return f"{operation} {target.name}"
    if isinstance(target, Column):
        table_name = diff[2] if len(diff) >= 4 and isinstance(diff[2], str) else "?"
        return f"{operation} {table_name}.{target.name}"
    name = getattr(target, "name", None) or str(target)
    table = getattr(getattr(target, "table", None), "name", None)
    return f"{operation} {name}" + (f" on {table}" if table else "")


def _revision_text(revision: str | None) -> str:
    return revision if revision is not None else "none (empty database)"


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    database_url: DatabaseUrl = None,
    redis_url: RedisUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Upgrade the database schema to REVISION (default: head)."""
    _migrate("upgrade", revision, database_url, redis_url, json_output)


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "base",
    database_url: DatabaseUrl = None,
    redis_url: RedisUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Downgrade the database schema to REVISION (default: base, which drops every table)."""
    _migrate("downgrade", revision, database_url, redis_url, json_output)


def _migrate(
    direction: str,
    revision: str,
    database_url: str | None,
    redis_url: str | None,
    json_output: bool,
) -> None:
    from lionagi_qe.db import migrate

    url, _redis = _resolve_urls(database_url, redis_url)

    async def work(engine: AsyncEngine) -> tuple[str | None, str | None, str]:
        before = await migrate.current(engine)
        if direction == "upgrade":
            await migrate.upgrade(engine, revision)
        else:
            await migrate.downgrade(engine, revision)
        return before, await migrate.current(engine), migrate.head()

    before, after, newest = _run(lambda: _on_engine(url, work))
    if json_output:
        _emit_json({"database_url": mask_url(url), "from": before, "to": after, "head": newest})
        return
    console = _stdout()
    where = Text(str(mask_url(url)), style="cyan")
    if before == after:
        console.print(Text.assemble("already at ", _revision_text(after), " on ", where))
    else:
        past = "upgraded" if direction == "upgrade" else "downgraded"
        console.print(
            Text.assemble(
                (past, "green"),
                f" {_revision_text(before)} → {_revision_text(after)} on ",
                where,
            )
        )


@db_app.command("current")
def db_current(
    database_url: DatabaseUrl = None,
    redis_url: RedisUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Show the revision the database is at, and the newest one known."""
    from lionagi_qe.db import migrate

    url, _redis = _resolve_urls(database_url, redis_url)

    async def work(engine: AsyncEngine) -> tuple[str | None, str]:
        return await migrate.current(engine), migrate.head()

    revision, newest = _run(lambda: _on_engine(url, work))
    if json_output:
        _emit_json(
            {
                "database_url": mask_url(url),
                "current": revision,
                "head": newest,
                "up_to_date": revision == newest,
            }
        )
        return
    line = Text.assemble(_revision_text(revision))
    if revision == newest:
        line.append(" (head)", style="green")
    else:
        line.append(f" (head is {newest}: run `lionagi-qe db upgrade`)", style="yellow")
    _stdout().print(line)


@db_app.command("check")
def db_check(
    database_url: DatabaseUrl = None,
    redis_url: RedisUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Compare the models with the database; exit 1 and list the differences on drift."""
    from lionagi_qe.db import migrate

    url, _redis = _resolve_urls(database_url, redis_url)

    async def work(engine: AsyncEngine) -> tuple[str | None, list[Any], str]:
        return await migrate.current(engine), await migrate.check(engine), migrate.head()

    revision, raw, newest = _run(lambda: _on_engine(url, work))
    differences = [_describe_difference(diff) for diff in raw]
    if revision != newest:
        differences.insert(0, f"database is at revision {revision}, head is {newest}")
    if json_output:
        _emit_json(
            {
                "database_url": mask_url(url),
                "current": revision,
                "head": newest,
                "drift": bool(differences),
                "differences": differences,
            }
        )
    elif differences:
        table = Table(title="Drift between models and database", title_justify="left")
        table.add_column("#", justify="right", style="dim")
        table.add_column("difference", overflow="fold")
        for number, difference in enumerate(differences, 1):
            table.add_row(str(number), Text(difference))
        _stdout().print(table)
    else:
        _stdout().print(
            Text.assemble(("no drift", "green"), f": models match the database at {revision}")
        )
    if differences:
        raise typer.Exit(EXIT_FAILURE)


# -- memory ----------------------------------------------------------------------------------


def _with_memory(
    database_url: str | None,
    redis_url: str | None,
    work: Callable[[MemoryBackend], Awaitable[T]],
) -> T:
    """Open the backend the URLs describe, run ``work`` on it and always close it."""
    from lionagi_qe.factory import open_memory

    url, redis = _resolve_urls(database_url, redis_url)

    async def run() -> T:
        memory = open_memory(url, redis)
        try:
            return await work(memory)
        finally:
            await memory.close()

    return _run(run)


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON (and the store) does not.
    raise ValueError(f"{name} is not a JSON value")


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


@memory_app.command("get")
def memory_get(
    key: Annotated[str, typer.Argument(help="The key, e.g. aqe/agent-1/result.")],
    database_url: DatabaseUrl = None,
    redis_url: RedisUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Print the live value of KEY (exit 1 if there is none)."""
    entry = _with_memory(database_url, redis_url, lambda memory: memory.get_entry(key))
    if entry is None:
        if json_output:
            _emit_json(None)
            raise typer.Exit(EXIT_FAILURE)
        _fail(f"no live entry for {key!r}")
    if json_output:
        _emit_json(entry.value)
        return
    console = _stdout()
    console.print(JSON.from_data(entry.value, ensure_ascii=False, default=str))
    expires = entry.expires_at.isoformat() if entry.expires_at is not None else "never"
    console.print(
        Text(
            f"partition {entry.partition} · version {entry.version} · "
            f"updated {entry.updated_at.isoformat()} · expires {expires}",
            style="dim",
        ),
        soft_wrap=True,
    )


@memory_app.command("put")
def memory_put(
    key: Annotated[str, typer.Argument(help="The key, e.g. aqe/agent-1/result.")],
    value: Annotated[str, typer.Argument(help='The value as JSON ("-" reads it from stdin).')],
    ttl: Annotated[
        float | None, typer.Option("--ttl", help="Seconds until the entry expires.")
    ] = None,
    partition: Annotated[str, typer.Option("--partition", help="Partition label.")] = "default",
    database_url: DatabaseUrl = None,
    redis_url: RedisUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Store the JSON VALUE under KEY; print the entry's new version."""
    text = sys.stdin.read() if value == "-" else value
    try:
        parsed = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        _fail(f"VALUE is not valid JSON: {exc}", EXIT_USAGE)
    version = _with_memory(
        database_url,
        redis_url,
        lambda memory: memory.store(key, parsed, ttl=ttl, partition=partition),
    )
    if json_output:
        _emit_json({"key": key, "version": version})
        return
    expiry = f", expires in {ttl:g}s" if ttl is not None else ""
    _stdout().print(
        Text.assemble(
            ("stored ", "green"),
            (key, "cyan"),
            f" (version {version}, partition {partition}{expiry})",
        )
    )


@memory_app.command("delete")
def memory_delete(
    key: Annotated[str, typer.Argument(help="The key to delete.")],
    database_url: DatabaseUrl = None,
    redis_url: RedisUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Delete KEY (a missing key is not an error)."""
    deleted = _with_memory(database_url, redis_url, lambda memory: memory.delete(key))
    if json_output:
        _emit_json({"key": key, "deleted": deleted})
    elif deleted:
        _stdout().print(Text.assemble(("deleted ", "green"), (key, "cyan")))
    else:
        _stdout().print(Text.assemble("no live entry for ", (key, "cyan"), ": nothing deleted"))


@memory_app.command("ls")
def memory_ls(
    prefix: Annotated[
        str | None, typer.Argument(help="Literal key prefix (default: the whole namespace).")
    ] = None,
    database_url: DatabaseUrl = None,
    redis_url: RedisUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """List live keys (starting with PREFIX), in code-point order."""
    keys = _with_memory(database_url, redis_url, lambda memory: memory.list_keys(prefix))
    if json_output:
        _emit_json(keys)
        return
    table = Table(caption=f"{len(keys)} key(s)", caption_justify="left")
    table.add_column("key", style="cyan", overflow="fold")
    for key in keys:
        table.add_row(Text(key))
    _stdout().print(table)


@memory_app.command("search")
def memory_search(
    pattern: Annotated[str, typer.Argument(help="Glob (*, ?, \\[a-z], \\ escapes) or regex.")],
    regex: Annotated[bool, typer.Option("--regex", help="PATTERN is a Python regex.")] = False,
    limit: Annotated[
        int | None, typer.Option("--limit", min=0, help="Return at most this many entries.")
    ] = None,
    database_url: DatabaseUrl = None,
    redis_url: RedisUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Print live entries whose keys match PATTERN (an anchored glob unless --regex)."""
    found = _with_memory(
        database_url,
        redis_url,
        lambda memory: memory.search(pattern, regex=regex, limit=limit),
    )
    if json_output:
        _emit_json(found)
        return
    table = Table(caption=f"{len(found)} match(es)", caption_justify="left")
    table.add_column("key", style="cyan", overflow="fold")
    table.add_column("value", overflow="ellipsis", no_wrap=True, max_width=80)
    for key, value in found.items():
        table.add_row(Text(key), Text(_compact(value)))
    _stdout().print(table)


@memory_app.command("stats")
def memory_stats(
    database_url: DatabaseUrl = None,
    redis_url: RedisUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Show entry counts, partitions and sizes of the store."""
    stats = _with_memory(database_url, redis_url, lambda memory: memory.get_stats())
    if json_output:
        _emit_json(stats)
        return
    console = _stdout()
    table = Table(title="Memory store", title_justify="left", show_header=False)
    table.add_column("stat", style="bold")
    table.add_column("value")
    for name, value in stats.items():
        if name != "partitions":
            table.add_row(Text(name), Text(value if isinstance(value, str) else _compact(value)))
    console.print(table)
    partitions: dict[str, Any] = stats.get("partitions") or {}
    if partitions:
        by_partition = Table(title="Live entries per partition", title_justify="left")
        by_partition.add_column("partition", style="cyan")
        by_partition.add_column("live entries", justify="right")
        for name, count in sorted(partitions.items()):
            by_partition.add_row(Text(name), str(count))
        console.print(by_partition)


@memory_app.command("cleanup")
def memory_cleanup(
    database_url: DatabaseUrl = None,
    redis_url: RedisUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Physically remove expired entries; print how many went."""
    removed = _with_memory(database_url, redis_url, lambda memory: memory.cleanup_expired())
    if json_output:
        _emit_json({"removed": removed})
    else:
        _stdout().print(f"removed {removed} expired entr{'y' if removed == 1 else 'ies'}")


# -- demo ------------------------------------------------------------------------------------


@app.command("demo")
def demo(
    agents: Annotated[
        int, typer.Option("--agents", min=1, max=64, help="Test-generator agents.")
    ] = 3,
    rounds: Annotated[
        int, typer.Option("--rounds", min=1, max=100, help="Suites each generator writes.")
    ] = 3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the agents' choices.")] = 7,
    cleanup: Annotated[
        bool, typer.Option("--cleanup", help="Delete the demo's entries (aqe/demo/) afterwards.")
    ] = False,
    database_url: DatabaseUrl = None,
    redis_url: RedisUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Run a simulated QE fleet (commander, generators, executors) through the store.

    Everything it writes is under aqe/demo/; a run replaces what the previous one left there.
    """
    from lionagi_qe.demo import DemoSummary, run_demo

    url, _redis = _resolve_urls(database_url, redis_url)
    status = None if json_output else _stderr().status("starting the fleet")

    def on_phase(text: str) -> None:
        if status is not None:
            status.update(text)

    def work(memory: MemoryBackend) -> Awaitable[DemoSummary]:
        return run_demo(
            memory,
            generators=agents,
            rounds=rounds,
            seed=seed,
            cleanup=cleanup,
            on_phase=on_phase,
        )

    if status is None:
        summary = _with_memory(database_url, redis_url, work)
    else:
        with status:
            summary = _with_memory(database_url, redis_url, work)
    document = {"database_url": mask_url(url), **summary.as_dict()}
    if json_output:
        _emit_json(document)
        return
    _print_demo(document, cleanup=cleanup)


def _print_demo(summary: dict[str, Any], *, cleanup: bool) -> None:
    console = _stdout()
    stats = summary["stats"]
    tests = summary["tests"]
    heartbeats = summary["heartbeats"]
    agents = summary["agents"]
    table = Table(
        title=f"QE fleet demo on {stats.get('backend', '?')} ({summary['database_url']})",
        title_justify="left",
        show_header=False,
    )
    table.add_column("what", style="bold")
    table.add_column("result")
    rows: list[tuple[str, Text]] = [
        (
            "agents",
            Text(
                f"{agents['total']}: 1 commander, {agents['generators']} test generators, "
                f"{agents['executors']} test executors"
            ),
        ),
        (
            "suites",
            Text(
                f"{summary['suites']['generated']} generated, "
                f"{summary['suites']['executed']} executed ({summary['rounds']} rounds)"
            ),
        ),
        (
            "tests",
            Text.assemble(
                f"{tests['total']}: ",
                (f"{tests['passed']} passed", "green"),
                ", ",
                (f"{tests['failed']} failed", "red" if tests["failed"] else "green"),
            ),
        ),
        (
            "claims",
            Text(f"{summary['claims']['won']} won, {summary['claims']['lost']} lost to a peer"),
        ),
        ("compare-and-set retries", Text(str(summary["cas_retries"]))),
        (
            "plan",
            Text(f"{summary['plan']['status']} at version {summary['plan']['version']}"),
        ),
        (
            "heartbeats",
            Text(
                f"{heartbeats['alive']} alive, {heartbeats['expired']} expired "
                f"({', '.join(heartbeats['expired_agents']) or 'none'})"
            ),
        ),
        (
            "entries",
            Text(f"{summary['entries']['written']} written, {summary['entries']['read']} read"),
        ),
        (
            "store totals",
            Text(
                f"{stats.get('total_keys')} live keys, {stats.get('total_expired')} expired, "
                f"{stats.get('size_bytes')} bytes"
            ),
        ),
        ("elapsed", Text(f"{summary['elapsed_seconds']:.2f} s")),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    per_agent = Table(title="Agents", title_justify="left")
    for column in ("agent", "role", "writes", "reads", "suites", "passed", "failed"):
        per_agent.add_column(column, justify="left" if column in {"agent", "role"} else "right")
    for agent in summary["per_agent"]:
        per_agent.add_row(
            Text(agent["agent_id"], style="cyan"),
            agent["role"],
            *(str(agent[name]) for name in ("writes", "reads", "suites", "passed", "failed")),
        )
    console.print(per_agent)
    if not cleanup:
        prefix = summary["prefix"]
        console.print(Text(f"entries kept under {prefix}: lionagi-qe memory ls {prefix}"))


# -- entry point -----------------------------------------------------------------------------


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lionagi-qe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Persistence for fleets of QE agents: memory, migrations and a demo fleet."""


def main() -> None:
    """Run the ``lionagi-qe`` command line."""
    app(prog_name="lionagi-qe")
