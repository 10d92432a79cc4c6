"""Run SQLAlchemy Core statements straight on a pooled asyncpg connection (the hot path).

SQLAlchemy builds and compiles every statement (once per statement object) and its pool owns
the connections; only the last step, handing the compiled SQL and its positional arguments to
the driver, skips ``AsyncConnection.execute``. That step costs more than the round trip itself
for the one-row statements of the memory hot path (an execution-options engine, a greenlet
switch per call, result wrapping, a rollback-on-return): measured on a 2-core machine, a
primary-key read through ``AsyncConnection`` took 2.8x the raw asyncpg time, through this path
within a few percent of it.

What is kept from SQLAlchemy: statement construction and compilation (the compiled form is
cached by statement object), bind processors and literal defaults, the pool (size, overflow,
timeout, recycle, connect events). Driver errors are translated here by SQLSTATE with
:func:`lionagi_qe.db.translate.translate`, the driver's exception kept as ``__cause__``.

Each statement runs on its own pooled connection in autocommit mode (asyncpg runs a statement
outside ``BEGIN`` as its own transaction). A call that is cancelled or loses its connection
mid-statement invalidates that connection rather than returning it to the pool, so a cancelled
call never leaks a connection or leaves one in an unknown protocol state.

Connection loss (a server restart, a crash, ``pg_terminate_backend``):

- *Before sending*: a connection the server closed while it sat in the pool or was kept is
  known closed (asyncpg read the end of file) and is replaced before anything is sent, so the
  statement goes out exactly once, on a live connection. The same holds when asyncpg refuses
  to send because the server's FATAL arrived but its end of file not yet (during a shutdown):
  nothing went out, so the statement, read or write, is sent on another connection.
- *Getting a connection* fails with ``BackendUnavailableError`` while the server is down,
  starting or stopping (the pool hands asyncpg's own errors through unwrapped).
- *In flight*: the server may or may not have applied the statement. The call fails with
  :class:`~lionagi_qe.errors.BackendUnavailableError` (never a raw driver error). A write is
  **never retried** here: whether to repeat an ambiguous write (a counter increment, an upsert
  that bumps a version) is the caller's decision. A read (a ``SELECT``) changes nothing, so it
  is retried once on a fresh connection; if that fails too the error is raised.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Executable
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection, QueuePool
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.util import greenlet_spawn

from lionagi_qe.db.translate import translate
from lionagi_qe.errors import BackendUnavailableError, PersistenceError

__all__ = ["BoundRunner", "DirectResult", "DirectRunner", "supports_direct"]


def supports_direct(engine: AsyncEngine) -> bool:
    """Whether ``engine`` runs on asyncpg, the driver this path speaks to."""
    return engine.dialect.name == "postgresql" and engine.dialect.driver == "asyncpg"


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]
    defaults: tuple[Any, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]
    returns_rows: bool
    #: A plain SELECT: safe to send again after its connection died in flight.
    retry_safe: bool

    def arguments(self, params: Mapping[str, Any] | None) -> list[Any]:
        given = params or {}
        values: list[Any] = []
        for name, default, process in zip(self.names, self.defaults, self.processors, strict=True):
            value = given.get(name, default)
            values.append(value if process is None or value is None else process(value))
        return values


def _compile(statement: Executable, dialect: Dialect) -> _Compiled:
    compiled = cast(SQLCompiler, cast(ClauseElement, statement).compile(dialect=dialect))
    names = tuple(compiled.positiontup or ())
    binds = {bind.key: bind for bind in compiled.binds.values()}
    processors = []
    for name in names:
        bind = binds.get(name)
        processors.append(None if bind is None else bind.type.bind_processor(dialect))
    defaults = compiled.params
    return _Compiled(
        sql=compiled.string,
        names=names,
        defaults=tuple(defaults.get(name) for name in names),
        processors=tuple(processors),
        # Textual SQL may return rows too: only DML without RETURNING is run for its status.
        returns_rows=not statement.is_dml or bool(getattr(compiled, "returning", None)),
        # Textual SQL may write: only SELECT constructs count as reads.
        retry_safe=bool(getattr(statement, "is_select", False)) and not statement.is_dml,
    )


class DirectResult:
    """The few ``Result`` accessors the repositories use, over asyncpg records."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: Sequence[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        if len(self._rows) != 1:
            raise LookupError(f"expected one row, got {len(self._rows)}")
        return self._rows[0][0]

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def one(self) -> Any:
        if len(self._rows) != 1:
            raise LookupError(f"expected one row, got {len(self._rows)}")
        return self._rows[0]

    def all(self) -> list[Any]:
        return list(self._rows)

    def scalars(self) -> Iterator[Any]:
        return (row[0] for row in self._rows)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


def _rowcount(status: str) -> int:
    # "DELETE 3", "UPDATE 0", "INSERT 0 1"
    tail = status.rpartition(" ")[2]
    return int(tail) if tail.isdigit() else -1


class DirectRunner:
    """Executes compiled statements on connections checked out of ``engine``'s pool.

    Between calls the runner keeps the last connection it used (one at most) instead of
    returning it to the pool, so a sequential caller pays no checkout and no check-in; it is
    handed back to the pool after :data:`STICKY_SECONDS` without use or of holding it, when it
    is found closed, and on :meth:`release`. Concurrent calls take further connections from the
    pool as usual.
    """

    #: How long the kept connection may sit unused, or be held at all, before it goes back.
    STICKY_SECONDS = 5.0
    #: Closed pooled connections skipped in a row before giving up.
    MAX_DEAD_CONNECTIONS = 64

    def __init__(self, engine: AsyncEngine) -> None:
        if not supports_direct(engine):
            raise ValueError("DirectRunner needs a postgresql+asyncpg engine")
        self._engine = engine
        self._dialect = engine.dialect
        self._compiled: dict[int, tuple[Executable, _Compiled]] = {}
        self._kept: PoolProxiedConnection | None = None
        self._kept_since = 0.0
        self._kept_used = 0.0

    def _compiled_for(self, statement: Executable) -> _Compiled:
        cached = self._compiled.get(id(statement))
        if cached is not None and cached[0] is statement:
            return cached[1]
        compiled = _compile(statement, self._dialect)
        # Keep the statement alive beside its compiled form so its id is never reused.
        self._compiled[id(statement)] = (statement, compiled)
        return compiled

    async def _acquire(self) -> PoolProxiedConnection:
        kept, self._kept = self._kept, None
        if kept is not None:
            now = time.monotonic()
            fresh = now - self._kept_used < self.STICKY_SECONDS
            if fresh and now - self._kept_since < self.STICKY_SECONDS:
                if not kept.driver_connection.is_closed():  # type: ignore[union-attr]
                    return kept
                kept.invalidate()
            else:
                await self._checkin(kept)
        # A pooled connection the server closed while it sat idle (a restart, an idle
        # timeout, pg_terminate_backend) is known closed before anything is sent on it:
        # replace it, so the statement is sent exactly once, on a live connection.
        for _ in range(self.MAX_DEAD_CONNECTIONS):
            try:
                fairy = await self._engine.raw_connection()
            except Exception as exc:
                # The pool does not wrap connect errors: asyncpg's own (CannotConnectNowError
                # while the server starts or stops) arrive in the dialect's DBAPI ``Error``.
                raise _unavailable(exc) from exc
            if not fairy.driver_connection.is_closed():  # type: ignore[union-attr]
                self._kept_since = time.monotonic()
                return fairy
            fairy.invalidate()
        raise BackendUnavailableError("database unavailable: every pooled connection was closed")

    async def _release(self, fairy: PoolProxiedConnection) -> None:
        if self._kept is None:
            self._kept = fairy
            self._kept_used = time.monotonic()
        else:
            await self._checkin(fairy)

    async def _checkin(self, fairy: PoolProxiedConnection) -> None:
        """Return ``fairy`` to the pool.

        Usually a plain queue put. But a pool holding more than its ``pool_size`` (overflow)
        answers a checkin by closing the connection, and SQLAlchemy's asyncpg adapter can only
        await that close inside a greenlet: called from plain asyncio code it fails
        (``MissingGreenlet``, logged by the pool) and the server session stays open, forgotten
        by the pool — a leak that filled a 100-connection server under 20 concurrent agents.
        So such checkins go through ``greenlet_spawn``; the common one costs nothing extra.
        """
        pool = self._engine.pool
        if isinstance(pool, QueuePool) and pool.overflow() <= 0:
            fairy.close()
        else:
            await greenlet_spawn(fairy.close)

    @property
    def held(self) -> int:
        """Connections kept checked out between calls (0 or 1)."""
        return 0 if self._kept is None else 1

    def observed(self) -> bool:
        """True when the engine echoes SQL or has cursor-execute listeners: those only see
        statements run through ``AsyncConnection``, so callers should take that path."""
        sync = self._engine.sync_engine
        dispatch = sync.dispatch
        return bool(sync.echo or dispatch.before_cursor_execute or dispatch.after_cursor_execute)

    async def release(self) -> None:
        """Hand the kept connection back to the pool (before the engine is disposed)."""
        kept, self._kept = self._kept, None
        if kept is not None:
            await self._checkin(kept)

    async def execute(
        self, statement: Executable, params: Mapping[str, Any] | None = None
    ) -> DirectResult:
        """Run one statement in autocommit on a pooled connection.

        If the connection dies while the statement runs, a read is sent once more on a fresh
        connection; a write is not (its outcome is unknown: it may have been applied) and
        fails with :class:`~lionagi_qe.errors.BackendUnavailableError`.
        """
        compiled = self._compiled_for(statement)
        arguments = compiled.arguments(params)
        retried_read = False
        for _ in range(self.MAX_DEAD_CONNECTIONS):
            sent = False
            try:
                async with self._connection() as connection:
                    sent = True
                    return await _run(connection, compiled, arguments)
            except _NotSent:
                continue  # nothing went out: another connection, whatever the statement
            except BackendUnavailableError as exc:
                cause = exc.__cause__
                lost = sent and isinstance(cause, Exception) and _is_disconnect(cause)
                if retried_read or not (lost and compiled.retry_safe):
                    raise
                retried_read = True
        raise BackendUnavailableError("database unavailable: every pooled connection was closed")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[BoundRunner]:
        """Statements run through the yielded runner share one connection and one
        transaction, committed when the block ends and rolled back if it raises."""
        async with self._connection() as connection:
            try:
                async with connection.transaction():
                    yield BoundRunner(self, connection)
            except (SQLAlchemyError, OSError, TimeoutError) as exc:
                raise translate(exc, server_message=_from_server(exc)) from exc
            except PersistenceError:
                raise
            except Exception as exc:
                if _is_disconnect(exc):
                    raise _unavailable(exc) from exc
                if getattr(exc, "sqlstate", None) is None:
                    raise
                raise translate(exc, server_message=_from_server(exc)) from exc

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        fairy = await self._acquire()
        connection: Any = fairy.driver_connection
        healthy = False
        try:
            yield connection
            healthy = True
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            # A server-side error (constraint, bad value) leaves the connection usable.
            cause = exc.__cause__ if isinstance(exc, PersistenceError) else exc
            healthy = not (isinstance(cause, Exception) and _is_disconnect(cause))
            healthy = healthy and not connection.is_closed()
            raise
        finally:
            if healthy and not connection.is_in_transaction():
                await self._release(fairy)
            else:
                # Cancelled or broken mid-statement: its protocol state is unknown.
                fairy.invalidate()


class BoundRunner:
    """Runs statements on one connection inside :meth:`DirectRunner.transaction`."""

    __slots__ = ("_connection", "_runner")

    def __init__(self, runner: DirectRunner, connection: Any) -> None:
        self._runner = runner
        self._connection = connection

    async def execute(
        self, statement: Executable, params: Mapping[str, Any] | None = None
    ) -> DirectResult:
        """Run one statement in the transaction."""
        compiled = self._runner._compiled_for(statement)
        return await _run(self._connection, compiled, compiled.arguments(params))


async def _run(connection: Any, compiled: _Compiled, arguments: list[Any]) -> DirectResult:
    try:
        if compiled.returns_rows:
            rows = await connection.fetch(compiled.sql, *arguments)
            return DirectResult(rows, len(rows))
        status = await connection.execute(compiled.sql, *arguments)
        return DirectResult((), _rowcount(status))
    except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        if _refused_to_send(exc):
            raise _NotSent(
                f"database connection unusable ({type(exc).__name__}); nothing was sent"
            ) from exc
        if _is_disconnect(exc) and connection.is_closed():
            # Lost mid-statement (ConnectionDoesNotExistError, or an InterfaceError from a
            # connection closed under the call): the outcome is unknown.
            raise BackendUnavailableError(
                f"database connection lost during the statement ({type(exc).__name__}); "
                "it may or may not have been applied"
            ) from exc
        raise translate(exc, server_message=_from_server(exc)) from exc


class _NotSent(BackendUnavailableError):
    """The driver refused to send on a connection the server is closing: nothing went out."""


def _refused_to_send(exc: BaseException) -> bool:
    """Whether asyncpg refused the statement before writing anything: its protocol is not idle
    (after the unsolicited FATAL of a server shutdown, until it reads the end of file), or the
    connection is already closed."""
    import asyncpg

    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        return str(exc).startswith("cannot switch to state")
    # _check_open(): "connection is closed", "cannot call …: the underlying connection is closed"
    return type(exc) is asyncpg.exceptions.InterfaceError and str(exc).endswith(
        "connection is closed"
    )


def _unavailable(exc: Exception) -> PersistenceError:
    """A typed error for a connection that could not be had or was lost."""
    error = translate(exc, server_message=_from_server(exc))
    if type(error) is PersistenceError:
        return BackendUnavailableError(f"database unavailable: {type(exc).__name__}")
    return error


def _from_server(exc: BaseException) -> bool:
    import asyncpg

    return isinstance(exc, asyncpg.PostgresError)


#: The server ends the session: admin shutdown / pg_terminate_backend, crash shutdown, and
#: "cannot connect now" (sent with a FATAL severity, the connection closes right after).
_SESSION_ENDED = frozenset({"57P01", "57P02", "57P03"})


def _is_disconnect(exc: Exception) -> bool:
    import asyncpg

    if getattr(exc, "sqlstate", None) in _SESSION_ENDED or _refused_to_send(exc):
        return True
    return isinstance(
        exc,
        asyncpg.exceptions.ConnectionDoesNotExistError
        | asyncpg.exceptions.InterfaceError
        | asyncpg.exceptions.PostgresConnectionError
        | OSError
        | TimeoutError,
    )
