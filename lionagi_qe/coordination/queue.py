"""``WorkQueue``: a job queue with priorities, delays, dedupe keys and leases.

PostgreSQL is the queue for a fleet: any number of consumers on any number of hosts, claims
made safe by ``FOR UPDATE SKIP LOCKED``. SQLite (the embedded default) runs the same queue for
one machine: SQLite serializes writers, so a claim, one ``UPDATE … WHERE id = (SELECT … LIMIT
1) RETURNING …`` statement, picks and leases its job under the database's write lock, and no
two consumers can take the same job; concurrent consumers wait for each other (the engine's
``busy_timeout``) instead of skipping ahead.

Every operation is one Core statement, built once per dialect. On PostgreSQL it runs in
autocommit: each is a single-row (or single-batch) change that needs no surrounding unit of
work, and autocommit keeps row locks for the shortest possible time. On SQLite a write runs in
its own short transaction (switching an aiosqlite connection to autocommit and back costs two
thread hops), begun by the write itself so the write lock is taken with the busy timeout. All
times come from the database clock (PostgreSQL ``statement_timestamp()``, SQLite's ``'now'``),
so consumers with skewed clocks agree on when a lease lapses.

States: ``queued`` → ``active`` (claimed, leased) → ``done``; :meth:`WorkQueue.fail` puts a job
back to ``queued`` until it has used ``max_attempts`` attempts, then ``dead``. ``failed`` is
allowed by the table but never written by this version (kept for the schema's stability).

A consumer that crashes leaves its job ``active``; once the lease lapses the next :meth:`claim`
takes it again (``attempts`` + 1). A lapsed job that has already used all its attempts is moved
to ``dead`` by that claim instead of being handed out, so a job that crashes every consumer
cannot circulate for ever.
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

from sqlalchemy import (
    URL,
    Double,
    Integer,
    Table,
    Text,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    literal,
    literal_column,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import ColumnElement, Executable

from lionagi_qe.codec import encode
from lionagi_qe.db.engine import create_engine, normalize_url
from lionagi_qe.db.manager import Database
from lionagi_qe.db.sql import seconds_from_now, server_now
from lionagi_qe.db.translate import translate
from lionagi_qe.errors import ClosedError, InvalidArgumentError, LeaseLostError
from lionagi_qe.models.queue import JOB_STATES, QueueJob

__all__ = ["Job", "WorkQueue"]

logger = logging.getLogger(__name__)

_t: Table = QueueJob.__table__  # type: ignore[assignment]
_c = _t.c
_QUEUED: ColumnElement[str] = literal_column("'queued'")
_ACTIVE: ColumnElement[str] = literal_column("'active'")
_DONE: ColumnElement[str] = literal_column("'done'")
_DEAD: ColumnElement[str] = literal_column("'dead'")

#: Rows deleted per statement by :meth:`WorkQueue.purge`.
PURGE_BATCH = 1000
_MAX_NAME = 255
_DIALECTS = ("postgresql", "sqlite")


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed job: what a consumer needs to do the work and to report back."""

    id: str
    queue: str
    payload: Any
    priority: int
    attempts: int
    max_attempts: int
    state: str
    consumer: str | None
    lease_expires_at: datetime | None


def _utc(moment: datetime | None) -> datetime | None:
    # SQLite hands back naive UTC; PostgreSQL aware datetimes.
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _job(row: Any) -> Job:
    return Job(
        id=str(row.id),
        queue=row.queue,
        payload=row.payload,
        priority=row.priority,
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        state=row.state,
        consumer=row.lease_owner,
        lease_expires_at=_utc(row.lease_expires_at),
    )


def _seconds(name: str) -> Any:
    return seconds_from_now(bindparam(name, type_=Double()))


_JOB_COLUMNS = (
    _c.id,
    _c.queue,
    _c.payload,
    _c.priority,
    _c.attempts,
    _c.max_attempts,
    _c.state,
    _c.lease_owner,
    _c.lease_expires_at,
)


class _Statements:
    """Every statement the queue runs, built once for one dialect."""

    def __init__(self, dialect: str) -> None:
        on_postgres = dialect == "postgresql"

        def json_value(name: str) -> Any:
            # Values are encoded by lionagi_qe.codec in the caller's process; PostgreSQL casts
            # the text to jsonb on the server, SQLite stores the text as it is.
            value = bindparam(name, type_=Text())
            return cast(value, postgresql.JSONB()) if on_postgres else value

        insert = postgresql.insert if on_postgres else sqlite.insert
        new_job = insert(_t).values(
            id=bindparam("job_id"),
            queue=bindparam("b_queue"),
            payload=json_value("b_payload"),
            priority=bindparam("b_priority", type_=Integer()),
            max_attempts=bindparam("b_max_attempts", type_=Integer()),
            dedupe_key=bindparam("b_dedupe_key"),
            available_at=_seconds("delay"),
            created_at=server_now(),
            updated_at=server_now(),
        )
        #: A live job with the same dedupe key wins: the no-op update makes RETURNING give its
        #: id.
        self.enqueue: Executable = new_job.on_conflict_do_update(
            index_elements=[_c.queue, _c.dedupe_key],
            index_where=text("dedupe_key IS NOT NULL AND state IN ('queued', 'active')"),
            set_={"dedupe_key": new_job.excluded.dedupe_key},
        ).returning(_c.id)

        # States are SQL literals where a partial index has to match them: a bound parameter
        # would hide the predicate from a prepared statement's generic plan.
        lapsed = and_(_c.state == _ACTIVE, _c.lease_expires_at <= server_now())
        order = [_c.priority.desc(), _c.available_at, _c.created_at]
        if not on_postgres:
            # SQLite's clock has millisecond resolution: jobs enqueued in the same millisecond
            # keep their insertion order by rowid (the implicit last column of every index).
            order.append(literal_column("queue_jobs.rowid"))
        ready = and_(_c.state == _QUEUED, _c.available_at <= server_now())
        next_id: Any
        if on_postgres:
            # One candidate from each index, each locked with SKIP LOCKED, then the better of
            # the two: an OR of both conditions defeats the claim index (a scan and sort of
            # every queued job, linear in the queue's length).
            def candidate(condition: Any, name: str) -> Any:
                return (
                    select(_c.id, _c.priority, _c.available_at, _c.created_at)
                    .where(_c.queue == bindparam("b_queue"), condition)
                    .order_by(*order)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                    .cte(name)
                )

            ready_job, lapsed_job = candidate(ready, "ready_job"), candidate(lapsed, "lapsed_job")
            both = union_all(select(ready_job), select(lapsed_job)).subquery("candidates")
            next_id = (
                select(both.c.id)
                .order_by(both.c.priority.desc(), both.c.available_at, both.c.created_at)
                .limit(1)
            )
        else:
            next_id = (
                select(_c.id)
                .where(_c.queue == bindparam("b_queue"), or_(ready, lapsed))
                .order_by(*order)
                .limit(1)
            )
        # A lapsed job that has used every attempt dies here instead of being handed out again.
        exhausted = and_(_c.state == "active", _c.attempts >= _c.max_attempts)
        self.claim: Executable = (
            update(_t)
            .where(_c.id == next_id.scalar_subquery())
            .values(
                state=case((exhausted, literal("dead")), else_=literal("active")),
                attempts=case((exhausted, _c.attempts), else_=_c.attempts + 1),
                lease_owner=case((exhausted, None), else_=bindparam("consumer")),
                lease_expires_at=case((exhausted, None), else_=_seconds("lease")),
                error=case(
                    (exhausted, literal("lease expired on the last attempt")), else_=_c.error
                ),
                finished_at=case((exhausted, server_now()), else_=None),
                updated_at=server_now(),
            )
            .returning(*_JOB_COLUMNS)
        )

        #: The caller still holds the job: same consumer, same attempt, still active.
        held = and_(
            _c.id == bindparam("job_id"),
            _c.state == "active",
            _c.lease_owner == bindparam("consumer"),
            _c.attempts == bindparam("b_attempts", type_=Integer()),
        )
        self.heartbeat: Executable = (
            update(_t)
            .where(held)
            .values(lease_expires_at=_seconds("lease"), updated_at=server_now())
            .returning(*_JOB_COLUMNS)
        )
        self.complete: Executable = (
            update(_t)
            .where(held)
            .values(
                state="done",
                result=json_value("b_result"),
                lease_owner=None,
                lease_expires_at=None,
                finished_at=server_now(),
                updated_at=server_now(),
            )
            .returning(_c.id)
        )
        dies = _c.attempts >= _c.max_attempts
        self.fail: Executable = (
            update(_t)
            .where(held)
            .values(
                state=case((dies, literal("dead")), else_=literal("queued")),
                error=bindparam("b_error", type_=Text()),
                lease_owner=None,
                lease_expires_at=None,
                available_at=case((dies, _c.available_at), else_=_seconds("retry_delay")),
                finished_at=case((dies, server_now()), else_=None),
                updated_at=server_now(),
            )
            .returning(_c.state)
        )
        by_queue = _c.queue == bindparam("b_queue")
        self.stats: Executable = select(_c.state, func.count()).where(by_queue).group_by(_c.state)
        purge_ids = (
            select(_c.id)
            .where(
                _c.queue == bindparam("b_queue"),
                _c.state.in_((_DONE, _DEAD)),
                _c.finished_at <= _seconds("age"),
            )
            .limit(PURGE_BATCH)
        )
        self.purge: Executable = delete(_t).where(_c.id.in_(purge_ids))
        any_ids = select(_c.id).where(by_queue).limit(PURGE_BATCH)
        self.clear: Executable = delete(_t).where(_c.id.in_(any_ids))


@cache
def _statements(dialect: str) -> _Statements:
    return _Statements(dialect)


def _check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_NAME:
        raise InvalidArgumentError(f"{what} must be a non-empty string of at most {_MAX_NAME}")
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise InvalidArgumentError(f"{what} may not contain control characters")
    return value


def _check_seconds(value: Any, what: str, *, allow_zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgumentError(f"{what} must be a number of seconds")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise InvalidArgumentError(
            f"{what} must be a finite, {'non-negative' if allow_zero else 'positive'} number"
        )
    return seconds


def _check_int(value: Any, what: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{what} must be an int")
    if minimum is not None and value < minimum:
        raise InvalidArgumentError(f"{what} must be at least {minimum}")
    if not -(2**31) <= value < 2**31:
        raise InvalidArgumentError(f"{what} must fit in 32 bits")
    return value


class WorkQueue:
    """A named queue of JSON jobs on PostgreSQL or SQLite, safe for concurrent consumers.

    On PostgreSQL any number of consumers in any number of processes and hosts claim without
    blocking each other (``FOR UPDATE SKIP LOCKED``). On SQLite the queue is for one machine:
    the database has a single writer, so claims are serialized by its write lock (still
    exactly once, and consumers in several processes sharing the file are safe), and
    throughput is that of one writer.

    Args:
        database: a :class:`~lionagi_qe.db.manager.Database` (or ``DatabaseManager``), an
            :class:`AsyncEngine`, or a PostgreSQL or SQLite URL (the queue then owns its
            engine and :meth:`close` disposes it).
        name: the queue's name; queues share the table and never see each other's jobs.

    The queue never creates its table: run ``lionagi-qe db upgrade`` (or let the embedded
    SQLite memory upgrade the file first); a missing table raises :class:`SchemaMissingError`
    naming that command. (Alembic keeps its context in module globals, so migrations started
    from several objects at once in one process would trip over each other.)

    Raises:
        InvalidArgumentError: the database is neither PostgreSQL nor SQLite, or the name is
            empty or too long.
    """

    def __init__(self, database: Database | AsyncEngine | str | URL, name: str) -> None:
        self.name = _check_name(name, "queue name")
        self._owns_engine = False
        if isinstance(database, Database):
            engine = database.engine
        elif isinstance(database, AsyncEngine):
            engine = database
        elif isinstance(database, str | URL):
            engine = create_engine(normalize_url(database))
            self._owns_engine = True
        else:
            raise InvalidArgumentError("database must be a Database, an AsyncEngine or a URL")
        self.dialect = engine.dialect.name
        if self.dialect not in _DIALECTS:
            raise InvalidArgumentError("WorkQueue needs PostgreSQL or SQLite")
        self._sql = _statements(self.dialect)
        self._on_sqlite = self.dialect == "sqlite"
        self._base_engine = engine
        self._engine: AsyncEngine | None = (
            engine if self._on_sqlite else engine.execution_options(isolation_level="AUTOCOMMIT")
        )

    def _engine_or_closed(self) -> AsyncEngine:
        if self._engine is None:
            raise ClosedError("this WorkQueue is closed")
        return self._engine

    async def _execute(self, statement: Executable, params: dict[str, Any], *, write: bool) -> Any:
        """Run one statement; return its result (rows fetched, or the row count)."""
        engine = self._engine_or_closed()
        try:
            if write and self._on_sqlite:
                # The UPDATE/INSERT is the transaction's first statement, so SQLite takes the
                # write lock with the busy timeout and the statement sees the newest data.
                async with engine.begin() as conn:
                    result = await conn.execute(statement, params)
                    return result.all() if result.returns_rows else result.rowcount
            async with engine.connect() as conn:
                result = await conn.execute(statement, params)
                return result.all() if result.returns_rows else result.rowcount
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            raise translate(exc) from exc

    async def _run(self, statement: Executable, params: dict[str, Any]) -> Any:
        return await self._execute(statement, params, write=True)

    async def enqueue(
        self,
        payload: Any,
        *,
        priority: int = 0,
        dedupe_key: str | None = None,
        delay: float | None = None,
        max_attempts: int = 5,
    ) -> str:
        """Add a job; return its id.

        Args:
            payload: any value the codec can store as JSON.
            priority: higher runs first; equal priorities run in order of availability.
            dedupe_key: while a job with this key is ``queued`` or ``active`` in this queue,
                enqueueing it again returns the existing job's id and adds nothing.
            delay: seconds before the job can be claimed.
            max_attempts: claims allowed before the job is ``dead``.

        Raises:
            SerializationError: the payload has no JSON form (before any I/O).
            InvalidArgumentError: an argument is out of range (before any I/O).
        """
        payload_json = encode(payload)
        params = {
            "job_id": uuid.uuid4(),
            "b_queue": self.name,
            "b_payload": payload_json,
            "b_priority": _check_int(priority, "priority"),
            "b_max_attempts": _check_int(max_attempts, "max_attempts", 1),
            "b_dedupe_key": None if dedupe_key is None else _check_name(dedupe_key, "dedupe_key"),
            "delay": 0.0 if delay is None else _check_seconds(delay, "delay"),
        }
        rows = await self._run(self._sql.enqueue, params)
        return str(rows[0].id)

    async def claim(self, consumer: str, *, lease: float = 30.0) -> Job | None:
        """Take the next available job for ``consumer`` and lease it for ``lease`` seconds.

        The next job is the highest-priority queued job whose delay has passed (oldest first
        among equals), or an active job whose lease has lapsed (its consumer is presumed
        dead). Returns None when there is none. A job is never handed out twice while its
        lease is valid: PostgreSQL skips jobs locked by a concurrent claim, SQLite runs claims
        one at a time.
        """
        params = {
            "b_queue": self.name,
            "consumer": _check_name(consumer, "consumer"),
            "lease": _check_seconds(lease, "lease", allow_zero=False),
        }
        while True:
            rows = await self._run(self._sql.claim, params)
            if not rows:
                return None
            job = _job(rows[0])
            if job.state == "active":
                return job
            logger.warning(
                "job %s in queue %s is dead: lease lapsed on its last attempt", job.id, self.name
            )

    def _held_params(self, job: Job) -> dict[str, Any]:
        if not isinstance(job, Job):
            raise InvalidArgumentError("job must be a Job returned by claim()")
        return {"job_id": uuid.UUID(job.id), "consumer": job.consumer, "b_attempts": job.attempts}

    async def heartbeat(self, job: Job, lease: float | None = None) -> Job:
        """Extend the lease of a job this consumer still holds; return the updated job.

        Args:
            lease: new lease in seconds from now (server clock); default 30.

        Raises:
            LeaseLostError: another consumer claimed the job after this lease lapsed, or the
                job is no longer active.
        """
        params = self._held_params(job)
        params["lease"] = (
            30.0 if lease is None else _check_seconds(lease, "lease", allow_zero=False)
        )
        rows = await self._run(self._sql.heartbeat, params)
        if not rows:
            raise LeaseLostError(f"job {job.id} is no longer held by {job.consumer!r}")
        return _job(rows[0])

    async def complete(self, job: Job, result: Any = None) -> None:
        """Mark a held job ``done`` with an optional JSON ``result``.

        A lease that lapsed but was not yet claimed by anyone else still counts as held.

        Raises:
            SerializationError: the result has no JSON form (before any I/O).
            LeaseLostError: the job was claimed again (a later attempt) or is not active.
        """
        params = self._held_params(job)
        params["b_result"] = encode(result)
        if not await self._run(self._sql.complete, params):
            raise LeaseLostError(f"job {job.id} is no longer held by {job.consumer!r}")

    async def fail(self, job: Job, error: str, *, retry_delay: float = 0.0) -> str:
        """Report a failed attempt; return the job's new state (``queued`` or ``dead``).

        The job is queued again (claimable after ``retry_delay`` seconds) unless it has used
        ``max_attempts`` attempts, in which case it is ``dead``.

        Raises:
            LeaseLostError: the job was claimed again (a later attempt) or is not active.
        """
        params = self._held_params(job)
        if not isinstance(error, str):
            raise InvalidArgumentError("error must be a string")
        params["b_error"] = error.replace("\x00", "")
        params["retry_delay"] = _check_seconds(retry_delay, "retry_delay")
        rows = await self._run(self._sql.fail, params)
        if not rows:
            raise LeaseLostError(f"job {job.id} is no longer held by {job.consumer!r}")
        return str(rows[0].state)

    async def stats(self) -> dict[str, int]:
        """Number of jobs in each state (every state present, zeros included)."""
        counts = dict.fromkeys(JOB_STATES, 0)
        rows = await self._execute(self._sql.stats, {"b_queue": self.name}, write=False)
        for state, count in rows:
            counts[state] = int(count)
        return counts

    async def purge(self, older_than: float | None = None) -> int:
        """Delete finished (``done`` or ``dead``) jobs; return how many.

        Args:
            older_than: only jobs finished at least this many seconds ago; None: all.

        Deletes in batches of :data:`PURGE_BATCH` rows, each its own transaction.
        """
        age = 0.0 if older_than is None else _check_seconds(older_than, "older_than")
        return await self._delete_batches(self._sql.purge, {"b_queue": self.name, "age": -age})

    async def clear(self) -> int:
        """Delete every job of this queue, whatever its state; return how many.

        For tests and demos that start over: a consumer still holding one of these jobs gets
        :class:`LeaseLostError` when it reports back. Other queues are untouched.
        """
        return await self._delete_batches(self._sql.clear, {"b_queue": self.name})

    async def _delete_batches(self, statement: Executable, params: dict[str, Any]) -> int:
        total = 0
        while True:
            deleted: int = await self._run(statement, params)
            total += deleted
            if deleted < PURGE_BATCH:
                return total

    async def close(self) -> None:
        """Dispose the engine if this queue created it; later calls raise ClosedError."""
        engine, self._engine = self._engine, None
        if engine is not None and self._owns_engine:
            await self._base_engine.dispose()

    def __repr__(self) -> str:
        return f"<WorkQueue {self.name!r} on {self.dialect}>"
