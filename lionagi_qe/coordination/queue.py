"""``WorkQueue``: a PostgreSQL job queue with priorities, delays, dedupe keys and leases.

Every operation is one Core statement, built once at import and run in autocommit: each is a
single-row (or single-batch) change that needs no surrounding unit of work, and autocommit keeps
row locks for the shortest possible time. All times come from the database clock, so consumers
on hosts with skewed clocks agree on when a lease lapses.

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
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Executable

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

#: Rows deleted per statement by :meth:`WorkQueue.purge`.
PURGE_BATCH = 1000
_MAX_NAME = 255


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


def _json(name: str) -> Any:
    # Values are encoded by lionagi_qe.codec in the caller's process, then cast on the server.
    return cast(bindparam(name, type_=Text()), postgresql.JSONB())


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

_insert = postgresql.insert(_t).values(
    id=bindparam("job_id"),
    queue=bindparam("b_queue"),
    payload=_json("b_payload"),
    priority=bindparam("b_priority", type_=Integer()),
    max_attempts=bindparam("b_max_attempts", type_=Integer()),
    dedupe_key=bindparam("b_dedupe_key"),
    available_at=_seconds("delay"),
    created_at=server_now(),
    updated_at=server_now(),
)
#: A live job with the same dedupe key wins: the no-op update makes RETURNING give its id.
_ENQUEUE = _insert.on_conflict_do_update(
    index_elements=[_c.queue, _c.dedupe_key],
    index_where=text("state IN ('queued', 'active')"),
    set_={"dedupe_key": _insert.excluded.dedupe_key},
).returning(_c.id)

_lapsed = and_(_c.state == "active", _c.lease_expires_at <= server_now())
_next_id = (
    select(_c.id)
    .where(
        _c.queue == bindparam("b_queue"),
        or_(and_(_c.state == "queued", _c.available_at <= server_now()), _lapsed),
    )
    .order_by(_c.priority.desc(), _c.available_at, _c.created_at)
    .limit(1)
    .with_for_update(skip_locked=True)
    .scalar_subquery()
)
# A lapsed job that has used every attempt dies here instead of being handed out again.
_exhausted = and_(_c.state == "active", _c.attempts >= _c.max_attempts)
_CLAIM = (
    update(_t)
    .where(_c.id == _next_id)
    .values(
        state=case((_exhausted, literal("dead")), else_=literal("active")),
        attempts=case((_exhausted, _c.attempts), else_=_c.attempts + 1),
        lease_owner=case((_exhausted, None), else_=bindparam("consumer")),
        lease_expires_at=case((_exhausted, None), else_=_seconds("lease")),
        error=case((_exhausted, literal("lease expired on the last attempt")), else_=_c.error),
        finished_at=case((_exhausted, server_now()), else_=None),
        updated_at=server_now(),
    )
    .returning(*_JOB_COLUMNS)
)

#: The caller still holds the job: same consumer, same attempt, still active.
_held = and_(
    _c.id == bindparam("job_id"),
    _c.state == "active",
    _c.lease_owner == bindparam("consumer"),
    _c.attempts == bindparam("b_attempts", type_=Integer()),
)
_HEARTBEAT = (
    update(_t)
    .where(_held)
    .values(lease_expires_at=_seconds("lease"), updated_at=server_now())
    .returning(*_JOB_COLUMNS)
)
_COMPLETE = (
    update(_t)
    .where(_held)
    .values(
        state="done",
        result=_json("b_result"),
        lease_owner=None,
        lease_expires_at=None,
        finished_at=server_now(),
        updated_at=server_now(),
    )
    .returning(_c.id)
)
_dies = _c.attempts >= _c.max_attempts
_FAIL = (
    update(_t)
    .where(_held)
    .values(
        state=case((_dies, literal("dead")), else_=literal("queued")),
        error=bindparam("b_error", type_=Text()),
        lease_owner=None,
        lease_expires_at=None,
        available_at=case((_dies, _c.available_at), else_=_seconds("retry_delay")),
        finished_at=case((_dies, server_now()), else_=None),
        updated_at=server_now(),
    )
    .returning(_c.state)
)
_STATS = select(_c.state, func.count()).where(_c.queue == bindparam("b_queue")).group_by(_c.state)
_purge_ids = (
    select(_c.id)
    .where(
        _c.queue == bindparam("b_queue"),
        _c.state.in_(("done", "dead")),
        _c.finished_at <= _seconds("age"),
    )
    .limit(PURGE_BATCH)
)
_PURGE = delete(_t).where(_c.id.in_(_purge_ids))


def _check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_NAME:
        raise InvalidArgumentError(f"{what} must be a non-empty string of at most {_MAX_NAME}")
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
    """A named queue of JSON jobs on PostgreSQL, safe for any number of concurrent consumers.

    Args:
        database: a :class:`~lionagi_qe.db.manager.Database` (or ``DatabaseManager``), an
            :class:`AsyncEngine`, or a PostgreSQL URL (the queue then owns its engine and
            :meth:`close` disposes it).
        name: the queue's name; queues share the table and never see each other's jobs.

    Raises:
        InvalidArgumentError: the database is not PostgreSQL (``FOR UPDATE SKIP LOCKED`` is
            what makes concurrent claims safe), or the name is empty or too long.
    """

    def __init__(self, database: Database | AsyncEngine | str | URL, name: str) -> None:
        self.name = _check_name(name, "queue name")
        self._owns_engine = False
        if isinstance(database, Database):
            engine = database.engine
        elif isinstance(database, AsyncEngine):
            engine = database
        elif isinstance(database, str | URL):
            url = normalize_url(database)
            if url.get_backend_name() != "postgresql":
                raise InvalidArgumentError("WorkQueue needs PostgreSQL")
            engine = create_engine(url)
            self._owns_engine = True
        else:
            raise InvalidArgumentError("database must be a Database, an AsyncEngine or a URL")
        if engine.dialect.name != "postgresql":
            raise InvalidArgumentError("WorkQueue needs PostgreSQL")
        self._engine: AsyncEngine | None = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._base_engine = engine

    async def _run(self, statement: Executable, params: dict[str, Any]) -> Any:
        if self._engine is None:
            raise ClosedError("this WorkQueue is closed")
        try:
            async with self._engine.connect() as conn:
                return (await conn.execute(statement, params)).all()
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            raise translate(exc) from exc

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
        rows = await self._run(_ENQUEUE, params)
        return str(rows[0].id)

    async def claim(self, consumer: str, *, lease: float = 30.0) -> Job | None:
        """Take the next available job for ``consumer`` and lease it for ``lease`` seconds.

        The next job is the highest-priority queued job whose delay has passed, or an active
        job whose lease has lapsed (its consumer is presumed dead). Returns None when there is
        none. Jobs locked by a concurrent claim are skipped, never waited for or handed out
        twice.
        """
        params = {
            "b_queue": self.name,
            "consumer": _check_name(consumer, "consumer"),
            "lease": _check_seconds(lease, "lease", allow_zero=False),
        }
        while True:
            rows = await self._run(_CLAIM, params)
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
        rows = await self._run(_HEARTBEAT, params)
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
        if not await self._run(_COMPLETE, params):
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
        rows = await self._run(_FAIL, params)
        if not rows:
            raise LeaseLostError(f"job {job.id} is no longer held by {job.consumer!r}")
        return str(rows[0].state)

    async def stats(self) -> dict[str, int]:
        """Number of jobs in each state (every state present, zeros included)."""
        counts = dict.fromkeys(JOB_STATES, 0)
        for state, count in await self._run(_STATS, {"b_queue": self.name}):
            counts[state] = int(count)
        return counts

    async def purge(self, older_than: float | None = None) -> int:
        """Delete finished (``done`` or ``dead``) jobs; return how many.

        Args:
            older_than: only jobs finished at least this many seconds ago; None: all.

        Deletes in batches of :data:`PURGE_BATCH` rows, each its own transaction.
        """
        age = 0.0 if older_than is None else _check_seconds(older_than, "older_than")
        params = {"b_queue": self.name, "age": -age}
        total = 0
        while True:
            if self._engine is None:
                raise ClosedError("this WorkQueue is closed")
            try:
                async with self._engine.connect() as conn:
                    deleted = (await conn.execute(_PURGE, params)).rowcount
            except (SQLAlchemyError, OSError, TimeoutError) as exc:
                raise translate(exc) from exc
            total += deleted
            if deleted < PURGE_BATCH:
                return total

    async def close(self) -> None:
        """Dispose the engine if this queue created it; later calls raise ClosedError."""
        engine, self._engine = self._engine, None
        if engine is not None and self._owns_engine:
            await self._base_engine.dispose()

    def __repr__(self) -> str:
        return f"<WorkQueue {self.name!r}>"
