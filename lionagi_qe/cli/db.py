"""``lionagi-qe db``: the schema's Alembic migrations."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text
from sqlalchemy import Column
from sqlalchemy import Table as SqlTable
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from lionagi_qe.cli.common import (
    EXIT_FAILURE,
    DatabaseUrl,
    JsonOutput,
    RedisUrl,
    T,
    emit_json,
    resolve_urls,
    run,
    stdout_console,
)
from lionagi_qe.config import mask_url

db_app = typer.Typer(help="Manage the database schema (Alembic migrations).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add ``db upgrade|downgrade|current|check`` to ``app``."""
    app.add_typer(db_app, name="db")


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

    url, _redis = resolve_urls(database_url, redis_url)

    async def work(engine: AsyncEngine) -> tuple[str | None, str | None, str]:
        before = await migrate.current(engine)
        if direction == "upgrade":
            await migrate.upgrade(engine, revision)
        else:
            await migrate.downgrade(engine, revision)
        return before, await migrate.current(engine), migrate.head()

    before, after, newest = run(lambda: _on_engine(url, work))
    if json_output:
        emit_json({"database_url": mask_url(url), "from": before, "to": after, "head": newest})
        return
    console = stdout_console()
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

    url, _redis = resolve_urls(database_url, redis_url)

    async def work(engine: AsyncEngine) -> tuple[str | None, str]:
        return await migrate.current(engine), migrate.head()

    revision, newest = run(lambda: _on_engine(url, work))
    if json_output:
        emit_json(
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
    stdout_console().print(line)


@db_app.command("check")
def db_check(
    database_url: DatabaseUrl = None,
    redis_url: RedisUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Compare the models with the database; exit 1 and list the differences on drift."""
    from lionagi_qe.db import migrate

    url, _redis = resolve_urls(database_url, redis_url)

    async def work(engine: AsyncEngine) -> tuple[str | None, list[Any], str]:
        return await migrate.current(engine), await migrate.check(engine), migrate.head()

    revision, raw, newest = run(lambda: _on_engine(url, work))
    differences = [_describe_difference(diff) for diff in raw]
    if revision != newest:
        differences.insert(0, f"database is at revision {revision}, head is {newest}")
    if json_output:
        emit_json(
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
        stdout_console().print(table)
    else:
        stdout_console().print(
            Text.assemble(("no drift", "green"), f": models match the database at {revision}")
        )
    if differences:
        raise typer.Exit(EXIT_FAILURE)
