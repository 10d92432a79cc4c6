"""Throwaway PostgreSQL and Redis servers for test runs, started from installed binaries.

Throwaway servers are shared by every process of one OS user (pytest-xdist workers and the
controller). A lock file and a JSON state file per server live in
``$TMPDIR/aqe-test-servers-<uid>/`` (or ``$AQE_TEST_SERVERS_DIR``). Under the lock, the first
process starts the server; later ones find it in the state file, check it answers, and add their
pid to its ``users``. A process that calls :func:`release_throwaway` or
:func:`stop_throwaway_servers` (registered with ``atexit``) removes its pid and prunes dead ones;
the last user stops the server and deletes its directory. A run killed before ``atexit`` leaves
its server behind: the next run adopts it and its last user stops it;
``stop_throwaway_servers(force=True)`` stops it at once.

PostgreSQL refuses to run as root, so when the effective uid is 0 ``initdb`` and ``pg_ctl`` run
as the ``postgres`` OS user (``nobody`` if there is none) in a directory that user owns.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lionagi_qe.testing.servers import (
    _LOCK_TIMEOUT,
    _POSTGRES_SETTINGS,
    _START_ATTEMPTS,
    _STATE_DIR_ENV,
    FoundServer,
    ServerUnavailableError,
    _postgres_hints,
    _redis_hints,
    _StartError,
    _version_key,
    check_postgres,
    check_redis,
)

logger = logging.getLogger(__name__)

__all__ = [
    "init_postgres_cluster",
    "postgres_cluster_running",
    "release_throwaway",
    "start_postgres_cluster",
    "start_throwaway",
    "start_throwaway_postgres",
    "start_throwaway_redis",
    "stop_postgres_cluster",
    "stop_throwaway_servers",
]

# --- throwaway servers ------------------------------------------------------------------------


@dataclass
class _State:
    """What the state file records about one shared throwaway server."""

    url: str
    base_dir: str
    pid: int = 0  # Redis daemon; PostgreSQL's postmaster is found through pg_ctl
    bin_dir: str = ""
    run_as: str = ""  # OS user the server runs as; "" for this process's user
    users: list[int] = field(default_factory=list)
    #: Further facts a kind of server records (a replica pair: the replica's URL and ports).
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Throwaway:
    kind: str
    label: str
    start: Callable[[], _State]
    stop: Callable[[_State], None]
    running: Callable[[_State], bool]
    check: Callable[[_State], str | None]
    hints: Callable[[], list[str]]


# State file -> URL of each throwaway server this process joined. References are pids in the
# state file, so a forked child releasing an inherited entry cannot drop its parent's.
_held: dict[Path, str] = {}
_held_lock = threading.Lock()
_atexit_registered = False


def start_throwaway_postgres() -> FoundServer:
    """Start (or join) this user's shared throwaway PostgreSQL and return its URL.

    The server runs on a free loopback port with trust auth, ``fsync``, ``synchronous_commit``
    and ``full_page_writes`` off and ``max_connections = 200``; user ``postgres``, db
    ``postgres``. It stops when the last process using it releases it or exits.

    Raises:
        ServerUnavailableError: no binaries, or the server did not start (the message says why).
    """
    return _start_throwaway(_THROWAWAYS["postgres"])


def start_throwaway_redis() -> FoundServer:
    """Start (or join) this user's shared throwaway Redis (no persistence) and return its URL.

    Raises:
        ServerUnavailableError: no ``redis-server``, or it did not start.
    """
    return _start_throwaway(_THROWAWAYS["redis"])


def release_throwaway(server: FoundServer) -> None:
    """Drop this process's reference to ``server``; it stops if no other process uses it.

    Does nothing for a server this process did not start or join. Never raises: failures are
    logged.
    """
    with _held_lock:
        paths = [path for path, url in _held.items() if url == server.url]
    for path in paths:
        _release_logged(path, force=False)


def stop_throwaway_servers(*, force: bool = False) -> None:
    """Release every throwaway server this process uses; the last user of each stops it.

    Registered with ``atexit`` once a throwaway server is used. Never raises: failures are
    logged.

    Args:
        force: also stop the servers recorded in the current state directory, even if other
            processes still use them (a reaper for servers left behind by a killed run).
    """
    with _held_lock:
        paths = list(_held)
    if force:
        with contextlib.suppress(_StartError):
            directory = _state_dir()
            # The built-in kinds always (their locks are taken even with no state file); kinds
            # registered by other modules (the replica pair) only when a state file exists.
            paths += [
                directory / f"{kind}.json"
                for kind in _THROWAWAYS
                if kind in _BUILTIN_KINDS or (directory / f"{kind}.json").exists()
            ]
    for path in dict.fromkeys(paths):
        _release_logged(path, force=force)


def _start_throwaway(spec: _Throwaway) -> FoundServer:
    try:
        return _acquire(spec)
    except _StartError as exc:
        hints = "".join(f"\n  - {line}" for line in spec.hints())
        raise ServerUnavailableError(
            f"Could not start a throwaway {spec.label} server: {exc}\nStart one:{hints}"
        ) from exc


def _acquire(spec: _Throwaway) -> FoundServer:
    """Join the shared server of ``spec.kind``, starting it first if needed."""
    return FoundServer(_acquire_state(spec).url, "throwaway")


def _acquire_state(spec: _Throwaway) -> _State:
    """Join the shared server of ``spec.kind`` (starting it first if needed); its state."""
    global _atexit_registered
    try:
        state_path = _state_dir() / f"{spec.kind}.json"
        with _held_lock, _locked(state_path):
            state = _read_state(state_path)
            if state is not None and _answers(spec, state):
                logger.info("Joining the throwaway %s server at %s", spec.label, state.url)
            else:
                if state is not None:
                    logger.warning("Replacing a dead throwaway %s server", spec.label)
                    spec.stop(state)
                state = spec.start()
                logger.info("Started a throwaway %s server at %s", spec.label, state.url)
            state.users = sorted({p for p in state.users if _alive(p)} | {os.getpid()})
            _write_state(state_path, state)
            _held[state_path] = state.url
            if not _atexit_registered:
                atexit.register(stop_throwaway_servers)
                _atexit_registered = True
            return state
    except (OSError, subprocess.SubprocessError) as exc:
        raise _StartError(f"{type(exc).__name__}: {exc}") from exc


def _answers(spec: _Throwaway, state: _State) -> bool:
    """Whether the recorded server answers; one that runs but is slow is waited for, not killed."""
    deadline = time.monotonic() + 20
    while (reason := spec.check(state)) is not None:
        if not spec.running(state):
            return False
        if time.monotonic() > deadline:
            raise _StartError(
                f"the shared server at {state.url} runs but does not answer: {reason}"
            )
        time.sleep(0.5)
    return True


def _release_logged(state_path: Path, *, force: bool) -> None:
    try:
        _release(state_path, force=force)
    except Exception:
        logger.exception("Could not release the throwaway server recorded in %s", state_path)


def _release(state_path: Path, *, force: bool) -> None:
    spec = _THROWAWAYS[state_path.stem]
    with _held_lock:
        if _held.pop(state_path, None) is None and not force:
            return  # never joined it here
        with _locked(state_path):
            state = _read_state(state_path)
            if state is None:
                return
            others = [p for p in state.users if p != os.getpid() and _alive(p)]
            if others and not force:
                state.users = others
                _write_state(state_path, state)
                return
            logger.info("Stopping the throwaway %s server at %s", spec.label, state.url)
            spec.stop(state)
            state_path.unlink(missing_ok=True)


def _state_dir() -> Path:
    override = os.environ.get(_STATE_DIR_ENV, "").strip()
    default = Path(tempfile.gettempdir()) / f"aqe-test-servers-{os.geteuid()}"
    path = Path(override) if override else default
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise _StartError(f"{path} is not a directory owned by uid {os.geteuid()}; remove it")
    return path


@contextlib.contextmanager
def _locked(state_path: Path) -> Iterator[None]:
    """Hold the cross-process lock that guards ``state_path`` (bounded wait)."""
    with state_path.with_suffix(".lock").open("a") as lock:
        deadline = time.monotonic() + _LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise _StartError(
                        f"{lock.name} stayed locked for {_LOCK_TIMEOUT:.0f} s"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_state(path: Path) -> _State | None:
    try:
        return _State(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        logger.warning("Ignoring an unreadable state file %s", path)
        return None


def _write_state(path: Path, state: _State) -> None:
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps(asdict(state)))
    os.replace(scratch, path)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (zombies count as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat_line.rpartition(")")[2].split()[0] != "Z"


def _runs(pid: int, program: str) -> bool:
    """Whether ``pid`` is alive and runs ``program`` (guards against a recycled pid)."""
    if not _alive(pid):
        return False
    try:
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the pid
    return program.encode() in command_line


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _run(command: list[str], *, account: pwd.struct_passwd | None, cwd: Path) -> None:
    """Run ``command`` (as ``account`` if given) in its own session; raise on failure."""
    env = dict(os.environ)
    if account is not None:
        env.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
    result = subprocess.run(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        start_new_session=True,  # a Ctrl-C to pytest must not reach the server
        user=account.pw_uid if account else None,
        group=account.pw_gid if account else None,
        extra_groups=[] if account else None,
    )
    if result.returncode != 0:
        output = (result.stderr.strip() or result.stdout.strip()).splitlines()[-5:]
        detail = " | ".join(output) or "no output"
        raise _StartError(f"{Path(command[0]).name} exited with {result.returncode}: {detail}")


def _postgres_bin_dir() -> Path:
    candidates = []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    installed = [Path(p) for p in Path("/usr/lib/postgresql").glob("*/bin")]
    candidates += sorted(installed, key=_version_key, reverse=True)
    for directory in candidates:
        if all(os.access(directory / exe, os.X_OK) for exe in ("initdb", "pg_ctl", "postgres")):
            return directory
    raise _StartError("no initdb/pg_ctl/postgres on PATH or under /usr/lib/postgresql/*/bin")


def _postgres_account() -> pwd.struct_passwd | None:
    """The OS user to run PostgreSQL as: ``None`` (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise _StartError("running as root, which PostgreSQL refuses, and no 'postgres' OS user")


def _scratch_dir(prefix: str, account: pwd.struct_passwd | None) -> Path:
    """A fresh temp dir owned by ``account``, on a path that user can traverse."""
    parent = Path(tempfile.gettempdir()).resolve()
    if account is not None and not all(
        p.stat().st_mode & stat.S_IXOTH for p in (parent, *parent.parents)
    ):
        parent = Path("/tmp")
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    if account is not None:
        os.chown(base, account.pw_uid, account.pw_gid)
    return base


def init_postgres_cluster(
    data: Path,
    *,
    bin_dir: Path,
    account: pwd.struct_passwd | None,
    settings: dict[str, str],
) -> None:
    """``initdb`` a trust-auth, UTF-8, C-locale cluster in ``data`` and append ``settings``."""
    initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
    _run([*initdb, "-E", "UTF8", "--locale=C", "--no-sync"], account=account, cwd=data.parent)
    with (data / "postgresql.conf").open("a") as conf:
        conf.write("\n# lionagi_qe throwaway test server\n")
        conf.writelines(f"{key} = {value}\n" for key, value in settings.items())


def start_postgres_cluster(
    data: Path, log: Path, *, bin_dir: Path, account: pwd.struct_passwd | None, port: int = 0
) -> int:
    """Start the cluster in ``data`` on ``port`` (a free loopback port if 0); return the port.

    The port goes on the command line, so a retry on another port needs no config rewrite.
    """
    pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log)]
    attempts = 1 if port else _START_ATTEMPTS
    for attempt in range(1, attempts + 1):
        chosen = port or _free_port()
        try:
            start = [*pg_ctl, "-w", "-t", "60", "-o", f"-p {chosen}", "start"]
            _run(start, account=account, cwd=data.parent)
            return chosen
        except _StartError as exc:
            if attempt == attempts:
                raise _StartError(f"{exc}; its log ends: {_tail(log)}") from exc
    raise AssertionError("unreachable")  # pragma: no cover


def stop_postgres_cluster(
    data: Path, *, bin_dir: Path, account: pwd.struct_passwd | None, mode: str = "fast"
) -> None:
    """Stop the cluster in ``data`` (``pg_ctl stop -m mode``); SIGQUIT if that fails."""
    pid_file = data / "postmaster.pid"
    if not pid_file.exists():
        return
    try:
        _run(
            [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", mode, "-w", "-t", "30", "stop"],
            account=account,
            cwd=data.parent,
        )
    except (_StartError, subprocess.SubprocessError):
        with contextlib.suppress(OSError, ValueError, IndexError):
            postmaster = int(pid_file.read_text().split()[0])
            if _runs(postmaster, "postgres"):
                os.kill(postmaster, signal.SIGQUIT)


def _start_postgres() -> _State:
    bin_dir = _postgres_bin_dir()
    account = _postgres_account()
    base = _scratch_dir("aqe-test-postgres-", account)
    data, log = base / "data", base / "postgres.log"
    state = _State(
        url="",
        base_dir=str(base),
        bin_dir=str(bin_dir),
        run_as=account.pw_name if account else "",
    )
    try:
        settings = {**_POSTGRES_SETTINGS, "unix_socket_directories": f"'{base}'"}
        init_postgres_cluster(data, bin_dir=bin_dir, account=account, settings=settings)
        port = start_postgres_cluster(data, log, bin_dir=bin_dir, account=account)
        state.url = f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"
        reason = check_postgres(state.url)
        if reason is not None:
            raise _StartError(f"the new server does not accept logins: {reason}")
        return state
    except BaseException:
        _stop_postgres(state)  # also removes the directory
        raise


def _tail(log: Path) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").splitlines()[-3:]) or "(empty)"
    except OSError:
        return "(no log)"


def _postgres_running(state: _State) -> bool:
    return postgres_cluster_running(Path(state.base_dir) / "data")


def postgres_cluster_running(data: Path) -> bool:
    """Whether the postmaster of the cluster in ``data`` runs."""
    pid_file = data / "postmaster.pid"
    try:
        return _runs(int(pid_file.read_text().split()[0]), "postgres")
    except (OSError, ValueError, IndexError):
        return False


def _stop_postgres(state: _State) -> None:
    account = pwd.getpwnam(state.run_as) if state.run_as else None
    data = Path(state.base_dir) / "data"
    stop_postgres_cluster(data, bin_dir=Path(state.bin_dir), account=account)
    shutil.rmtree(state.base_dir, ignore_errors=True)


def _start_redis() -> _State:
    executable = shutil.which("redis-server")
    if executable is None:
        raise _StartError("no redis-server on PATH")
    base = _scratch_dir("aqe-test-redis-", None)
    pid_file = base / "redis.pid"
    try:
        for _ in range(_START_ATTEMPTS):
            port = _free_port()
            pid_file.unlink(missing_ok=True)
            options = {
                "port": str(port),
                "bind": "127.0.0.1",
                "save": "",
                "appendonly": "no",
                "daemonize": "yes",
                "pidfile": str(pid_file),
                "dir": str(base),
                "logfile": str(base / "redis.log"),
            }
            arguments = [part for key, value in options.items() for part in (f"--{key}", value)]
            _run([executable, *arguments], account=None, cwd=base)
            state = _State(url=f"redis://127.0.0.1:{port}/0", base_dir=str(base))
            if _wait_for_redis(state, pid_file):
                return state
        log_tail = _tail(base / "redis.log")
        raise _StartError(f"redis-server did not answer PING; its log ends: {log_tail}")
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise


def _wait_for_redis(state: _State, pid_file: Path) -> bool:
    """Poll until the new server answers; record its pid. False if it died (port taken)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            state.pid = int(pid_file.read_text().strip())
        if check_redis(state.url) is None and state.pid:
            return True
        if state.pid and not _alive(state.pid):
            return False
        time.sleep(0.05)
    if state.pid:
        _stop_redis(state)
    return False


def _redis_running(state: _State) -> bool:
    return bool(state.pid) and _runs(state.pid, "redis-server")


def _stop_redis(state: _State) -> None:
    if _redis_running(state):
        os.kill(state.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while _alive(state.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(state.pid):
            os.kill(state.pid, signal.SIGKILL)
    shutil.rmtree(state.base_dir, ignore_errors=True)


_THROWAWAYS = {
    "postgres": _Throwaway(
        kind="postgres",
        label="PostgreSQL",
        start=_start_postgres,
        stop=_stop_postgres,
        running=_postgres_running,
        check=lambda state: check_postgres(state.url),
        hints=_postgres_hints,
    ),
    "redis": _Throwaway(
        kind="redis",
        label="Redis",
        start=_start_redis,
        stop=_stop_redis,
        running=_redis_running,
        check=lambda state: check_redis(state.url),
        hints=_redis_hints,
    ),
}


#: The kinds this module defines; :mod:`lionagi_qe.testing.replication` registers another.
_BUILTIN_KINDS = frozenset(_THROWAWAYS)


def start_throwaway(kind: str) -> FoundServer:
    """Start (or join) the shared throwaway server of ``kind`` (``"postgres"`` or ``"redis"``)."""
    return _acquire(_THROWAWAYS[kind])
