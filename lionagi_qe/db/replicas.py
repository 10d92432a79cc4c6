"""Read replicas: which PostgreSQL server may answer a read that tolerates staleness.

Topology: one primary takes every write and every point read; streaming (physical) replicas of
it may answer reads that accept slightly stale data (search, listing, scans, statistics, and
learning reads whose caller says so). The router never sends a write to a replica.

Decisions, and why:

- **Read-your-writes by LSN, not by a time window.** After a write through this router's owner
  (a memory or a :class:`~lionagi_qe.db.manager.Database`), stale-ok reads go to the primary
  until a replica is *known* to have replayed past the write: a background task reads the
  primary's WAL flush position (``pg_current_wal_flush_lsn()``; the insert position when
  ``synchronous_commit`` is off), which is past the commit record of every write that had
  returned before it was read, and polls each replica's ``pg_last_wal_replay_lsn()``. A
  time window ("primary for N seconds after a write") either waits longer than needed or,
  when a replica lags more than N, serves a read that misses the caller's own write; the LSN
  comparison is exact. Readers never wait for that task by default (``wait=0``): the primary
  answers at once, which on a local network costs the caller less than the two extra round
  trips waiting would take (measured: see the README). ``wait > 0`` lets a read after a
  write wait that long for the replica to catch up before falling back (more offload, more
  latency). Limitation: a transaction that turns ``synchronous_commit`` off for itself
  (``SET LOCAL``) while the server default is on may return before its WAL is flushed; its
  read-your-writes then holds only once the WAL writer has flushed it (within about
  ``wal_writer_delay``).
- **Bounded staleness for everybody else.** Each refresh samples the primary's position with
  the time it was read; a replica that has replayed past a sample taken at ``t`` holds every
  write committed before ``t``. A replica whose newest such ``t`` is older than ``max_lag``
  seconds is skipped (reads go to the primary) until it catches up; so a read from a replica
  is at most about ``max_lag`` seconds stale, whoever wrote. Readers refresh the samples in
  the background once half of ``max_lag`` has passed.
- **A failing replica is skipped, then retried.** A replica that refuses a connection, loses
  one, or turns out not to be in recovery (promoted, or a primary given by mistake) is marked
  down for ``retry_after`` seconds; the read that hit the failure is run again on the
  primary, so the caller sees no error. After ``retry_after`` the background refresh probes
  it (never a reader), and it serves again once it is fresh. Probes and connects to replicas
  run under ``connect_timeout``, so a black-holed replica holds up only the background task.
- **Scope.** "A caller's own writes" are the writes made through the same router, i.e. the same
  memory or ``Database`` object in one process (every task using it). Writes by other
  processes become visible on replicas within the staleness bound. Expiry on a replica is
  judged by the replica's clock (keep servers NTP-synchronised).

Nothing here runs unless replicas are configured: an owner without replicas has no router.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import URL, Select, event, literal_column, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from lionagi_qe.db.direct import DirectRunner, supports_direct
from lionagi_qe.db.engine import create_engine, normalize_url
from lionagi_qe.db.translate import translate
from lionagi_qe.errors import InvalidArgumentError, PersistenceError

__all__ = ["Replica", "ReplicaRouter", "check_replica_options"]

logger = logging.getLogger(__name__)

# SELECT constructs (not text): the write watcher below ignores them, and the direct runner may
# resend them after a lost connection.
# The position a replica must replay to hold every write that has returned: with
# ``synchronous_commit`` on (or local, remote_write, remote_apply) a commit returns after its WAL
# is flushed, so the flush position covers it, and the replica can reach it (walsenders send
# flushed WAL only; the insert position may point into WAL that nothing will flush until the
# next commit, which kept an idle replica "behind" for 15 s in tests). With it off, a commit
# returns before the flush: only the insert position covers it.
_PRIMARY_LSN: Select[Any] = select(
    literal_column(
        "(CASE WHEN current_setting('synchronous_commit') = 'off' "
        "THEN pg_current_wal_insert_lsn() ELSE pg_current_wal_flush_lsn() END"
        " - '0/0'::pg_lsn)::bigint"
    )
)
# NULL on a server that is not in recovery: a promoted replica keeps its last replay position,
# which would otherwise look merely stale.
_REPLAY_LSN: Select[Any] = select(
    literal_column(
        "CASE WHEN pg_is_in_recovery() THEN (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint END"
    )
)

#: First and longest pause between background refreshes while a replica is catching up.
_POLL_FIRST = 0.002
_POLL_MAX = 0.05
#: Primary position samples kept for the staleness bound.
_SAMPLES = 512


def check_replica_options(
    *, max_lag: float, wait: float, retry_after: float, connect_timeout: float
) -> None:
    """Raise :class:`InvalidArgumentError` for a bound that makes no sense (before any I/O)."""
    for name, value, low in (
        ("replica_max_lag", max_lag, 0.0),
        ("replica_retry_after", retry_after, 0.0),
        ("replica_connect_timeout", connect_timeout, 0.0),
    ):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > low:
            raise InvalidArgumentError(f"{name} must be a number > 0")
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait < max_lag:
        raise InvalidArgumentError("replica_wait must be a number >= 0 and below replica_max_lag")


@dataclass(eq=False)
class Replica:
    """One replica: its engine and what the router last learned about it."""

    label: str  # URL with the password masked
    engine: AsyncEngine
    runner: DirectRunner | None
    #: Highest replay position seen (bytes of WAL); only ever grows.
    replayed: int = -1
    #: Primary time (monotonic) up to which every commit is known to be replayed here.
    fresh_at: float = float("-inf")
    down_until: float = float("-inf")
    last_error: str | None = None
    reads: int = 0
    failures: int = 0

    def usable(self, now: float, max_lag: float) -> bool:
        """Up and no staler than ``max_lag``."""
        return self.down_until <= now and now - self.fresh_at <= max_lag


@dataclass(eq=False)
class _Counters:
    primary_reads: int = 0
    fallbacks: int = 0
    refreshes: int = 0
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=_SAMPLES))


class ReplicaRouter:
    """Chooses a replica (or the primary) for each stale-ok read; tracks the owner's writes.

    Args:
        primary: the primary's engine (its pool serves the position probes).
        replica_urls: PostgreSQL URLs of streaming replicas of that primary.
        max_lag: seconds of staleness beyond which a replica is skipped.
        wait: seconds a read after the owner's own write may wait for a replica to replay it
            before the primary answers (0: never wait).
        retry_after: seconds a failed replica is left alone before it is probed again.
        connect_timeout: seconds a connection to a replica may take (unless its URL says).
        **engine_options: pool options for the replica engines (as for the primary).
    """

    def __init__(
        self,
        primary: AsyncEngine,
        replica_urls: Sequence[str | URL],
        *,
        max_lag: float = 5.0,
        wait: float = 0.0,
        retry_after: float = 5.0,
        connect_timeout: float = 2.0,
        **engine_options: Any,
    ) -> None:
        check_replica_options(
            max_lag=max_lag, wait=wait, retry_after=retry_after, connect_timeout=connect_timeout
        )
        if primary.dialect.name != "postgresql":
            raise InvalidArgumentError("read replicas need a PostgreSQL primary")
        urls = [normalize_url(url) for url in replica_urls]
        if not urls:
            raise InvalidArgumentError("give at least one replica URL")
        for url in urls:
            if url.get_backend_name() != "postgresql":
                raise InvalidArgumentError("replica URLs must be PostgreSQL URLs")
        self.max_lag = float(max_lag)
        self.wait = float(wait)
        self.retry_after = float(retry_after)
        self._primary = primary
        self._primary_runner = DirectRunner(primary) if supports_direct(primary) else None
        self.replicas = tuple(self._replica(url, connect_timeout, engine_options) for url in urls)
        #: Writes finished through the owner, and how many of them ``_own_lsn`` covers.
        self._writes = 0
        self._covered = 0
        self._own_lsn = -1
        self._next = 0
        self._counters = _Counters()
        self._task: asyncio.Task[None] | None = None
        self._progress: asyncio.Future[None] | None = None
        self._closed = False
        self._probe_timeout = 2 * float(connect_timeout)
        self._hooks = _watch_writes(primary, self)

    @staticmethod
    def _replica(url: URL, connect_timeout: float, options: dict[str, Any]) -> Replica:
        options = dict(options)
        connect_args = dict(options.pop("connect_args", {}))
        if not {"connect_timeout", "timeout"} & set(url.query):
            connect_args.setdefault("timeout", connect_timeout)
        engine = create_engine(url, connect_args=connect_args, **options)
        runner = DirectRunner(engine) if supports_direct(engine) else None
        return Replica(url.render_as_string(hide_password=True), engine, runner)

    # -- the owner's writes -------------------------------------------------------------------

    def note_write(self) -> None:
        """Record that a write through the owner finished (or failed, or was cancelled: it may
        have been applied). Stale-ok reads go to the primary until a replica replays it."""
        self._writes += 1

    # -- choosing -----------------------------------------------------------------------------

    def pick(self) -> Replica | None:
        """A replica that may answer a stale-ok read now, or None for the primary (no I/O).

        Starts a background refresh when one would let a replica serve (the owner wrote, a
        replica lags or is due for a probe).
        """
        now = time.monotonic()
        dirty = self._writes != self._covered
        chosen: Replica | None = None
        refresh = dirty
        count = len(self.replicas)
        for step in range(count):
            replica = self.replicas[(self._next + step) % count]
            if replica.down_until > now:
                continue
            if not replica.usable(now, self.max_lag) or replica.replayed < self._own_lsn:
                refresh = True
                continue
            if now - replica.fresh_at > self.max_lag / 2:
                refresh = True
            if chosen is None and not dirty:
                chosen = replica
                self._next = (self._next + step + 1) % count
        if refresh:
            self._kick()
        if chosen is None:
            self._counters.primary_reads += 1
        return chosen

    async def choose(self) -> Replica | None:
        """:meth:`pick`, waiting up to ``wait`` seconds for a replica that is up but behind."""
        replica = self.pick()
        if replica is not None or self.wait <= 0:
            return replica
        deadline = time.monotonic() + self.wait
        while (remaining := deadline - time.monotonic()) > 0:
            now = time.monotonic()
            if not any(r.down_until <= now for r in self.replicas):
                break
            progress, task = self._progress, self._task
            if progress is None or task is None or task.done():
                break  # nothing under way could change the answer
            try:
                await asyncio.wait_for(asyncio.shield(progress), remaining)
            except TimeoutError:
                break
            self._counters.primary_reads -= 1  # the earlier pick counted this read
            replica = self.pick()
            if replica is not None:
                return replica
        return None

    def served(self, replica: Replica) -> None:
        """Count a read a replica answered."""
        replica.reads += 1

    def failed(self, replica: Replica, exc: BaseException) -> None:
        """A read on ``replica`` failed: the caller reruns it on the primary; an unreachable
        replica is left alone for ``retry_after`` seconds."""
        from lionagi_qe.errors import BackendUnavailableError

        self._counters.fallbacks += 1
        self._counters.primary_reads += 1
        replica.failures += 1
        replica.last_error = type(exc).__name__
        if isinstance(exc, BackendUnavailableError):
            self._mark_down(replica, type(exc).__name__)

    def _mark_down(self, replica: Replica, reason: str) -> None:
        if replica.down_until <= time.monotonic():
            logger.warning(
                "replica %s skipped for %.1f s: %s", replica.label, self.retry_after, reason
            )
        replica.down_until = time.monotonic() + self.retry_after
        replica.last_error = reason
        # Not usable again until a background probe finds it up and fresh: readers never
        # retry a failed replica themselves.
        replica.fresh_at = float("-inf")

    # -- background refresh -------------------------------------------------------------------

    def _kick(self) -> None:
        if self._closed or (self._task is not None and not self._task.done()):
            return
        loop = asyncio.get_running_loop()
        if self._progress is None or self._progress.done():
            self._progress = loop.create_future()
        self._task = loop.create_task(self._refresh_loop(), name="aqe-replica-refresh")

    def _signal(self) -> None:
        progress = self._progress
        if progress is not None and not progress.done():
            progress.set_result(None)
        if not self._closed:
            self._progress = asyncio.get_running_loop().create_future()

    def _pending(self) -> bool:
        """Whether another pass could make a replica usable soon."""
        now = time.monotonic()
        if self._writes != self._covered:
            return True
        return any(
            r.down_until <= now and (r.replayed < self._own_lsn or not r.usable(now, self.max_lag))
            for r in self.replicas
        )

    async def _refresh_loop(self) -> None:
        delay = _POLL_FIRST / 2
        started = time.monotonic()
        try:
            while not self._closed:
                # New writes since the last pass: poll quickly again (they replay in about a
                # millisecond on a healthy replica); otherwise back off.
                delay = _POLL_FIRST if self._writes != self._covered else min(delay * 2, _POLL_MAX)
                await self._refresh_once()
                self._signal()
                if not self._pending() or time.monotonic() - started > self.max_lag:
                    return
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            raise
        except Exception:  # never let the task die with an unretrieved exception
            logger.exception("replica refresh failed")
        finally:
            progress = self._progress
            if progress is not None and not progress.done():
                progress.set_result(None)

    async def _refresh_once(self) -> None:
        """Sample the primary's position, then read each replica's replay position."""
        self._counters.refreshes += 1
        writes = self._writes
        sampled_at = time.monotonic()
        try:
            position = await _scalar(self._primary, self._primary_runner, _PRIMARY_LSN)
        except PersistenceError as exc:
            logger.debug("primary position unavailable: %s", type(exc).__name__)
            return
        if position is None:
            return
        if writes != self._covered:
            # Every write counted in ``writes`` had returned before the position was read.
            self._own_lsn = max(self._own_lsn, int(position))
            self._covered = writes
        self._counters.samples.append((sampled_at, int(position)))
        now = time.monotonic()
        due = [r for r in self.replicas if r.down_until <= now]
        await asyncio.gather(*(self._probe(replica) for replica in due))

    async def _probe(self, replica: Replica) -> None:
        try:
            async with asyncio.timeout(self._probe_timeout):
                replayed = await _scalar(replica.engine, replica.runner, _REPLAY_LSN)
        except (PersistenceError, TimeoutError) as exc:
            self._mark_down(replica, type(exc).__name__)
            return
        if replayed is None:
            self._mark_down(replica, "not a replica (pg_is_in_recovery() is false)")
            return
        if replica.last_error is not None:
            logger.info("replica %s answers again", replica.label)
            replica.last_error = None
        replica.replayed = max(replica.replayed, int(replayed))
        for sampled_at, position in reversed(self._counters.samples):
            if position <= replica.replayed:
                replica.fresh_at = max(replica.fresh_at, sampled_at)
                break

    # -- reporting and lifecycle --------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Reads per server, fallbacks, and each replica's state (for dashboards and tests)."""
        now = time.monotonic()
        replicas = []
        for replica in self.replicas:
            state = "down" if replica.down_until > now else "lagging"
            if replica.usable(now, self.max_lag):
                state = "ok"
            lag = now - replica.fresh_at if replica.fresh_at > float("-inf") else None
            replicas.append(
                {
                    "url": replica.label,
                    "state": state,
                    "reads": replica.reads,
                    "failures": replica.failures,
                    "staleness_bound_s": None if lag is None else round(lag, 3),
                    "last_error": replica.last_error,
                }
            )
        return {
            "primary_reads": self._counters.primary_reads,
            "fallbacks": self._counters.fallbacks,
            "refreshes": self._counters.refreshes,
            "replicas": replicas,
        }

    async def close(self) -> None:
        """Stop the background refresh and dispose the replica engines."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._primary_runner is not None:
            await self._primary_runner.release()
        for target, name, hook in self._hooks:
            with contextlib.suppress(Exception):
                event.remove(target, name, hook)
        for replica in self.replicas:
            if replica.runner is not None:
                await replica.runner.release()
            await replica.engine.dispose()

    def __repr__(self) -> str:
        labels = ", ".join(replica.label for replica in self.replicas)
        return f"<ReplicaRouter [{labels}] max_lag={self.max_lag}>"


async def _scalar(engine: AsyncEngine, runner: DirectRunner | None, statement: Any) -> Any:
    """One value from one statement in autocommit (errors translated)."""
    if runner is not None and not runner.observed():
        return (await runner.execute(statement)).scalar()
    try:
        async with engine.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
            return (await conn.execute(statement)).scalar()
    except (SQLAlchemyError, OSError) as exc:
        raise translate(exc) from exc


# -- writes that bypass the owner's own bookkeeping ---------------------------------------------
#
# Code that runs SQL through ``Database.engine`` (the Q-learning store, the work queue) counts
# as the owner too: statements that may write are noticed through engine events. A statement in
# autocommit counts once it returns; a transaction counts again when its connection goes back
# to the pool, i.e. after COMMIT (``after_execute`` fires before it).

_WROTE = "aqe_replica_wrote"


def _may_write(statement: Any) -> bool:
    return not bool(getattr(statement, "is_select", False)) or bool(
        getattr(statement, "is_dml", False)
    )


def _watch_writes(engine: AsyncEngine, router: ReplicaRouter) -> list[tuple[Any, str, Any]]:
    """Count writes run on ``engine`` outside the owner's bookkeeping; return the hooks."""
    sync = engine.sync_engine

    def after_execute(conn: Any, statement: Any, *_args: Any) -> None:
        if _may_write(statement):
            router.note_write()
            conn.info[_WROTE] = True

    def handle_error(_context: Any) -> None:
        router.note_write()  # an error mid-write leaves its outcome unknown

    def checkin(_dbapi: Any, record: Any) -> None:
        if record is not None and record.info.pop(_WROTE, False):
            router.note_write()

    hooks: list[tuple[Any, str, Any]] = [
        (sync, "after_execute", after_execute),
        (sync, "handle_error", handle_error),
        (sync.pool, "checkin", checkin),
    ]
    for target, name, hook in hooks:
        event.listen(target, name, hook)
    return hooks
