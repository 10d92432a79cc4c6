"""Engines: URL normalisation, pool options and per-dialect connection setup."""

from __future__ import annotations

import inspect
import logging
from typing import Any

from sqlalchemy import URL, event, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool, StaticPool

from lionagi_qe.db.liveness import install_liveness_check
from lionagi_qe.errors import InvalidArgumentError, PersistenceError

__all__ = ["create_engine", "is_sqlite", "normalize_url"]

logger = logging.getLogger(__name__)

_ASYNC_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
}

#: URL query parameters SQLAlchemy's asyncpg dialect consumes itself.
_DIALECT_QUERY = {"prepared_statement_cache_size", "prepared_statement_name_func", "async_fallback"}
#: Numeric asyncpg arguments a URL can only give as text.
_SECONDS_QUERY = {
    "connect_timeout": "timeout",
    "timeout": "timeout",
    "command_timeout": "command_timeout",
}

#: Milliseconds SQLite waits for another writer's lock before giving up.
SQLITE_BUSY_TIMEOUT_MS = 10_000


def normalize_url(url: str | URL) -> URL:
    """Parse ``url`` and give it an async driver (``postgresql://`` → asyncpg, ``sqlite://`` →
    aiosqlite)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise PersistenceError("invalid database URL") from exc
    driver = _ASYNC_DRIVERS.get(parsed.drivername)
    if driver is not None:
        parsed = parsed.set(drivername=driver)
    if parsed.get_backend_name() not in {"postgresql", "sqlite"}:
        raise PersistenceError(
            f"unsupported database {parsed.get_backend_name()!r}: use PostgreSQL or SQLite"
        )
    if parsed.drivername == "postgresql+asyncpg" and "sslmode" in parsed.query:
        # libpq spells it ``sslmode``; asyncpg takes the same modes as ``ssl`` and refuses
        # ``sslmode`` with a bare TypeError (the TLS request would be lost).
        mode = parsed.query["sslmode"]
        parsed = parsed.difference_update_query(["sslmode"])
        if "ssl" not in parsed.query:
            parsed = parsed.update_query_dict({"ssl": mode})
    return parsed


def is_sqlite(url: URL) -> bool:
    """True for an SQLite URL."""
    return url.get_backend_name() == "sqlite"


def _setup_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # WAL lets readers run beside the writer; busy_timeout makes writers queue instead of
        # failing; foreign keys are off by default in SQLite; LIKE must be case-sensitive to
        # match the glob language exactly.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA case_sensitive_like=ON")
        cursor.close()


def _asyncpg_query(parsed: URL, connect_args: dict[str, Any]) -> URL:
    """Move URL query options asyncpg cannot take as text into ``connect_args``.

    libpq's ``connect_timeout`` (and asyncpg's ``timeout``/``command_timeout``) become numbers,
    ``application_name`` a server setting. Any other name asyncpg does not know is refused here,
    before any I/O (asyncpg would raise a bare ``TypeError`` on every connect). Values are never
    quoted in messages.
    """
    import asyncpg  # only PostgreSQL URLs get here

    for name, argument in _SECONDS_QUERY.items():
        if name in parsed.query:
            raw = parsed.query[name]
            try:
                seconds = float(raw if isinstance(raw, str) else raw[-1])
            except ValueError:
                raise InvalidArgumentError(
                    f"database URL parameter {name!r} must be a number"
                ) from None
            connect_args.setdefault(argument, seconds)
            parsed = parsed.difference_update_query([name])
    if "application_name" in parsed.query:
        raw = parsed.query["application_name"]
        server_settings = dict(connect_args.get("server_settings", {}))
        server_settings.setdefault("application_name", raw if isinstance(raw, str) else raw[-1])
        connect_args["server_settings"] = server_settings
        parsed = parsed.difference_update_query(["application_name"])
    known = set(inspect.signature(asyncpg.connect).parameters) | _DIALECT_QUERY
    unknown = sorted(set(parsed.query) - known)
    if unknown:
        raise InvalidArgumentError(f"unsupported database URL parameter(s): {', '.join(unknown)}")
    return parsed


def create_engine(
    url: str | URL,
    *,
    pool_size: int = 10,
    max_overflow: int = 0,
    pool_timeout: float = 30.0,
    pool_recycle: float = 1800.0,
    statement_timeout: float | None = None,
    lock_timeout: float | None = None,
    **options: Any,
) -> AsyncEngine:
    """Create an :class:`AsyncEngine` for PostgreSQL (asyncpg) or SQLite (aiosqlite).

    Parameters and their values are hidden from error messages and logs
    (``hide_parameters``), so stored values never leak through exception text.
    ``statement_timeout`` and ``lock_timeout`` (seconds) become the PostgreSQL session settings
    of every pooled connection (a statement past either fails with ``BackendUnavailableError``
    once translated); SQLite ignores both (it has ``busy_timeout``). A libpq ``sslmode=`` in the
    URL is handed to asyncpg as ``ssl=``, ``connect_timeout=`` as asyncpg's ``timeout`` and
    ``application_name=`` as a server setting; other parameters asyncpg does not know raise
    ``InvalidArgumentError`` here, before any I/O.
    """
    parsed = normalize_url(url)
    kwargs: dict[str, Any] = {"hide_parameters": True}
    if is_sqlite(parsed):
        database = parsed.database or ""
        if database in {"", ":memory:"} or "mode=memory" in str(parsed):
            # One shared connection, or every checkout would see its own empty database.
            kwargs["poolclass"] = StaticPool
        elif options.get("poolclass") is not NullPool:
            kwargs.update(pool_size=pool_size, max_overflow=max_overflow, pool_timeout=pool_timeout)
    else:
        connect_args: dict[str, Any] = dict(options.pop("connect_args", {}))
        if parsed.drivername == "postgresql+asyncpg":
            parsed = _asyncpg_query(parsed, connect_args)
        timeouts = {"statement_timeout": statement_timeout, "lock_timeout": lock_timeout}
        for name, seconds in timeouts.items():
            if seconds is not None:
                server_settings = dict(connect_args.get("server_settings", {}))
                # At least 1 ms: 0 would mean "no timeout" to PostgreSQL.
                server_settings[name] = str(max(1, round(seconds * 1000)))
                connect_args["server_settings"] = server_settings
        kwargs.update(
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,
            pool_recycle=pool_recycle,
            connect_args=connect_args,
        )
        if options.get("poolclass") is NullPool:
            for key in ("pool_size", "max_overflow", "pool_timeout"):
                kwargs.pop(key)
    kwargs.update(options)
    engine = create_async_engine(parsed, **kwargs)
    if parsed.get_backend_name() == "postgresql":
        # A pooled connection the server closed while idle (a restart) is replaced at checkout.
        install_liveness_check(engine)
    if is_sqlite(parsed):
        _setup_sqlite(engine)
    logger.debug("created engine for %s", parsed.render_as_string(hide_password=True))
    return engine
