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

Starting and sharing throwaway servers lives in :mod:`lionagi_qe.testing.throwaway`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import re
import shutil
import socket
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
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
        start=lambda: _throwaway("postgres"),
        hints=_postgres_hints,
    )


def _redis_kind() -> _Kind:
    return _Kind(
        label="Redis",
        env_var=_REDIS_ENV,
        check=check_redis,
        normalize=str.strip,
        candidates=lambda: [("compose", _COMPOSE_REDIS_URL), ("local", _LOCAL_REDIS_URL)],
        start=lambda: _throwaway("redis"),
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


def _throwaway(kind: str) -> FoundServer:
    # Imported here: the throwaway module builds on this one (probes, FoundServer, hints).
    from lionagi_qe.testing.throwaway import start_throwaway

    return start_throwaway(kind)
