"""PostgreSQL restarted, crashed and killed under a steady write load (SPEC §11).

Every test runs a PostgreSQL cluster of its module's own (``initdb`` on a free loopback port,
see :mod:`lionagi_qe.testing.throwaway`): it is restarted with ``pg_ctl restart -m fast``, its
postmaster killed with SIGKILL and started again, and single backends killed mid-statement —
never the shared server.

Writers keep calling through every path while the fault happens: ``PostgresMemory.store`` and
``increment`` (the direct asyncpg path), bursts of concurrent stores (the coalescer's multi-row
upserts), ``DatabaseManager.update_q_value`` and ``WorkQueue`` enqueue/claim/complete (the
SQLAlchemy pool). Each call records when it started and ended and how it ended. Promises:

- a call that fails fails with ``BackendUnavailableError``, never a raw driver error, and no
  call hangs;
- every acknowledged write is there afterwards, none is applied twice: each stored key was
  written once (version 1), a counter ends between its acknowledged increments and those plus
  the failed ones, and acknowledged increments returned strictly increasing values; likewise
  for Q-value visit counts, enqueued and completed jobs;
- the pools heal without a process restart: once the server accepts connections again no call
  fails (the pools replace connections the server closed before sending anything on them), and
  every writer has a success within :data:`HEAL_BOUND` seconds.

Then the statement in flight when its backend dies: a write fails with
``BackendUnavailableError`` and is not sent again (an ambiguous write is the caller's to
retry); a read is retried once on a fresh connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lionagi_qe import DatabaseManager, WorkQueue
from lionagi_qe.backends.sql import PostgresMemory
from lionagi_qe.db import migrate
from lionagi_qe.db.engine import create_engine
from lionagi_qe.db.liveness import install_liveness_check
from lionagi_qe.errors import BackendUnavailableError
from lionagi_qe.testing import throwaway
from lionagi_qe.testing.helpers import run_sync
from lionagi_qe.testing.servers import check_postgres

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.slow]

#: Seconds within which every writer must have a successful call once the server is back.
HEAL_BOUND = 5.0
#: Calls started after the server accepts connections again that may fail.
FAILURES_AFTER_UP = 0
#: Longest any single call may take (a hang fails the test).
CALL_BOUND = 15.0
AGENT = "test-generator"


# -- a private cluster ------------------------------------------------------------------------


class PrivatePostgres:
    """A cluster of this module's own, to restart and kill."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.url: str = state.url
        self.base = Path(state.base_dir)
        self.data = self.base / "data"
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])
        self.account = throwaway._postgres_account()
        # The shared throwaway runs with synchronous_commit off, which acknowledges commits
        # a crash then loses: a durability test needs it on (fsync may stay off: the kernel
        # keeps written WAL when only PostgreSQL dies).
        self.options = f"-p {self.port} -c synchronous_commit=on"

    def _pg_ctl(self, *args: str) -> None:
        pg_ctl = [str(Path(self.state.bin_dir) / "pg_ctl"), "-D", str(self.data)]
        log = ["-l", str(self.base / "postgres.log")]
        throwaway._run([*pg_ctl, *log, *args], account=self.account, cwd=self.base)

    def restart_fast(self) -> None:
        """``pg_ctl restart -m fast``; returns once the server accepts connections."""
        self._pg_ctl("-m", "fast", "-w", "-t", "60", "-o", self.options, "restart")

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def kill_postmaster(self) -> None:
        """SIGKILL the postmaster (its backends exit when they notice)."""
        os.kill(self.postmaster_pid(), signal.SIGKILL)

    def start(self) -> None:
        """Start after a kill: retried while orphaned backends still hold the old segment."""
        deadline = time.monotonic() + 30
        while True:
            try:
                self._pg_ctl("-w", "-t", "60", "-o", self.options, "start")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def wait_accepting(self, limit: float = 30.0) -> None:
        deadline = time.monotonic() + limit
        while check_postgres(self.url) is not None:
            if time.monotonic() > deadline:
                raise AssertionError("the private server did not come back")
            time.sleep(0.05)


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    state = throwaway._start_postgres()
    try:
        server = PrivatePostgres(state)
        server.restart_fast()  # with the options above

        async def upgrade() -> None:
            engine = create_engine(server.url)
            try:
                await migrate.upgrade(engine)
            finally:
                await engine.dispose()

        run_sync(upgrade)
        yield server
    finally:
        throwaway._stop_postgres(state)


@dataclass
class Stores:
    """Everything the writers use, all on the private cluster."""

    memory: PostgresMemory
    memory_engine: AsyncEngine
    db: DatabaseManager
    queue: WorkQueue
    queue_engine: AsyncEngine
    admin: AsyncEngine


def _engine(url: str, liveness: bool) -> AsyncEngine:
    engine = create_engine(url, pool_size=8, pool_timeout=5)
    if liveness:
        install_liveness_check(engine)
    return engine


async def _open(url: str, *, liveness: bool = True) -> Stores:
    memory_engine = _engine(url, liveness)
    queue_engine = _engine(url, liveness)
    db = DatabaseManager(url, min_connections=0, max_connections=6, pool_timeout=5)
    if liveness:
        install_liveness_check(db.engine)
    return Stores(
        memory=PostgresMemory(memory_engine),
        memory_engine=memory_engine,
        db=db,
        queue=WorkQueue(queue_engine, f"fault-{uuid.uuid4().hex[:8]}"),
        queue_engine=queue_engine,
        admin=create_engine(url, pool_size=1, pool_timeout=5),
    )


async def _close(stores: Stores) -> None:
    await stores.memory.close()
    await stores.queue.close()
    await stores.db.close()
    for engine in (stores.memory_engine, stores.queue_engine, stores.admin):
        await engine.dispose()


@pytest_asyncio.fixture(loop_scope="session")
async def stores(private_pg: PrivatePostgres) -> AsyncIterator[Stores]:
    opened = await _open(private_pg.url)
    try:
        yield opened
    finally:
        await _close(opened)


# -- the load ---------------------------------------------------------------------------------


@dataclass
class Call:
    kind: str
    started: float
    ended: float
    error: BaseException | None


@dataclass
class Ledger:
    """Every call of the load: kind, start, end, error."""

    calls: list[Call] = field(default_factory=list)

    async def run(self, kind: str, call: Awaitable[Any]) -> tuple[bool, Any]:
        started = time.monotonic()
        error: BaseException | None = None
        result: Any = None
        try:
            result = await asyncio.wait_for(call, CALL_BOUND)
        except Exception as exc:
            error = exc
        self.calls.append(Call(kind, started, time.monotonic(), error))
        return error is None, result


@dataclass
class Load:
    """Writers on every path, and what each one had acknowledged."""

    stores: Stores
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    ledger: Ledger = field(default_factory=Ledger)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    acked_keys: dict[str, Any] = field(default_factory=dict)
    failed_keys: set[str] = field(default_factory=set)
    versions: list[int] = field(default_factory=list)
    increments: dict[str, list[Any]] = field(default_factory=dict)  # key -> acked values
    failed_increments: dict[str, int] = field(default_factory=dict)
    q_acked: dict[str, int] = field(default_factory=dict)
    q_failed: dict[str, int] = field(default_factory=dict)
    enqueued: dict[str, Any] = field(default_factory=dict)  # job id -> payload
    enqueue_failed: int = 0
    completed: set[str] = field(default_factory=set)
    claimed_payloads: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"aqe/fault/{self.run_id}/"

    async def _pace(self, ok: bool) -> None:
        await asyncio.sleep(0.005 if ok else 0.02)

    async def store_writer(self, w: int) -> None:
        seq = 0
        while not self.stop.is_set():
            key, value = f"{self.prefix}s/{w}/{seq}", {"w": w, "seq": seq}
            ok, version = await self.ledger.run("store", self.stores.memory.store(key, value))
            self._record_store(key, value, ok, version)
            seq += 1
            await self._pace(ok)

    async def burst_writer(self, w: int) -> None:
        seq = 0
        while not self.stop.is_set():
            items = [(f"{self.prefix}b/{w}/{seq}/{i}", {"b": seq, "i": i}) for i in range(12)]
            outcomes = await asyncio.gather(
                *(self.ledger.run("burst", self.stores.memory.store(k, v)) for k, v in items)
            )
            for (key, value), (ok, version) in zip(items, outcomes, strict=True):
                self._record_store(key, value, ok, version)
            seq += 1
            await self._pace(all(ok for ok, _ in outcomes))

    def _record_store(self, key: str, value: Any, ok: bool, version: Any) -> None:
        if ok:
            self.acked_keys[key] = value
            self.versions.append(version)
        else:
            self.failed_keys.add(key)

    async def increment_writer(self, w: int) -> None:
        key = f"{self.prefix}c/{w}"
        acked = self.increments.setdefault(key, [])
        self.failed_increments.setdefault(key, 0)
        while not self.stop.is_set():
            ok, value = await self.ledger.run("increment", self.stores.memory.increment(key))
            if ok:
                acked.append(value)
            else:
                self.failed_increments[key] += 1
            await self._pace(ok)

    async def q_writer(self, w: int) -> None:
        state = f"fault-{self.run_id}-{w}"
        self.q_acked.setdefault(state, 0)
        self.q_failed.setdefault(state, 0)
        while not self.stop.is_set():
            update = self.stores.db.update_q_value(AGENT, state, "act", 1.0, 0.0, 1.0, 0.0)
            ok, value = await self.ledger.run("q_value", update)
            if ok:
                assert value == 1.0
                self.q_acked[state] += 1
            else:
                self.q_failed[state] += 1
            await self._pace(ok)

    async def queue_writer(self, w: int) -> None:
        queue = self.stores.queue
        n = 0
        while not self.stop.is_set():
            payload = {"w": w, "n": n, "run": self.run_id}
            n += 1
            ok, job_id = await self.ledger.run("enqueue", queue.enqueue(payload))
            if ok:
                self.enqueued[job_id] = payload
            else:
                self.enqueue_failed += 1
            ok, job = await self.ledger.run("claim", queue.claim(f"consumer-{w}", lease=60))
            if ok and job is not None:
                self.claimed_payloads.append((job.id, job.payload))
                done, _ = await self.ledger.run("complete", queue.complete(job, {"ok": True}))
                if done:
                    self.completed.add(job.id)
            await self._pace(ok)

    def start(self) -> list[asyncio.Task[None]]:
        writers: list[Callable[[], Awaitable[None]]] = [
            *(lambda w=w: self.store_writer(w) for w in range(3)),
            *(lambda w=w: self.burst_writer(w) for w in range(2)),
            *(lambda w=w: self.increment_writer(w) for w in range(3)),
            *(lambda w=w: self.q_writer(w) for w in range(3)),
            *(lambda w=w: self.queue_writer(w) for w in range(2)),
        ]
        return [asyncio.create_task(writer()) for writer in writers]


async def _under_load(
    stores: Stores, fault: Callable[[], None], *, before: float = 1.0, after: float = 3.0
) -> tuple[Load, float, float]:
    """Run the load, apply ``fault`` (blocking, in a thread), keep going; (load, t_fault, t_up)."""
    load = Load(stores)
    tasks = load.start()
    try:
        await asyncio.sleep(before)
        t_fault = time.monotonic()
        await asyncio.to_thread(fault)
        t_up = time.monotonic()
        await asyncio.sleep(after)
    finally:
        load.stop.set()
        await asyncio.gather(*tasks)
    return load, t_fault, t_up


async def _verify(load: Load, t_fault: float, t_up: float, label: str) -> dict[str, Any]:
    """Check every promise; return the measured numbers."""
    calls = load.ledger.calls
    foreign = [c for c in calls if c.error and not isinstance(c.error, BackendUnavailableError)]
    if foreign:
        import traceback

        for c in foreign[:3]:
            traceback.print_exception(c.error)
    assert not foreign, [(c.kind, repr(c.error), repr(c.error.__cause__)) for c in foreign[:10]]

    kinds = sorted({c.kind for c in calls})
    during = {
        k: sum(1 for c in calls if c.kind == k and c.error and c.started < t_up) for k in kinds
    }
    after = [c for c in calls if c.error and c.started >= t_up]
    heal: dict[str, float] = {}
    for kind in kinds:
        ok_after = [c.ended for c in calls if c.kind == kind and not c.error and c.started >= t_up]
        assert ok_after, f"{kind}: no call succeeded after the server came back"
        heal[kind] = round(min(ok_after) - t_up, 3)
    numbers = {
        "fault": label,
        "calls": len(calls),
        "outage_s": round(t_up - t_fault, 2),
        "failed_before_up": during,
        "failed_after_up": [(c.kind, round(c.started - t_up, 3), repr(c.error)) for c in after],
        "first_success_after_up_s": heal,
    }
    print(numbers)
    assert len(after) <= FAILURES_AFTER_UP, numbers
    assert max(heal.values()) <= HEAL_BOUND, numbers
    for kind in ("store", "burst", "increment", "q_value", "enqueue", "claim", "complete"):
        assert any(c.kind == kind and not c.error and c.ended < t_fault for c in calls), kind

    async with load.stores.admin.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT key, value::text, version FROM qe_memory WHERE key >= :lo AND key < :hi"
                ),
                {"lo": load.prefix, "hi": load.prefix[:-1] + "0"},
            )
        ).all()
        stored = {row.key: (row.value, row.version) for row in rows}
        q_rows = dict(
            (
                await conn.execute(
                    text(
                        "SELECT state_hash, visit_count FROM q_values "
                        "WHERE agent_type = :a AND state_hash LIKE :s"
                    ),
                    {"a": AGENT, "s": f"fault-{load.run_id}-%"},
                )
            ).all()
        )
        jobs = (
            await conn.execute(
                text("SELECT id::text, payload::text, state FROM queue_jobs WHERE queue = :q"),
                {"q": load.stores.queue.name},
            )
        ).all()

    import json

    # Stores: every acknowledged one is there, with its value, written exactly once.
    assert all(version == 1 for version in load.versions)
    for key, value in load.acked_keys.items():
        assert key in stored, f"acknowledged store of {key} lost"
        assert json.loads(stored[key][0]) == value
    counters = {k for k in stored if k.startswith(f"{load.prefix}c/")}
    plain = set(stored) - counters
    assert plain <= set(load.acked_keys) | load.failed_keys
    assert all(version == 1 for key, (_, version) in stored.items() if key in plain), (
        "a store was applied twice"
    )
    # Counters: strictly increasing acknowledgements, final value within the ambiguity.
    for key, acked in load.increments.items():
        assert acked == sorted(set(acked)), f"{key}: an increment was applied twice"
        final = json.loads(stored[key][0]) if key in stored else 0
        failed = load.failed_increments[key]
        assert len(acked) <= final <= len(acked) + failed, (key, len(acked), failed, final)
        assert not acked or acked[-1] <= final
    # Q-values: visits between acknowledged and acknowledged + failed.
    for state, acked_q in load.q_acked.items():
        visits = q_rows.get(state, 0)
        assert acked_q <= visits <= acked_q + load.q_failed[state], (state, acked_q, visits)
    # Queue: every acknowledged job is there once with its payload; completed ones are done.
    by_id = {job_id: (json.loads(payload), state) for job_id, payload, state in jobs}
    for job_id, payload in load.enqueued.items():
        assert by_id[job_id][0] == payload
    assert len(by_id) <= len(load.enqueued) + load.enqueue_failed
    payloads = [json.dumps(p, sort_keys=True) for p, _ in by_id.values()]
    assert len(payloads) == len(set(payloads)), "a job was enqueued twice"
    for job_id in load.completed:
        assert by_id[job_id][1] == "done"
    for job_id, payload in load.claimed_payloads:
        assert by_id[job_id][0] == payload, "a claim returned another job's payload"
    return numbers


# -- restart and kill under load --------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_fast_restart_under_write_load(private_pg: PrivatePostgres, stores: Stores) -> None:
    load, t_fault, t_up = await _under_load(stores, private_pg.restart_fast)
    await _verify(load, t_fault, t_up, "pg_ctl restart -m fast")


@pytest.mark.timeout(60)
async def test_postmaster_killed_under_write_load(
    private_pg: PrivatePostgres, stores: Stores
) -> None:
    def crash_and_start() -> None:
        private_pg.kill_postmaster()
        time.sleep(1.0)  # an outage the writers see
        private_pg.start()

    load, t_fault, t_up = await _under_load(stores, crash_and_start)
    await _verify(load, t_fault, t_up, "kill -9 postmaster, then start")


async def _every_path(stores: Stores, tag: str, width: int = 6) -> list[BaseException | None]:
    """``width`` concurrent calls on each path; each call's error or None."""
    memory, db, queue = stores.memory, stores.db, stores.queue

    async def queue_round(i: int) -> None:
        job_id = await queue.enqueue({"tag": tag, "i": i})
        job = await queue.claim(f"idle-{tag}-{i}", lease=60)
        assert job is not None
        await queue.complete(job)
        assert job_id

    async def memory_round(i: int) -> None:
        key = f"aqe/fault/idle/{tag}/{i}"
        assert await memory.store(key, {"i": i}) == 1
        assert await memory.retrieve(key) == {"i": i}
        assert await memory.increment(f"{key}/n") == 1

    calls: list[Awaitable[Any]] = []
    for i in range(width):
        calls.append(memory_round(i))
        calls.append(db.update_q_value(AGENT, f"idle-{tag}", f"a{i}", 1.0, 0.0, 1.0, 0.0))
        calls.append(queue_round(i))
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    return [o if isinstance(o, BaseException) else None for o in outcomes]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fault", ["restart", "kill"])
async def test_idle_pools_heal_on_first_use(
    private_pg: PrivatePostgres, stores: Stores, fault: str
) -> None:
    """Pools full of connections the server closed while nobody called: the first calls
    after the server is back all succeed (the known "first pooled query fails" issue)."""
    run = uuid.uuid4().hex[:8]
    assert await _every_path(stores, f"{run}-warm") == [None] * 18
    assert stores.memory.held_connections == 1
    idle_before = {
        name: engine.sync_engine.pool.checkedin()  # type: ignore[attr-defined]
        for name, engine in (
            ("memory", stores.memory_engine),
            ("learning", stores.db.engine),
            ("queue", stores.queue_engine),
        )
    }
    assert all(count >= 2 for count in idle_before.values()), idle_before

    def crash_and_start() -> None:
        private_pg.kill_postmaster()
        time.sleep(0.5)
        private_pg.start()

    await asyncio.to_thread(private_pg.restart_fast if fault == "restart" else crash_and_start)
    await asyncio.sleep(0.2)  # the event loop reads the closed sockets
    started = time.monotonic()
    errors = [e for e in await _every_path(stores, f"{run}-after") if e is not None]
    print(
        fault,
        "idle pools",
        idle_before,
        "errors after:",
        [repr(e) for e in errors],
        "in",
        round(time.monotonic() - started, 3),
        "s",
    )
    assert errors == []


# -- the statement in flight ------------------------------------------------------------------


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def _waiting_pid(locker: asyncpg.Connection) -> int:
    """The backend waiting on the locker's lock."""
    for _ in range(200):
        pid = await locker.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database() AND pid <> pg_backend_pid()"
        )
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.02)
    raise AssertionError("the call never blocked on the lock")


async def _killed_in_flight(
    private_pg: PrivatePostgres, stores: Stores, call: Awaitable[Any], lock_sql: str, how: str
) -> tuple[asyncio.Task[Any], asyncpg.Connection]:
    locker = await asyncpg.connect(_dsn(private_pg.url))
    await locker.execute("BEGIN")
    await locker.execute(lock_sql)
    task: asyncio.Task[Any] = asyncio.ensure_future(call)
    pid = await _waiting_pid(locker)
    if how == "terminate":
        assert await locker.fetchval("SELECT pg_terminate_backend($1)", pid)
    else:
        os.kill(pid, signal.SIGKILL)  # the postmaster then restarts every backend
    return task, locker


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["terminate", "sigkill"])
async def test_write_in_flight_fails_typed_and_is_not_retried(
    private_pg: PrivatePostgres, stores: Stores, how: str
) -> None:
    key = f"aqe/fault/inflight/{uuid.uuid4().hex}"
    memory = stores.memory
    assert await memory.increment(key) == 1
    task, locker = await _killed_in_flight(
        private_pg,
        stores,
        memory.increment(key),
        f"SELECT 1 FROM qe_memory WHERE key = '{key}' FOR UPDATE",
        how,
    )
    try:
        with pytest.raises(BackendUnavailableError) as excinfo:
            await asyncio.wait_for(task, 10)
        print(how, "->", repr(excinfo.value), "caused by", repr(excinfo.value.__cause__))
        assert isinstance(excinfo.value.__cause__, asyncpg.PostgresError | asyncpg.InterfaceError)
    finally:
        with contextlib.suppress(Exception):
            await locker.execute("ROLLBACK")
        with contextlib.suppress(Exception):
            await locker.close(timeout=2)
    await asyncio.to_thread(private_pg.wait_accepting)
    # Not sent again behind the caller's back: the killed increment never got its lock.
    assert await memory.retrieve(key) == 1
    assert await memory.increment(key) == 2


@pytest.mark.timeout(60)
async def test_read_in_flight_is_retried_once(private_pg: PrivatePostgres, stores: Stores) -> None:
    key = f"aqe/fault/inflight/{uuid.uuid4().hex}"
    memory = stores.memory
    await memory.store(key, {"v": 1})
    task, locker = await _killed_in_flight(
        private_pg,
        stores,
        memory.retrieve(key),
        "LOCK TABLE qe_memory IN ACCESS EXCLUSIVE MODE",
        "terminate",
    )
    try:
        await asyncio.sleep(0.3)  # the retry now waits on the lock too
        assert not task.done() or task.exception() is None
        await locker.execute("ROLLBACK")
        assert await asyncio.wait_for(task, 10) == {"v": 1}
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        await locker.close(timeout=2)
