"""A throwaway Redis Cluster for tests: three masters with one replica each, from ``redis-server``.

One cluster serves every process of a test session (pytest-xdist workers included), on the
pattern of :mod:`lionagi_qe.testing.throwaway`: a lock file and a JSON state file
(``redis-cluster.json``) in the same per-user state directory; the first process starts the
cluster, later ones join it (adding their pid to ``users``), the last one to release it (or to
exit: ``atexit``) stops every node and deletes the directory. A run killed before ``atexit``
leaves the cluster behind: the next run adopts it if it is healthy, and rebuilds it otherwise.

Each node runs on two free loopback ports (client and cluster bus, ``--cluster-port``), with
``--cluster-enabled yes``, no persistence (``save ""``, no AOF), ``cluster-node-timeout`` of
:data:`NODE_TIMEOUT_MS` (so a killed master is failed over within a few seconds) and
``cluster-require-full-coverage no`` (the other shards keep serving while one fails over). The
slots are assigned by ``redis-cli --cluster create … --cluster-replicas 1 --cluster-yes``.

Destructive tests (failover, killing a master) take the cluster *exclusively*
(:meth:`ThrowawayCluster.exclusive`); every other test that uses the cluster holds it *shared*
(:meth:`ThrowawayCluster.shared`), so another worker's destructive test never runs under it.
A writer waiting for the exclusive lock holds a turnstile that new readers must pass, so a busy
worker cannot starve it. A destructive test heals the cluster (:meth:`ThrowawayCluster.heal`)
before it releases the lock: dead nodes are restarted once their slots have been failed over,
and the cluster must be back to three masters, each with a linked replica.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from lionagi_qe.testing.servers import ServerUnavailableError, _StartError
from lionagi_qe.testing.throwaway import (
    _alive,
    _free_port,
    _locked,
    _run,
    _runs,
    _scratch_dir,
    _state_dir,
    _tail,
)

logger = logging.getLogger(__name__)

__all__ = [
    "NODE_TIMEOUT_MS",
    "ClusterNodeInfo",
    "ThrowawayCluster",
    "release_shared_cluster",
    "start_cluster",
    "start_shared_cluster",
]

#: ``cluster-node-timeout``: how long a master may be unreachable before it is failed over.
NODE_TIMEOUT_MS = 1000
MASTERS = 3
REPLICAS_PER_MASTER = 1
#: Bound on waiting for the cluster to become (or come back) healthy, in seconds.
HEALTHY_TIMEOUT = 60.0
#: Bound on waiting for the shared or exclusive lock, in seconds.
LOCK_TIMEOUT = 100.0
_STATE_NAME = "redis-cluster.json"


@dataclass
class _Node:
    port: int
    bus_port: int
    directory: str
    pid: int = 0


@dataclass
class _ClusterState:
    base_dir: str
    nodes: list[_Node]
    users: list[int] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> _ClusterState | None:
        try:
            raw = json.loads(path.read_text())
            return cls(
                base_dir=raw["base_dir"],
                nodes=[_Node(**node) for node in raw["nodes"]],
                users=list(raw.get("users", [])),
            )
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError):
            logger.warning("Ignoring an unreadable cluster state file %s", path)
            return None

    def save(self, path: Path) -> None:
        scratch = path.with_suffix(".tmp")
        scratch.write_text(json.dumps(asdict(self)))
        os.replace(scratch, path)


@dataclass(frozen=True)
class ClusterNodeInfo:
    """One node as the cluster sees it (``CLUSTER NODES``)."""

    node_id: str
    port: int
    role: str  # "master" or "replica"
    master_id: str  # "" for a master
    slots: int  # how many slots it serves (masters)
    alive: bool


def _redis_server() -> str:
    executable = shutil.which("redis-server")
    if executable is None:
        raise _StartError("no redis-server on PATH")
    return executable


def _redis_cli() -> str:
    executable = shutil.which("redis-cli")
    if executable is None:
        raise _StartError("no redis-cli on PATH")
    return executable


def _node_arguments(node: _Node) -> list[str]:
    directory = Path(node.directory)
    options = {
        "port": str(node.port),
        "cluster-port": str(node.bus_port),
        "bind": "127.0.0.1",
        "cluster-enabled": "yes",
        "cluster-config-file": "nodes.conf",
        "cluster-node-timeout": str(NODE_TIMEOUT_MS),
        "cluster-require-full-coverage": "no",
        # A replica is always eligible, however long it was disconnected: tests kill masters
        # on purpose and need the failover to happen.
        "cluster-replica-validity-factor": "0",
        "save": "",
        "appendonly": "no",
        # DEBUG SLEEP from loopback: a test stalls a master to make a call time out.
        "enable-debug-command": "local",
        "daemonize": "yes",
        "pidfile": str(directory / "redis.pid"),
        "dir": str(directory),
        "logfile": str(directory / "redis.log"),
    }
    return [part for key, value in options.items() for part in (f"--{key}", value)]


def _client(port: int, timeout: float = 2.0) -> redis.Redis:
    """A blocking client of one node: ``CLUSTER …`` replies stay raw (not parsed), no retries."""
    client = redis.Redis(
        host="127.0.0.1",
        port=port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),  # a probe answers for itself: no silent retries
    )
    for command in ("CLUSTER INFO", "CLUSTER NODES", "CLUSTER SLOTS"):
        client.response_callbacks.pop(command, None)
    return client


def _launch(node: _Node) -> None:
    """Start one node (daemonized) and record its pid; raise if it does not answer."""
    pid_file = Path(node.directory) / "redis.pid"
    pid_file.unlink(missing_ok=True)
    node.pid = 0
    _run([_redis_server(), *_node_arguments(node)], account=None, cwd=Path(node.directory))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            node.pid = int(pid_file.read_text().strip())
        if node.pid:
            if not _alive(node.pid):
                break
            with contextlib.suppress(redis.RedisError, OSError), _client(node.port) as probe:
                probe.ping()
                return
        time.sleep(0.05)
    raise _StartError(
        f"cluster node on port {node.port} did not start; its log ends: "
        f"{_tail(Path(node.directory) / 'redis.log')}"
    )


def _stop_node(node: _Node, sig: signal.Signals = signal.SIGTERM) -> None:
    if node.pid and _runs(node.pid, "redis-server"):
        os.kill(node.pid, sig)
        deadline = time.monotonic() + 5
        while _alive(node.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _alive(node.pid):
            os.kill(node.pid, signal.SIGKILL)


def _stop_nodes(nodes: list[_Node]) -> None:
    running = [node for node in nodes if node.pid and _runs(node.pid, "redis-server")]
    for node in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(node.pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while any(_alive(node.pid) for node in running) and time.monotonic() < deadline:
        time.sleep(0.02)
    for node in running:
        if _alive(node.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.pid, signal.SIGKILL)


class ThrowawayCluster:
    """A running throwaway cluster: addresses, topology, fault injection and healing.

    Every method here is synchronous (it uses the blocking ``redis`` client and
    ``subprocess``); call it from async code through ``asyncio.to_thread``.
    """

    def __init__(self, state: _ClusterState, state_path: Path | None = None) -> None:
        self._state = state
        self._state_path = state_path

    @property
    def ports(self) -> list[int]:
        """Client ports of every node."""
        return [node.port for node in self._state.nodes]

    @property
    def url(self) -> str:
        """A ``redis://`` URL of one node (any node will do for a cluster client)."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    @property
    def urls(self) -> list[str]:
        """A ``redis://`` URL of every node."""
        return [f"redis://127.0.0.1:{port}/0" for port in self.ports]

    @property
    def base_dir(self) -> Path:
        """The directory holding every node's directory."""
        return Path(self._state.base_dir)

    def client(self, port: int, timeout: float = 2.0) -> redis.Redis:
        """A plain (single-node, blocking) client of the node on ``port``."""
        return _client(port, timeout)

    # -- topology ---------------------------------------------------------------------------

    def topology(self) -> list[ClusterNodeInfo]:
        """The nodes as the first reachable node reports them."""
        for port in self.ports:
            with contextlib.suppress(redis.RedisError, OSError), _client(port) as probe:
                text = probe.execute_command("CLUSTER NODES")
                return _parse_nodes(text.decode() if isinstance(text, bytes) else str(text))
        raise _StartError("no cluster node answers")

    def masters(self) -> list[ClusterNodeInfo]:
        """Live masters that serve slots."""
        return [n for n in self.topology() if n.role == "master" and n.slots and n.alive]

    def slot_ranges(self) -> list[tuple[int, int, int]]:
        """``(first slot, last slot, master port)`` of every range, as a live node reports."""
        for port in self.ports:
            with contextlib.suppress(redis.RedisError, OSError), _client(port) as probe:
                reply = probe.execute_command("CLUSTER SLOTS")
                return sorted((int(r[0]), int(r[1]), int(r[2][1])) for r in reply)
        raise _StartError("no cluster node answers")

    def master_of_slot(self, slot: int) -> int:
        """The port of the master that serves ``slot``."""
        for start, end, port in self.slot_ranges():
            if start <= slot <= end:
                return port
        raise _StartError(f"no node reports an owner of slot {slot}")

    def owners_of_slot(self, slot: int) -> set[int]:
        """The master port each reachable node names for ``slot`` (one port once they agree)."""
        owners: set[int] = set()
        for port in self.ports:
            with contextlib.suppress(redis.RedisError, OSError), _client(port) as probe:
                for start, end, master, *_replicas in probe.execute_command("CLUSTER SLOTS"):
                    if int(start) <= slot <= int(end):
                        owners.add(int(master[1]))
        return owners

    def master_of_key(self, key: str) -> int:
        """The port of the master that serves ``key`` (its hash tag, if it has one)."""
        return self.master_of_slot(key_slot(key.encode()))

    def replica_of(self, master_port: int) -> int:
        """The port of a live replica of the master on ``master_port``."""
        nodes = self.topology()
        master = next(n for n in nodes if n.port == master_port)
        for node in nodes:
            if node.master_id == master.node_id and node.alive:
                return node.port
        raise _StartError(f"the master on port {master_port} has no live replica")

    def pid_of(self, port: int) -> int:
        """The pid of the node on ``port``."""
        self._refresh()
        return next(node.pid for node in self._state.nodes if node.port == port)

    # -- faults and healing ----------------------------------------------------------------

    def _refresh(self) -> None:
        """Reload the nodes' pids from the state file: another process may have restarted a
        node (healing after its own destructive test) since this one joined."""
        if self._state_path is None:
            return
        with _locked(self._state_path):
            current = _ClusterState.load(self._state_path)
        if current is not None:
            self._state.nodes = current.nodes

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port`` (no shutdown, no goodbye to the cluster)."""
        self._refresh()
        node = next(node for node in self._state.nodes if node.port == port)
        _stop_node(node, signal.SIGKILL)

    def heal(self, timeout: float = HEALTHY_TIMEOUT) -> None:
        """Bring the cluster back to three masters with a linked replica each.

        Dead nodes are restarted only once the survivors report ``cluster_state:ok`` (their
        slots were failed over): a master without persistence that came back before its
        replica was promoted would return empty and still own its slots. A restarted node
        reads its ``nodes.conf``, learns it was replaced and becomes a replica.
        """
        deadline = time.monotonic() + timeout
        self._refresh()
        dead = [node for node in self._state.nodes if not _node_up(node)]
        if dead:
            alive = [node.port for node in self._state.nodes if node not in dead]
            self._wait(lambda: all(_state_ok(port) for port in alive), deadline, "failover")
            for node in dead:
                _launch(node)
            if self._state_path is not None:
                with _locked(self._state_path):
                    current = _ClusterState.load(self._state_path)
                    if current is not None:
                        current.nodes = self._state.nodes
                        current.save(self._state_path)
        self.wait_healthy(deadline - time.monotonic())

    def wait_healthy(self, timeout: float = HEALTHY_TIMEOUT) -> None:
        """Wait until every node is up, agrees on the state and every master has a replica."""
        self._wait(self._healthy, time.monotonic() + timeout, "a healthy cluster")

    def _healthy(self) -> bool:
        if not all(_state_ok(port) for port in self.ports):
            return False
        try:
            nodes = self.topology()
        except _StartError:
            return False
        masters = [n for n in nodes if n.role == "master" and n.slots]
        if len(masters) != MASTERS or sum(n.slots for n in masters) != 16384:
            return False
        if not all(node.alive for node in nodes) or len(nodes) != len(self.ports):
            return False
        for master in masters:
            replicas = [n for n in nodes if n.master_id == master.node_id]
            if len(replicas) != REPLICAS_PER_MASTER:
                return False
            for replica in replicas:
                if not _replica_linked(replica.port):
                    return False
        return True

    @staticmethod
    def _wait(check: Callable[[], bool], deadline: float, what: str) -> None:
        while True:
            if check():
                return
            if time.monotonic() > deadline:
                raise _StartError(f"timed out waiting for {what}")
            time.sleep(0.1)

    # -- sharing between test processes ----------------------------------------------------

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """Hold the cluster shared: no destructive test of another process runs meanwhile."""
        directory = _state_dir()
        with _flocked(directory / "redis-cluster.turnstile", fcntl.LOCK_EX):
            main = _open_lock(directory / "redis-cluster.rw")
            _acquire(main, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(main, fcntl.LOCK_UN)
            main.close()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the cluster alone (a destructive test); it is healed before it is let go."""
        directory = _state_dir()
        with (
            _flocked(directory / "redis-cluster.turnstile", fcntl.LOCK_EX),
            _flocked(directory / "redis-cluster.rw", fcntl.LOCK_EX),
        ):
            try:
                yield
            finally:
                self.heal()

    def stop(self) -> None:
        """Stop every node (all signalled at once, then waited for) and delete the directory."""
        _stop_nodes(self._state.nodes)
        shutil.rmtree(self._state.base_dir, ignore_errors=True)


def _node_up(node: _Node) -> bool:
    """Whether the node runs: its recorded pid, or failing that anything answering its port."""
    if node.pid and _runs(node.pid, "redis-server"):
        return True
    with contextlib.suppress(redis.RedisError, OSError), _client(node.port, 1.0) as probe:
        return bool(probe.ping())
    return False


def _state_ok(port: int) -> bool:
    with contextlib.suppress(redis.RedisError, OSError), _client(port, 1.0) as probe:
        info = probe.execute_command("CLUSTER INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text
    return False


def _replica_linked(port: int) -> bool:
    with contextlib.suppress(redis.RedisError, OSError), _client(port, 1.0) as probe:
        info = probe.info("replication")
        return info.get("master_link_status") == "up" and not info.get("master_sync_in_progress")
    return False


def _parse_nodes(text: str) -> list[ClusterNodeInfo]:
    nodes = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        node_id, address, flags, master_id = parts[0], parts[1], parts[2].split(","), parts[3]
        port = int(address.split("@")[0].rsplit(":", 1)[1])
        slots = 0
        for spec in parts[8:]:
            if spec.startswith("["):
                continue  # a slot being migrated
            start, _, end = spec.partition("-")
            slots += int(end or start) - int(start) + 1
        nodes.append(
            ClusterNodeInfo(
                node_id=node_id,
                port=port,
                role="master" if "master" in flags else "replica",
                master_id="" if master_id == "-" else master_id,
                slots=slots,
                alive=not ({"fail", "fail?", "noaddr"} & set(flags)) and parts[7] == "connected",
            )
        )
    return nodes


def _open_lock(path: Path) -> IO[str]:
    return path.open("a")


def _acquire(handle: IO[str], mode: int) -> None:
    deadline = time.monotonic() + LOCK_TIMEOUT
    while True:
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                raise _StartError(f"{handle.name} stayed locked for {LOCK_TIMEOUT:.0f} s") from None
            time.sleep(0.02)


@contextlib.contextmanager
def _flocked(path: Path, mode: int) -> Iterator[None]:
    handle = _open_lock(path)
    try:
        _acquire(handle, mode)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()


# --- starting, sharing and stopping --------------------------------------------------------


def start_cluster(base: Path | None = None) -> ThrowawayCluster:
    """Start a private cluster of 3 masters and 3 replicas; the caller stops it (``stop``).

    Raises:
        ServerUnavailableError: no ``redis-server``/``redis-cli``, or the cluster did not form.
    """
    try:
        return ThrowawayCluster(_start(base))
    except (_StartError, OSError, subprocess.SubprocessError) as exc:
        raise ServerUnavailableError(f"Could not start a throwaway Redis Cluster: {exc}") from exc


def _start(base: Path | None) -> _ClusterState:
    base = base or _scratch_dir("aqe-test-redis-cluster-", None)
    state = _ClusterState(base_dir=str(base), nodes=[])
    try:
        taken: set[int] = set()
        for index in range(MASTERS * (1 + REPLICAS_PER_MASTER)):
            directory = base / f"node{index}"
            directory.mkdir()
            for _attempt in range(3):
                port, bus_port = _distinct_port(taken), _distinct_port(taken)
                node = _Node(port=port, bus_port=bus_port, directory=str(directory))
                try:
                    _launch(node)
                    break
                except _StartError:
                    _stop_node(node)
                    if _attempt == 2:
                        raise
            state.nodes.append(node)
        addresses = [f"127.0.0.1:{node.port}" for node in state.nodes]
        create = [_redis_cli(), "--cluster", "create", *addresses]
        _run(
            [*create, "--cluster-replicas", str(REPLICAS_PER_MASTER), "--cluster-yes"],
            account=None,
            cwd=base,
        )
        ThrowawayCluster(state).wait_healthy()
        return state
    except BaseException:
        _stop_nodes(state.nodes)
        shutil.rmtree(base, ignore_errors=True)
        raise


def _distinct_port(taken: set[int]) -> int:
    while True:
        port = _free_port()
        if port not in taken:
            taken.add(port)
            return port


_held: dict[Path, ThrowawayCluster] = {}
_held_lock = threading.Lock()
_atexit_registered = False


def start_shared_cluster() -> ThrowawayCluster:
    """Start (or join) this user's shared throwaway cluster; released at exit.

    Raises:
        ServerUnavailableError: no binaries, or the cluster did not form (the message says why).
    """
    global _atexit_registered
    try:
        path = _state_dir() / _STATE_NAME
        with _held_lock, _locked(path):
            if path in _held:
                return _held[path]
            state = _ClusterState.load(path)
            if state is not None and not _adoptable(state, path):
                logger.warning("Replacing a broken throwaway Redis Cluster")
                ThrowawayCluster(state).stop()
                state = None
            if state is None:
                state = _start(None)
                logger.info("Started a throwaway Redis Cluster on ports %s", state.nodes)
            state.users = sorted({p for p in state.users if _alive(p)} | {os.getpid()})
            state.save(path)
            cluster = _held[path] = ThrowawayCluster(state, path)
            if not _atexit_registered:
                atexit.register(release_shared_cluster)
                _atexit_registered = True
            return cluster
    except (_StartError, OSError, subprocess.SubprocessError) as exc:
        raise ServerUnavailableError(f"Could not start a throwaway Redis Cluster: {exc}") from exc


def _adoptable(state: _ClusterState, path: Path) -> bool:
    """Whether a recorded cluster can be used (healing it if a node died)."""
    if not any(_runs(node.pid, "redis-server") for node in state.nodes):
        return False
    try:
        ThrowawayCluster(state, None).heal(timeout=20)
    except (_StartError, OSError, subprocess.SubprocessError):
        return False
    return True


def release_shared_cluster() -> None:
    """Drop this process's use of the shared cluster; the last user stops it. Never raises."""
    with _held_lock:
        paths = list(_held)
        _held.clear()
    for path in paths:
        try:
            with _locked(path):
                state = _ClusterState.load(path)
                if state is None:
                    continue
                others = [p for p in state.users if p != os.getpid() and _alive(p)]
                if others:
                    state.users = others
                    state.save(path)
                    continue
                ThrowawayCluster(state).stop()
                path.unlink(missing_ok=True)
        except Exception:
            logger.exception("Could not release the throwaway Redis Cluster in %s", path)
