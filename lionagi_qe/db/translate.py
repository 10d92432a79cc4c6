"""Translation of driver errors into lionagi_qe errors, by SQLSTATE where there is one."""

from __future__ import annotations

import asyncio
import sqlite3

from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from lionagi_qe.errors import (
    BackendUnavailableError,
    PersistenceError,
    SchemaMissingError,
    SerializationError,
)

__all__ = ["FOREIGN_KEY_VIOLATION", "sqlstate_of", "translate"]

FOREIGN_KEY_VIOLATION = "23503"
_SCHEMA_MISSING = {"42P01", "3F000", "42883"}
_BAD_VALUE = {"22003", "22P02", "22023", "22P05", "2202E"}
# Connection, resources, operator intervention, system, rollback, state, authentication and
# "catalog (database) does not exist": the server cannot do the work now, whatever the input.
_UNAVAILABLE_CLASSES = ("08", "53", "57", "58", "40", "55", "28", "3D")

SCHEMA_HINT = "the database has no lionagi_qe schema; run `lionagi-qe db upgrade`"


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE of a driver error (SQLite errors get a pseudo-code), or None."""
    orig = getattr(exc, "orig", exc)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code:
        return str(code)
    if isinstance(orig, sqlite3.Error):
        name = getattr(orig, "sqlite_errorname", "")
        if name.startswith("SQLITE_CONSTRAINT_FOREIGNKEY"):
            return FOREIGN_KEY_VIOLATION
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return "55P03"
        if "no such table" in str(orig):  # SQLite has no code for this one
            return "42P01"
    return None


def translate(exc: BaseException, *, server_message: bool = False) -> PersistenceError:
    """Return the lionagi_qe error for a driver, pool or network error.

    The text of an error SQLAlchemy did not wrap is shown only when ``server_message`` says it
    is the server's own message (an asyncpg ``PostgresError`` raised on the direct path, the
    same text SQLAlchemy would have wrapped); other bare errors are named by type alone.
    """
    if isinstance(exc, PersistenceError):
        return exc
    if isinstance(exc, PoolTimeoutError):
        return BackendUnavailableError("timed out waiting for a database connection from the pool")
    if isinstance(exc, OSError | asyncio.TimeoutError | ConnectionError):
        return BackendUnavailableError(f"database unreachable: {type(exc).__name__}")
    code = sqlstate_of(exc)
    orig = getattr(exc, "orig", exc)
    summary = str(orig).splitlines()[0][:200] if str(orig) else type(orig).__name__
    if code in _SCHEMA_MISSING:
        return SchemaMissingError(SCHEMA_HINT)
    if code in _BAD_VALUE:
        return SerializationError(f"the database refused the value: {summary}")
    if code is not None and code.startswith(_UNAVAILABLE_CLASSES):
        return BackendUnavailableError(f"database unavailable (SQLSTATE {code}): {summary}")
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return BackendUnavailableError(f"database connection lost: {summary}")
    if isinstance(exc, DBAPIError | SQLAlchemyError) or server_message:
        suffix = f" (SQLSTATE {code})" if code else ""
        return PersistenceError(f"database error{suffix}: {summary}")
    return PersistenceError(f"database error: {type(exc).__name__}")
