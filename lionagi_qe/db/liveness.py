"""A pool ``checkout`` check that replaces connections the server already closed.

After a PostgreSQL restart (or ``pg_terminate_backend``, an idle timeout, a crash), every
connection sitting in the pool is dead, but SQLAlchemy only finds out when a statement is sent
on one: the first pooled query after the restart fails, and a write sent that way is lost to
the caller. ``pool_pre_ping`` avoids that at the price of a round trip on every checkout.

asyncpg already knows, without a round trip: the server's closing of the socket (the FATAL
``57P01`` it sends on a fast shutdown, or the end of file after a crash) is read by the event
loop as soon as it arrives, and ``is_closed()`` turns true. The check below asks exactly that on
every checkout and raises :class:`sqlalchemy.exc.DisconnectionError` for a closed connection;
SQLAlchemy then invalidates it and checks out again on a fresh connection (or raises the
connect error, which the callers translate into ``BackendUnavailableError`` while the server is
down). A connection that dies *while* a statement runs is not covered: that statement's
outcome is unknown and it fails (see :mod:`lionagi_qe.db.direct`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["install_liveness_check", "is_closed"]


def is_closed(dbapi_connection: Any) -> bool:
    """Whether the driver connection under a pooled DBAPI connection is known to be closed.

    Only asyncpg connections answer (``is_closed()``); anything else counts as open.
    """
    driver = getattr(dbapi_connection, "driver_connection", None)
    probe = getattr(driver, "is_closed", None)
    return bool(probe()) if callable(probe) else False


def _check_alive(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    if is_closed(dbapi_connection):
        raise DisconnectionError("the server closed this pooled connection")


def install_liveness_check(engine: AsyncEngine) -> None:
    """Make ``engine``'s pool replace connections the server has closed, before use.

    Registers a pool ``checkout`` listener that raises
    :class:`~sqlalchemy.exc.DisconnectionError` when the asyncpg connection being checked out
    reports ``is_closed()``; SQLAlchemy invalidates it and retries the checkout with a new
    connection. No statement is sent (unlike ``pool_pre_ping``), so a healthy checkout costs
    one attribute lookup and a call. Engines derived with ``execution_options`` share the pool
    and so the check. Installing twice on one engine is a no-op; on other drivers (SQLite) the
    check never fires.

    Args:
        engine: the engine whose pool to guard.
    """
    sync_engine = engine.sync_engine
    if not event.contains(sync_engine.pool, "checkout", _check_alive):
        event.listen(sync_engine.pool, "checkout", _check_alive)
