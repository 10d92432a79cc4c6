"""Alembic, driven from code: the CLI, the embedded default and the test kit use these.

The revisions live in ``alembic/`` at the top of the repository; wheels carry them as
``lionagi_qe/_migrations``. Every function takes an engine (or a connection) so callers share
their pool and, in tests, their transaction.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = [
    "alembic_config",
    "check",
    "current",
    "downgrade",
    "has_schema",
    "head",
    "migrations_dir",
    "upgrade",
]

T = TypeVar("T")
_PACKAGE_DIR = Path(__file__).resolve().parent.parent
#: Tables whose presence means "the memory schema exists".
SCHEMA_TABLES = ("qe_memory", "partitions")


def migrations_dir() -> Path:
    """Where the Alembic scripts are: inside the wheel, or beside the package in a checkout."""
    for candidate in (_PACKAGE_DIR / "_migrations", _PACKAGE_DIR.parent / "alembic"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("lionagi_qe's Alembic migrations are not installed")


def alembic_config(url: str | None = None, connection: Connection | None = None) -> Config:
    """An Alembic :class:`Config` for our scripts, bound to ``url`` or an open connection."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


async def _with_connection(
    bind: AsyncEngine | AsyncConnection, fn: Callable[[Connection], T], *, transaction: bool
) -> T:
    if isinstance(bind, AsyncConnection):
        return await bind.run_sync(fn)
    if transaction:
        async with bind.begin() as conn:
            return await conn.run_sync(fn)
    async with bind.connect() as conn:
        return await conn.run_sync(fn)


#: Alembic keeps the running migration's context in module globals, so two migrations that
#: interleave on one event loop (two stores set up at once) would share it: one at a time.
_command_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _command_lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _command_locks.get(loop)
    if lock is None:
        lock = _command_locks[loop] = asyncio.Lock()
    return lock


async def upgrade(bind: AsyncEngine | AsyncConnection, revision: str = "head") -> None:
    """Upgrade the schema to ``revision``."""

    def run(conn: Connection) -> None:
        command.upgrade(alembic_config(connection=conn), revision)

    async with _command_lock():
        await _with_connection(bind, run, transaction=True)


async def downgrade(bind: AsyncEngine | AsyncConnection, revision: str = "base") -> None:
    """Downgrade the schema to ``revision``."""

    def run(conn: Connection) -> None:
        command.downgrade(alembic_config(connection=conn), revision)

    async with _command_lock():
        await _with_connection(bind, run, transaction=True)


async def current(bind: AsyncEngine | AsyncConnection) -> str | None:
    """The revision the database is at (None: not under Alembic)."""

    def run(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    return await _with_connection(bind, run, transaction=False)


def head() -> str:
    """The newest revision the installed scripts know."""
    head_revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head_revision is None:
        raise FileNotFoundError("lionagi_qe's Alembic scripts have no revisions")
    return head_revision


async def check(bind: AsyncEngine | AsyncConnection) -> list[Any]:
    """Differences between the models and the database (empty: no drift)."""
    from lionagi_qe.db.alembic_env import comparison_options
    from lionagi_qe.models import Base

    def run(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(conn, opts=comparison_options(conn))
        return list(compare_metadata(context, Base.metadata))

    return await _with_connection(bind, run, transaction=False)


async def has_schema(bind: AsyncEngine | AsyncConnection) -> bool:
    """True if the memory tables exist."""

    def run(conn: Connection) -> bool:
        inspector = inspect(conn)
        return all(inspector.has_table(name) for name in SCHEMA_TABLES)

    return await _with_connection(bind, run, transaction=False)
