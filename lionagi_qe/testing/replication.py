"""A PostgreSQL primary with a streaming replica, started from the installed binaries.

The pair: ``initdb`` a primary (trust auth on loopback, no durability, ``synchronous_commit``
on so that a commit's WAL is flushed, and so streamed, before the commit returns), start it on
a free port, clone it with ``pg_basebackup -R`` (which writes ``standby.signal`` and the
``primary_conninfo``) through a physical replication slot, and start the clone as a hot standby
on another free port. As root, every binary runs as the ``postgres`` OS user (PostgreSQL
refuses root), as in :mod:`lionagi_qe.testing.throwaway`.

Two ways to get one:

- :func:`shared_replica_pair`: one pair per OS user shared by every pytest-xdist worker (lock
  file + state file, like the throwaway servers); the last process to release it, or to exit,
  stops it. For tests that only read and write through it (the contract suite).
- :func:`start_replica_pair`: a private pair, for tests that stop the replica or pause its
  replay; :meth:`ReplicaPair.close` stops it.

Helpers for the tests themselves: :meth:`ReplicaPair.stop_replica` / ``start_replica``
(synchronous: call them through ``asyncio.to_thread`` while a load runs), and the async
:func:`pause_replay`, :func:`resume_replay` and :func:`wait_for_replay`.
"""

from __future__ import annotations

import asyncio
import contextlib
import pwd
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from lionagi_qe.testing.servers import (
    _POSTGRES_SETTINGS,
    ServerUnavailableError,
    _asyncpg_dsn,
    _postgres_hints,
    _run_coroutine,
    _StartError,
    check_postgres,
)
from lionagi_qe.testing.throwaway import (
    _THROWAWAYS,
    _acquire_state,
    _postgres_account,
    _postgres_bin_dir,
    _release_logged,
    _run,
    _scratch_dir,
    _State,
    _state_dir,
    _Throwaway,
    init_postgres_cluster,
    postgres_cluster_running,
    start_postgres_cluster,
    stop_postgres_cluster,
)

__all__ = [
    "ReplicaPair",
    "pause_replay",
    "release_replica_pair",
    "resume_replay",
    "shared_replica_pair",
    "start_replica_pair",
    "wait_for_replay",
]

_KIND = "postgres-replica-pair"
_SLOT = "aqe_test_replica"
_PAIR_SETTINGS = {
    **_POSTGRES_SETTINGS,
    "synchronous_commit": "on",
    "max_connections": "120",
    "wal_level": "replica",
    "max_wal_senders": "4",
    "max_replication_slots": "4",
    "hot_standby": "on",
    "hot_standby_feedback": "on",
    "wal_receiver_status_interval": "1s",
}
_STREAMING_TIMEOUT = 60.0


@dataclass(frozen=True)
class ReplicaPair:
    """A running primary and its streaming replica (URLs use the ``postgres`` database)."""

    primary_url: str
    replica_url: str
    base_dir: str
    bin_dir: str
    run_as: str
    replica_port: int

    @property
    def _account(self) -> pwd.struct_passwd | None:
        return pwd.getpwnam(self.run_as) if self.run_as else None

    @property
    def _replica_data(self) -> Path:
        return Path(self.base_dir) / "replica"

    def stop_replica(self, mode: str = "fast") -> None:
        """Stop the replica (``pg_ctl stop -m mode``: ``fast`` ends its sessions at once,
        ``immediate`` kills it without a shutdown checkpoint). Blocks: use a thread."""
        stop_postgres_cluster(
            self._replica_data, bin_dir=Path(self.bin_dir), account=self._account, mode=mode
        )

    def start_replica(self) -> None:
        """Start the replica again on its port and wait until it streams. Blocks."""
        start_postgres_cluster(
            self._replica_data,
            Path(self.base_dir) / "replica.log",
            bin_dir=Path(self.bin_dir),
            account=self._account,
            port=self.replica_port,
        )
        _wait_streaming(self.primary_url)

    def replica_running(self) -> bool:
        """Whether the replica's postmaster runs."""
        return postgres_cluster_running(self._replica_data)

    def close(self) -> None:
        """Stop both servers and delete their files (a private pair only)."""
        _stop_pair(_pair_state(self))


def start_replica_pair() -> ReplicaPair:
    """Start a private primary/replica pair; the caller stops it with :meth:`ReplicaPair.close`.

    Raises:
        ServerUnavailableError: no binaries, or a server did not start (the message says why).
    """
    try:
        return _pair(_start_pair())
    except (_StartError, OSError) as exc:
        raise _unavailable(exc) from exc


def shared_replica_pair() -> ReplicaPair:
    """Start (or join) this OS user's shared pair; it stops when its last user releases it
    (:func:`release_replica_pair`) or exits.

    Raises:
        ServerUnavailableError: as :func:`start_replica_pair`.
    """
    try:
        return _pair(_acquire_state(_SPEC))
    except (_StartError, OSError) as exc:
        raise _unavailable(exc) from exc


def release_replica_pair() -> None:
    """Drop this process's use of the shared pair (the last user stops it). Never raises."""
    with contextlib.suppress(_StartError, OSError):
        _release_logged(_state_dir() / f"{_KIND}.json", force=False)


async def pause_replay(replica_url: str) -> None:
    """Pause WAL replay on the replica (it keeps receiving): its data stops moving."""
    await _execute(replica_url, "SELECT pg_wal_replay_pause()")


async def resume_replay(replica_url: str) -> None:
    """Resume WAL replay on the replica."""
    await _execute(replica_url, "SELECT pg_wal_replay_resume()")


async def wait_for_replay(primary_url: str, replica_url: str) -> None:
    """Return once the replica has replayed everything the primary had written on entry.

    Polls every 10 ms without a bound of its own: wrap it in ``asyncio.timeout``.
    """
    primary = await asyncpg.connect(_asyncpg_dsn(primary_url), timeout=5)
    try:
        target = await primary.fetchval("SELECT pg_current_wal_insert_lsn()")
    finally:
        await primary.close()
    replica = await asyncpg.connect(_asyncpg_dsn(replica_url), timeout=5)
    query = "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn"
    try:
        while True:
            if await replica.fetchval(query, target):
                return
            await asyncio.sleep(0.01)
    finally:
        await replica.close()


async def _execute(url: str, statement: str) -> None:
    connection = await asyncpg.connect(_asyncpg_dsn(url), timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


# -- starting and stopping ---------------------------------------------------------------------


def _url(port: int) -> str:
    return f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"


def _start_pair() -> _State:
    bin_dir = _postgres_bin_dir()
    if not (bin_dir / "pg_basebackup").exists():
        raise _StartError(f"no pg_basebackup in {bin_dir}")
    account = _postgres_account()
    base = _scratch_dir("aqe-test-pgpair-", account)
    state = _State(
        url="", base_dir=str(base), bin_dir=str(bin_dir), run_as=account.pw_name if account else ""
    )
    primary, replica = base / "data", base / "replica"
    try:
        settings = {**_PAIR_SETTINGS, "unix_socket_directories": f"'{base}'"}
        init_postgres_cluster(primary, bin_dir=bin_dir, account=account, settings=settings)
        port = start_postgres_cluster(
            primary, base / "primary.log", bin_dir=bin_dir, account=account
        )
        state.url = _url(port)
        clone = [
            str(bin_dir / "pg_basebackup"),
            *("-D", str(replica), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"),
            *("-R", "-X", "stream", "-c", "fast", "-C", "-S", _SLOT, "--no-sync"),
        ]
        _run(clone, account=account, cwd=base)
        replica_port = start_postgres_cluster(
            replica, base / "replica.log", bin_dir=bin_dir, account=account
        )
        state.extra = {"replica_url": _url(replica_port), "replica_port": str(replica_port)}
        for url in (state.url, state.extra["replica_url"]):
            reason = check_postgres(url)
            if reason is not None:
                raise _StartError(f"a new server does not accept logins: {reason}")
        _wait_streaming(state.url)
        return state
    except BaseException:
        _stop_pair(state)
        raise


def _wait_streaming(primary_url: str) -> None:
    """Block until the primary reports a streaming standby (bounded)."""

    async def streaming() -> None:
        connection = await asyncpg.connect(_asyncpg_dsn(primary_url), timeout=5)
        try:
            deadline = time.monotonic() + _STREAMING_TIMEOUT
            query = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
            while not await connection.fetchval(query):
                if time.monotonic() > deadline:
                    raise _StartError("the replica did not start streaming")
                await asyncio.sleep(0.05)
        finally:
            await connection.close()

    _run_coroutine(streaming, timeout=_STREAMING_TIMEOUT + 10)


def _stop_pair(state: _State) -> None:
    account = pwd.getpwnam(state.run_as) if state.run_as else None
    base, bin_dir = Path(state.base_dir), Path(state.bin_dir)
    for data in (base / "replica", base / "data"):
        stop_postgres_cluster(data, bin_dir=bin_dir, account=account)
    shutil.rmtree(base, ignore_errors=True)


def _pair_running(state: _State) -> bool:
    base = Path(state.base_dir)
    return postgres_cluster_running(base / "data") and postgres_cluster_running(base / "replica")


def _pair_check(state: _State) -> str | None:
    return check_postgres(state.url) or check_postgres(state.extra.get("replica_url", ""))


def _pair(state: _State) -> ReplicaPair:
    return ReplicaPair(
        primary_url=state.url,
        replica_url=state.extra["replica_url"],
        base_dir=state.base_dir,
        bin_dir=state.bin_dir,
        run_as=state.run_as,
        replica_port=int(state.extra["replica_port"]),
    )


def _pair_state(pair: ReplicaPair) -> _State:
    return _State(
        url=pair.primary_url,
        base_dir=pair.base_dir,
        bin_dir=pair.bin_dir,
        run_as=pair.run_as,
        extra={"replica_url": pair.replica_url, "replica_port": str(pair.replica_port)},
    )


def _unavailable(exc: BaseException) -> ServerUnavailableError:
    hints = "".join(f"\n  - {line}" for line in _postgres_hints())
    return ServerUnavailableError(
        f"Could not start a PostgreSQL primary/replica pair: {exc}\n"
        f"It needs initdb, pg_ctl, pg_basebackup and postgres:{hints}"
    )


_SPEC = _Throwaway(
    kind=_KIND,
    label="PostgreSQL primary/replica",
    start=_start_pair,
    stop=_stop_pair,
    running=_pair_running,
    check=_pair_check,
    hints=_postgres_hints,
)
_THROWAWAYS[_KIND] = _SPEC
