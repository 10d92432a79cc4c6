"""Find PostgreSQL and Redis servers for a test run, or start throwaway ones.

Discovery order (SPEC §8), for each server:

1. ``AQE_TEST_DATABASE_URL`` / ``AQE_TEST_REDIS_URL``. If set but unreachable the search stops
   with :class:`ServerUnavailableError`: a typo must never send the tests to another server.
2. The ``docker-compose-test.yml`` ports: PostgreSQL 127.0.0.1:5433, Redis 127.0.0.1:6380.
3. The local defaults: PostgreSQL 127.0.0.1:5432 (user ``postgres`` without a password, then
   the OS user), Redis 127.0.0.1:6379.
4. Throwaway servers started from installed binaries (``initdb``/``pg_ctl``, ``redis-server``)
   on free loopback ports, in a temporary directory, with trust auth and no durability.

The module is synchronous on purpose: it runs from pytest session fixtures. PostgreSQL logins go
through asyncpg inside ``asyncio.run`` on a fresh thread, so the probes also work while an event
loop is running.

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

import asyncio
import atexit
import contextlib
import fcntl
import json
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import redis
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

__all__ = [
    "FoundServer",
    "ServerUnavailableError",
    "check_postgres",
    "check_redis",
    "create_database",
    "drop_database",
    "find_postgres",
    "find_redis",
    "find_servers",
    "release_throwaway",
    "start_throwaway_postgres",
    "start_throwaway_redis",
    "stop_throwaway_servers",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_POSTGRES_ENV = "AQE_TEST_DATABASE_URL"
_REDIS_ENV = "AQE_TEST_REDIS_URL"
_STATE_DIR_ENV = "AQE_TEST_SERVERS_DIR"

_COMPOSE_POSTGRES_URL = (
    "postgresql+asyncpg://qe_agent_test:test_password@127.0.0.1:5433/lionagi_qe_test"
)
_COMPOSE_REDIS_URL = "redis://127.0.0.1:6380/0"
_LOCAL_POSTGRES = ("127.0.0.1", 5432, "postgres")  # host, port, database
_LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"

_TCP_TIMEOUT = 0.5
_LOGIN_TIMEOUT = 5.0
_LOCK_TIMEOUT = 180.0
_START_ATTEMPTS = 3
_DB_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_POSTGRES_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}


class ServerUnavailableError(RuntimeError):
    """No usable server: the message names each one tried and how to start one."""


@dataclass(frozen=True)
class FoundServer:
    """A reachable server: its URL and where it came from (env, compose, local, throwaway)."""

    url: str
    source: str

    def __repr__(self) -> str:
        return f"FoundServer(url={_redact(self.url)!r}, source={self.source!r})"


class _StartError(RuntimeError):
    """A throwaway server could not be started (the message says why)."""


# --- probes -----------------------------------------------------------------------------------


def check_postgres(url: str) -> str | None:
    """Return ``None`` if a login to ``url`` works, else a one-line reason (never the password)."""
    try:
        target = make_url(url)
    except ArgumentError:
        return "not a valid database URL"
    if target.host and not _tcp_open(target.host, target.port or 5432):
        return f"nothing answers on {target.host}:{target.port or 5432}"
    dsn = _asyncpg_dsn(url)
    try:
        _run_coroutine(lambda: _postgres_login(dsn), timeout=_LOGIN_TIMEOUT + 1)
    except Exception as exc:
        return _describe(exc, target.password)
    return None


def check_redis(url: str) -> str | None:
    """Return ``None`` if ``url`` answers PING, else a one-line reason (never the password)."""
    try:
        parts = urlsplit(url)
        host, port, password = parts.hostname, parts.port or 6379, parts.password
    except ValueError:
        return "not a valid Redis URL"
    if parts.scheme not in {"redis", "rediss", "unix"}:
        return f"unsupported scheme {parts.scheme!r} (use redis://, rediss:// or unix://)"
    if host and not _tcp_open(host, port):
        return f"nothing answers on {host}:{port}"
    try:
        client = redis.Redis.from_url(
            url, socket_connect_timeout=_TCP_TIMEOUT, socket_timeout=_LOGIN_TIMEOUT
        )
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError) as exc:
        return _describe(exc, password)
    return None


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=_TCP_TIMEOUT):
            return True
    except OSError:
        return False


async def _postgres_login(dsn: str) -> None:
    connection = await asyncpg.connect(dsn, timeout=_LOGIN_TIMEOUT)
    try:
        await connection.fetchval("SELECT 1")
    finally:
        await connection.close(timeout=_LOGIN_TIMEOUT)


def _asyncpg_dsn(url: str) -> str:
    """The plain ``postgresql://`` DSN asyncpg understands (SQLAlchemy-only options dropped)."""
    target = make_url(url)
    query = {key: value for key, value in target.query.items() if key.startswith("ssl")}
    plain = target.set(drivername="postgresql", query=query)
    return plain.render_as_string(hide_password=False)


def _run_coroutine(factory: Callable[[], Coroutine[Any, Any, _T]], *, timeout: float) -> _T:
    """Run a coroutine on a fresh loop in a fresh thread (safe while a loop is running)."""
    values: list[_T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            values.append(asyncio.run(factory()))
        except BaseException as exc:  # handed to the calling thread below
            errors.append(exc)

    thread = threading.Thread(target=target, name="aqe-test-servers", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout:.0f} s")
    if errors:
        raise errors[0]
    return values[0]


def _describe(exc: BaseException, secret: str | None) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else "no details"
    if secret:
        text = text.replace(secret, "***")
    return f"{type(exc).__name__}: {text}"


def _redact(url: str) -> str:
    """``url`` with its password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    userinfo, at, hostinfo = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return parts._replace(netloc=f"{user}:***@{hostinfo}").geturl()


# --- discovery --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Kind:
    label: str
    env_var: str
    check: Callable[[str], str | None]
    normalize: Callable[[str], str]
    candidates: Callable[[], list[tuple[str, str]]]  # (source, url), in discovery order
    start: Callable[[], FoundServer]
    hints: Callable[[], list[str]]


def find_postgres(*, start_throwaway: bool = True) -> FoundServer:
    """Find a PostgreSQL server for the tests (see the module docstring for the order).

    Returns:
        The server's ``postgresql+asyncpg://`` URL (a login with rights to create databases)
        and its source.

    Raises:
        ServerUnavailableError: ``AQE_TEST_DATABASE_URL`` is set but unreachable, or no server
            could be found or started.
    """
    return _find(_postgres_kind(), start_throwaway)


def find_redis(*, start_throwaway: bool = True) -> FoundServer:
    """Find a Redis server for the tests (see the module docstring for the order).

    Raises:
        ServerUnavailableError: ``AQE_TEST_REDIS_URL`` is set but unreachable, or no server
            could be found or started.
    """
    return _find(_redis_kind(), start_throwaway)


def find_servers(*, start_throwaway: bool = True) -> tuple[FoundServer, FoundServer]:
    """Find PostgreSQL and Redis; if either is missing, raise one error naming both.

    Raises:
        ServerUnavailableError: whatever :func:`find_postgres` and :func:`find_redis` raised,
            joined into one message.
    """
    found: list[FoundServer] = []
    problems: list[str] = []
    for finder in (find_postgres, find_redis):
        try:
            found.append(finder(start_throwaway=start_throwaway))
        except ServerUnavailableError as exc:
            problems.append(str(exc))
    if problems:
        raise ServerUnavailableError("\n\n".join(problems))
    return found[0], found[1]


def _find(kind: _Kind, start_throwaway: bool) -> FoundServer:
    from_env = os.environ.get(kind.env_var, "").strip()
    if from_env:
        url = kind.normalize(from_env)
        reason = kind.check(url)
        if reason is None:
            logger.info("Using %s from %s: %s", kind.label, kind.env_var, _redact(url))
            return FoundServer(url, "env")
        raise ServerUnavailableError(
            f"{kind.env_var}={_redact(url)} is set, but that {kind.label} server is unreachable"
            f" ({reason}).\nStart that server, fix {kind.env_var}, or unset it so the tests"
            " look for docker compose, local or throwaway servers.\n" + _hint_text(kind)
        )
    tried = [f"{kind.env_var}: not set"]
    for source, url in kind.candidates():
        reason = kind.check(url)
        if reason is None:
            logger.info("Using %s %s server: %s", source, kind.label, _redact(url))
            return FoundServer(url, source)
        tried.append(f"{source} {_redact(url)}: {reason}")
    if start_throwaway:
        try:
            return kind.start()
        except _StartError as exc:
            tried.append(f"throwaway: {exc}")
    else:
        tried.append("throwaway: not attempted (start_throwaway=False)")
    listing = "".join(f"\n  - {line}" for line in tried)
    raise ServerUnavailableError(
        f"No {kind.label} server for the tests. Tried:{listing}\n" + _hint_text(kind)
    )


def _hint_text(kind: _Kind) -> str:
    return "Start one:" + "".join(f"\n  - {line}" for line in kind.hints())


def _postgres_kind() -> _Kind:
    return _Kind(
        label="PostgreSQL",
        env_var=_POSTGRES_ENV,
        check=check_postgres,
        normalize=_normalize_postgres_url,
        candidates=_postgres_candidates,
        start=lambda: _acquire(_THROWAWAYS["postgres"]),
        hints=_postgres_hints,
    )


def _redis_kind() -> _Kind:
    return _Kind(
        label="Redis",
        env_var=_REDIS_ENV,
        check=check_redis,
        normalize=str.strip,
        candidates=lambda: [("compose", _COMPOSE_REDIS_URL), ("local", _LOCAL_REDIS_URL)],
        start=lambda: _acquire(_THROWAWAYS["redis"]),
        hints=_redis_hints,
    )


def _normalize_postgres_url(url: str) -> str:
    """Any ``postgres[ql][+driver]://`` URL as ``postgresql+asyncpg://`` (others unchanged)."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.split("+")[0] in {"postgres", "postgresql"}:
        return f"postgresql+asyncpg://{rest}"
    return url


def _postgres_candidates() -> list[tuple[str, str]]:
    host, port, database = _LOCAL_POSTGRES
    users = ["postgres"]
    os_user = _os_user()
    if os_user and os_user not in users:
        users.append(os_user)
    local = [("local", f"postgresql+asyncpg://{u}@{host}:{port}/{database}") for u in users]
    return [("compose", _COMPOSE_POSTGRES_URL), *local]


def _os_user() -> str | None:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return os.environ.get("USER")


def _postgres_hints() -> list[str]:
    sudo = "" if os.geteuid() == 0 else "sudo "
    clusters = sorted(Path("/etc/postgresql").glob("*/main"), key=_version_key, reverse=True)
    if clusters:
        debian = f"{sudo}pg_ctlcluster {clusters[0].parent.name} main start"
    else:
        debian = (
            f"{sudo}apt-get install -y postgresql  (then: {sudo}pg_ctlcluster <version> main start)"
        )
    return [
        f"Debian/Ubuntu: {debian}",
        "Docker: docker compose -f docker-compose-test.yml up -d",
        f"Any server: export {_POSTGRES_ENV}=postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DB",
    ]


def _redis_hints() -> list[str]:
    sudo = "" if os.geteuid() == 0 else "sudo "
    start = 'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no'
    if shutil.which("redis-server") is None:
        start = f"{sudo}apt-get install -y redis-server  (then: {start})"
    return [
        f"Debian/Ubuntu: {start}",
        "Docker: docker compose -f docker-compose-test.yml up -d",
        f"Any server: export {_REDIS_ENV}=redis://HOST:PORT/0",
    ]


def _version_key(path: Path) -> int:
    """The major version in ``/usr/lib/postgresql/15/bin`` or ``/etc/postgresql/15/main``."""
    name = path.parent.name
    return int(name) if name.isdigit() else 0


# --- databases --------------------------------------------------------------------------------


def create_database(admin_url: str, name: str, *, template: str | None = None) -> str:
    """Create database ``name`` (dropping it first if it exists) and return its URL.

    Args:
        admin_url: a PostgreSQL URL whose user may create databases.
        name: the new database; letters, digits and underscores only.
        template: copy this database instead of ``template1``. PostgreSQL waits up to 5 s for
            sessions connected to it to leave; this retries that twice more.

    Returns:
        ``admin_url`` with its database replaced by ``name`` (same driver and credentials).

    Raises:
        ValueError: ``name`` or ``template`` is not a plain identifier, or is the admin database.
    """
    _check_database_name(admin_url, name)
    statements = [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"']
    if template is not None:
        _check_database_name(admin_url, template)
        statements[1] += f' TEMPLATE "{template}"'
    dsn = _asyncpg_dsn(admin_url)
    attempts = 1 if template is None else 3
    _run_coroutine(lambda: _execute(dsn, statements, attempts=attempts), timeout=120)
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, name: str) -> None:
    """Drop database ``name`` if it exists, disconnecting its sessions (``WITH (FORCE)``).

    Raises:
        ValueError: ``name`` is not a plain identifier, or is the admin database.
    """
    _check_database_name(admin_url, name)
    dsn = _asyncpg_dsn(admin_url)
    statements = [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)']
    _run_coroutine(lambda: _execute(dsn, statements), timeout=120)


def _check_database_name(admin_url: str, name: str) -> None:
    if not _DB_NAME.fullmatch(name):
        raise ValueError(f"database name {name!r} must match {_DB_NAME.pattern}")
    if name == make_url(admin_url).database:
        raise ValueError(f"database {name!r} is the one the admin URL connects to")


async def _execute(dsn: str, statements: list[str], *, attempts: int = 1) -> None:
    """Run ``statements`` in order; retry one that fails because a database is in use."""
    connection = await asyncpg.connect(dsn, timeout=_LOGIN_TIMEOUT)
    try:
        for statement in statements:
            for attempt in range(1, attempts + 1):
                try:
                    await connection.execute(statement)
                    break
                except asyncpg.exceptions.ObjectInUseError:
                    if attempt == attempts:
                        raise
    finally:
        await connection.close(timeout=_LOGIN_TIMEOUT)


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


@dataclass(frozen=True)
class _Throwaway:
    kind: str
    label: str
    start: Callable[[], _State]
    stop: Callable[[_State], None]
    running: Callable[[_State], bool]
    check: Callable[[str], str | None]
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
            paths += [directory / f"{kind}.json" for kind in _THROWAWAYS]
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
            return FoundServer(state.url, "throwaway")
    except (OSError, subprocess.SubprocessError) as exc:
        raise _StartError(f"{type(exc).__name__}: {exc}") from exc


def _answers(spec: _Throwaway, state: _State) -> bool:
    """Whether the recorded server answers; one that runs but is slow is waited for, not killed."""
    deadline = time.monotonic() + 20
    while (reason := spec.check(state.url)) is not None:
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
        initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
        _run([*initdb, "-E", "UTF8", "--locale=C", "--no-sync"], account=account, cwd=base)
        settings = {**_POSTGRES_SETTINGS, "unix_socket_directories": f"'{base}'"}
        with (data / "postgresql.conf").open("a") as conf:
            conf.write("\n# lionagi_qe throwaway test server\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log)]
        for attempt in range(1, _START_ATTEMPTS + 1):
            port = _free_port()
            try:
                # The port goes on the command line so a retry needs no config rewrite.
                start = [*pg_ctl, "-w", "-t", "60", "-o", f"-p {port}", "start"]
                _run(start, account=account, cwd=base)
                break
            except _StartError as exc:
                if attempt == _START_ATTEMPTS:
                    raise _StartError(f"{exc}; its log ends: {_tail(log)}") from exc
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
    pid_file = Path(state.base_dir) / "data" / "postmaster.pid"
    try:
        return _runs(int(pid_file.read_text().split()[0]), "postgres")
    except (OSError, ValueError, IndexError):
        return False


def _stop_postgres(state: _State) -> None:
    data = Path(state.base_dir) / "data"
    pid_file = data / "postmaster.pid"
    if pid_file.exists():
        account = pwd.getpwnam(state.run_as) if state.run_as else None
        pg_ctl = str(Path(state.bin_dir) / "pg_ctl")
        try:
            _run(
                [pg_ctl, "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"],
                account=account,
                cwd=Path(state.base_dir),
            )
        except (_StartError, subprocess.SubprocessError):
            with contextlib.suppress(OSError, ValueError, IndexError):
                postmaster = int(pid_file.read_text().split()[0])
                if _runs(postmaster, "postgres"):
                    os.kill(postmaster, signal.SIGQUIT)
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
        check=check_postgres,
        hints=_postgres_hints,
    ),
    "redis": _Throwaway(
        kind="redis",
        label="Redis",
        start=_start_redis,
        stop=_stop_redis,
        running=_redis_running,
        check=check_redis,
        hints=_redis_hints,
    ),
}
