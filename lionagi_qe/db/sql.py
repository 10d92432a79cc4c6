"""Small SQL constructs whose spelling differs between PostgreSQL and SQLite.

Expiry is decided by the database clock, so every "now" in a statement is the server's:
``statement_timestamp()`` on PostgreSQL (advances between statements of one transaction, unlike
``now()``), SQLite's ``'now'`` (the embedded database's clock is the local clock).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Double, Text, or_
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from lionagi_qe.models.base import Timestamp

__all__ = ["is_live", "json_param", "seconds_from_now", "seconds_until", "server_now"]

_SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now')"


class server_now(FunctionElement[datetime]):
    """The database clock, as a timestamp."""

    type = Timestamp
    inherit_cache = True
    name = "server_now"


@compiles(server_now, "postgresql")
def _pg_now(element: server_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "statement_timestamp()"


@compiles(server_now, "sqlite")
def _sqlite_now(element: server_now, compiler: SQLCompiler, **kw: Any) -> str:
    return _SQLITE_NOW


class seconds_from_now(FunctionElement[datetime]):
    """The database clock plus a number of seconds (a float expression)."""

    type = Timestamp
    inherit_cache = True
    name = "seconds_from_now"


@compiles(seconds_from_now, "postgresql")
def _pg_from_now(element: seconds_from_now, compiler: SQLCompiler, **kw: Any) -> str:
    (seconds,) = element.clauses
    return f"(statement_timestamp() + make_interval(secs => {compiler.process(seconds, **kw)}))"


@compiles(seconds_from_now, "sqlite")
def _sqlite_from_now(element: seconds_from_now, compiler: SQLCompiler, **kw: Any) -> str:
    (seconds,) = element.clauses
    arg = compiler.process(seconds, **kw)
    return f"strftime('%Y-%m-%d %H:%M:%f', 'now', printf('%+.6f seconds', {arg}))"


class seconds_until(FunctionElement[float]):
    """Seconds from the database clock until a timestamp expression (negative once past)."""

    type = Double()
    inherit_cache = True
    name = "seconds_until"


@compiles(seconds_until, "postgresql")
def _pg_until(element: seconds_until, compiler: SQLCompiler, **kw: Any) -> str:
    (moment,) = element.clauses
    return (
        f"CAST(EXTRACT(EPOCH FROM ({compiler.process(moment, **kw)} - statement_timestamp()))"
        " AS DOUBLE PRECISION)"
    )


@compiles(seconds_until, "sqlite")
def _sqlite_until(element: seconds_until, compiler: SQLCompiler, **kw: Any) -> str:
    (moment,) = element.clauses
    return f"((julianday({compiler.process(moment, **kw)}) - julianday('now')) * 86400.0)"


class json_param(FunctionElement[Any]):
    """A bound parameter that already holds JSON text: cast to ``json`` on PostgreSQL."""

    type = Text()
    inherit_cache = True
    name = "json_param"


@compiles(json_param, "postgresql")
def _pg_json(element: json_param, compiler: SQLCompiler, **kw: Any) -> str:
    (param,) = element.clauses
    return f"CAST({compiler.process(param, **kw)} AS JSON)"


@compiles(json_param, "sqlite")
def _sqlite_json(element: json_param, compiler: SQLCompiler, **kw: Any) -> str:
    (param,) = element.clauses
    return compiler.process(param, **kw)


def is_live(expires_at: ColumnElement[datetime | None]) -> ColumnElement[bool]:
    """True for a row that has no expiry or whose expiry is still ahead (server clock)."""
    return or_(expires_at.is_(None), expires_at > server_now())
