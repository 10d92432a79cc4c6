"""SPEC §11, bad input and security: typed errors before any I/O, wildcards that never widen,
credentials that never leak, TLS and timeouts that reach the drivers.

"Before any I/O" is proved for real: every bad call also runs against backends whose servers
cannot be reached (a closed port, an SQLite file in a missing directory) and must still raise
its validation error, never ``BackendUnavailableError``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis as redis_sync
from redis.asyncio.connection import SSLConnection
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from lionagi_qe import (
    AgentMemory,
    BackendUnavailableError,
    CachedMemory,
    DatabaseManager,
    InvalidArgumentError,
    InvalidKeyError,
    InvalidPartitionError,
    InvalidPatternError,
    InvalidTTLError,
    PersistenceError,
    SchemaMissingError,
    SerializationError,
    Settings,
    ValueTooLargeError,
    WorkQueue,
    open_memory,
)
from lionagi_qe.backends.redis import RedisMemory
from lionagi_qe.backends.sql import PostgresMemory
from lionagi_qe.cli import app
from lionagi_qe.db.engine import create_engine
from lionagi_qe.testing.servers import FoundServer, create_database, drop_database

pytestmark = pytest.mark.integration

SECRET = "Sup3r-S3cret-pw"
WRONG = "Wr0ng-S3cret-pw"
STORED_SECRET = "st0red-s3cret-value"
LOGGERS = ("lionagi_qe", "sqlalchemy", "asyncpg", "redis")


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def chain_text(exc: BaseException) -> str:
    """``str`` and ``repr`` of an exception and every ``__cause__``/``__context__`` behind it."""
    seen: set[int] = set()
    parts: list[str] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        parts += [type(current).__name__, str(current), repr(current)]
        parts += [str(arg) for arg in current.args]
        todo += [current.__cause__, current.__context__]
    return "\n".join(parts)


# -- 1. typed errors before any I/O ----------------------------------------------------------


async def _drain(iterator: AsyncIterator[Any]) -> None:
    async for _ in iterator:
        pass


BadCall = tuple[str, Callable[[Any], Awaitable[Any]], type[Exception]]

K = "aqe/sec/existing"

#: Bad calls the contract and model tests do not already make (they cover bad values, keys on
#: store/retrieve, delta, metadata, expected_version and store_many shapes).
BAD_CALLS: list[BadCall] = [
    ("get_entry outside", lambda m: m.get_entry("elsewhere/k"), InvalidKeyError),
    ("get_entry control", lambda m: m.get_entry("aqe/a\nb"), InvalidKeyError),
    ("exists bytes", lambda m: m.exists(b"aqe/k"), InvalidKeyError),
    ("exists long", lambda m: m.exists("aqe/" + "x" * 300), InvalidKeyError),
    ("ttl None key", lambda m: m.ttl(None), InvalidKeyError),
    ("delete outside", lambda m: m.delete("AQE/k"), InvalidKeyError),
    ("delete control", lambda m: m.delete("aqe/\x7f"), InvalidKeyError),
    ("expire outside", lambda m: m.expire("x/k", 5), InvalidKeyError),
    ("expire ttl -1", lambda m: m.expire(K, -1), InvalidTTLError),
    ("expire ttl nan", lambda m: m.expire(K, float("nan")), InvalidTTLError),
    ("expire ttl inf", lambda m: m.expire(K, float("inf")), InvalidTTLError),
    ("expire ttl str", lambda m: m.expire(K, "5"), InvalidTTLError),
    ("store ttl nan", lambda m: m.store(K, 1, ttl=float("nan")), InvalidTTLError),
    ("store ttl inf", lambda m: m.store(K, 1, ttl=float("inf")), InvalidTTLError),
    ("store ttl str", lambda m: m.store(K, 1, ttl="10"), InvalidTTLError),
    ("store ttl 1e300", lambda m: m.store(K, 1, ttl=1e300), InvalidTTLError),
    ("store ttl 10**400", lambda m: m.store(K, 1, ttl=10**400), InvalidTTLError),
    ("store partition None", lambda m: m.store(K, 1, partition=None), InvalidPartitionError),
    ("store partition int", lambda m: m.store(K, 1, partition=5), InvalidPartitionError),
    ("store partition ctl", lambda m: m.store(K, 1, partition="p\x00"), InvalidPartitionError),
    ("store partition 65", lambda m: m.store(K, 1, partition="p" * 65), InvalidPartitionError),
    ("store metadata str", lambda m: m.store(K, 1, metadata="x"), SerializationError),
    (
        "store metadata nan",
        lambda m: m.store(K, 1, metadata={"n": float("nan")}),
        SerializationError,
    ),
    ("store too large", lambda m: m.store(K, "x" * (m.max_value_bytes + 1)), ValueTooLargeError),
    ("store_many ttl -1", lambda m: m.store_many({K: 1}, ttl=-1), InvalidTTLError),
    ("store_many ttl nan", lambda m: m.store_many({K: 1}, ttl=float("nan")), InvalidTTLError),
    ("store_many part", lambda m: m.store_many({K: 1}, partition="p" * 65), InvalidPartitionError),
    ("store_many big", lambda m: m.store_many([(K, "y" * m.max_value_bytes)]), ValueTooLargeError),
    ("store_many key", lambda m: m.store_many({K: 1, "other/k": 2}), InvalidKeyError),
    ("retrieve_many int", lambda m: m.retrieve_many([K, 5]), InvalidKeyError),
    ("retrieve_many bytes", lambda m: m.retrieve_many(b"aqe/k"), InvalidArgumentError),
    ("increment ttl 0", lambda m: m.increment(K, 1, ttl=0), InvalidTTLError),
    ("increment nan", lambda m: m.increment(K, float("nan")), InvalidArgumentError),
    ("increment key", lambda m: m.increment("nope/k"), InvalidKeyError),
    ("search int", lambda m: m.search(5), InvalidPatternError),
    ("search [!", lambda m: m.search("aqe/[!a"), InvalidPatternError),
    ("search [\\", lambda m: m.search("aqe/[a\\"), InvalidPatternError),
    ("search range z-a", lambda m: m.search("aqe/[z-a]"), InvalidPatternError),
    ("search control", lambda m: m.search("aqe/\x01*"), InvalidPatternError),
    ("search regex (", lambda m: m.search("aqe/(", regex=True), InvalidPatternError),
    ("search regex [", lambda m: m.search("[a-", regex=True), InvalidPatternError),
    ("search regex int", lambda m: m.search(1, regex=True), InvalidPatternError),
    ("search limit bool", lambda m: m.search("aqe/*", limit=True), InvalidArgumentError),
    ("search limit str", lambda m: m.search("aqe/*", limit="5"), InvalidArgumentError),
    ("search limit float", lambda m: m.search("aqe/*", limit=1.5), InvalidArgumentError),
    ("list_keys bytes", lambda m: m.list_keys(b"aqe/"), InvalidKeyError),
    ("list_keys control", lambda m: m.list_keys("aqe/\x00"), InvalidKeyError),
    ("list_keys long", lambda m: m.list_keys("aqe/" + "p" * 300), InvalidKeyError),
    ("clear_partition None", lambda m: m.clear_partition(None), InvalidPartitionError),
    ("clear_partition 65", lambda m: m.clear_partition("p" * 65), InvalidPartitionError),
    ("clear_partition ctl", lambda m: m.clear_partition("p\n"), InvalidPartitionError),
    ("scan batch 0", lambda m: _drain(m.scan("aqe/", batch_size=0)), InvalidArgumentError),
    ("scan batch bool", lambda m: _drain(m.scan("aqe/", batch_size=True)), InvalidArgumentError),
    ("scan prefix int", lambda m: _drain(m.scan(5)), InvalidKeyError),
    ("scan prefix ctl", lambda m: _drain(m.scan("aqe/\x02")), InvalidKeyError),
]


async def _check_bad_calls(memory: Any) -> list[str]:
    """Run every bad call; return a description of each that did not raise as promised."""
    problems = []
    for name, make, expected in BAD_CALLS:
        try:
            await make(memory)
        except expected as exc:
            if not isinstance(exc, ValueError | PersistenceError):
                problems.append(f"{name}: {type(exc).__name__} is not a ValueError")
        except BaseException as exc:  # reported below
            problems.append(f"{name}: {type(exc).__name__}: {exc}")
        else:
            problems.append(f"{name}: no error")
    return problems


@pytest.fixture
def unreachable(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """URLs of servers that cannot be reached, with a password in each."""
    yield {
        "postgres": f"postgresql+asyncpg://agent:{SECRET}@127.0.0.1:{_closed_port()}/aqe",
        "sqlite": f"sqlite+aiosqlite:///{tmp_path / 'missing-dir' / 'x.db'}",
        "redis": f"redis://:{SECRET}@127.0.0.1:{_closed_port()}/0",
    }


def _dead_backend(kind: str, urls: dict[str, Any]) -> Any:
    if kind == "postgres":
        return PostgresMemory(urls["postgres"], pool_timeout=2)
    if kind == "sqlite":
        return PostgresMemory(urls["sqlite"])
    if kind == "redis":
        return RedisMemory(url=urls["redis"], socket_connect_timeout=0.5)
    return CachedMemory(PostgresMemory(urls["postgres"], pool_timeout=2), redis_url=urls["redis"])


@pytest.mark.parametrize("kind", ["postgres", "sqlite", "redis", "cached"])
async def test_bad_input_is_refused_without_reaching_the_server(
    kind: str, unreachable: dict[str, Any]
) -> None:
    memory = _dead_backend(kind, unreachable)
    try:
        # The server really is unreachable: a valid call fails (not with a validation error).
        with pytest.raises(PersistenceError) as info:
            await memory.exists("aqe/sec/fine")
        assert not isinstance(info.value, ValueError)
        assert await _check_bad_calls(memory) == []
    finally:
        await memory.close()


async def test_bad_input_changes_nothing_on_a_live_backend(memory: Any) -> None:
    await memory.store(K, {"v": 1}, partition="kept", metadata={"m": 1})
    await memory.store("aqe/sec/counter", 5, ttl=3600)
    entry = await memory.get_entry(K)
    before = await memory.get_stats()
    assert await _check_bad_calls(memory) == []
    after = await memory.get_stats()
    for field in ("total_keys", "total_expired", "partitions", "size_bytes"):
        assert after[field] == before[field], field
    assert await memory.get_entry(K) == entry
    assert await memory.retrieve("aqe/sec/counter") == 5
    assert await memory.list_keys("aqe/") == ["aqe/sec/counter", K]


async def test_queue_and_learning_refuse_bad_arguments_before_io(
    unreachable: dict[str, Any],
) -> None:
    url = unreachable["postgres"]
    with pytest.raises(InvalidArgumentError):
        WorkQueue(url, "")
    queue = WorkQueue(url, "security")
    db = DatabaseManager(url, min_connections=0, max_connections=1, pool_timeout=2)
    calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("enqueue priority str", lambda: queue.enqueue({"a": 1}, priority="high")),
        ("enqueue priority 2**40", lambda: queue.enqueue({"a": 1}, priority=2**40)),
        ("enqueue max_attempts 0", lambda: queue.enqueue({"a": 1}, max_attempts=0)),
        ("enqueue delay -1", lambda: queue.enqueue({"a": 1}, delay=-1)),
        ("enqueue delay nan", lambda: queue.enqueue({"a": 1}, delay=float("nan"))),
        ("enqueue dedupe ''", lambda: queue.enqueue({"a": 1}, dedupe_key="")),
        ("claim consumer ''", lambda: queue.claim("")),
        ("claim lease 0", lambda: queue.claim("c", lease=0)),
        ("claim lease inf", lambda: queue.claim("c", lease=float("inf"))),
        ("heartbeat not a job", lambda: queue.heartbeat("job-id")),
        ("complete not a job", lambda: queue.complete(None)),
        ("update alpha 1.5", lambda: db.update_q_value("a", "s", "x", 1.0, 0.0, 1.5, 0.9)),
        ("update gamma -0.1", lambda: db.update_q_value("a", "s", "x", 1.0, 0.0, 0.1, -0.1)),
        ("update reward nan", lambda: db.update_q_value("a", "s", "x", float("nan"), 0, 0.1, 0.9)),
        ("update agent ''", lambda: db.update_q_value("", "s", "x", 1.0, 0.0, 0.1, 0.9)),
        ("update hash ''", lambda: db.update_q_value("a", "", "x", 1.0, 0.0, 0.1, 0.9)),
        ("get_q_value hash int", lambda: db.get_q_value("a", 5, "x")),
        ("upsert q 1e300", lambda: db.upsert_q_value("a", "s", "x", 1e300)),
        (
            "batch one bad alpha",
            lambda: db.batch_update_q_values(
                [
                    {
                        "agent_type": "a",
                        "state_hash": "s",
                        "action_hash": "x",
                        "reward": 1.0,
                        "next_max_q": 0.0,
                        "alpha": 0.1,
                        "gamma": 0.9,
                    },
                    {
                        "agent_type": "a",
                        "state_hash": "s",
                        "action_hash": "y",
                        "reward": 1.0,
                        "next_max_q": 0.0,
                        "alpha": 7,
                        "gamma": 0.9,
                    },
                ]
            ),
        ),
        ("end_session not uuid", lambda: db.end_session("not-a-uuid")),
        ("list_sessions limit 0", lambda: db.list_sessions(limit=0)),
        ("record_reward inf", lambda: db.record_reward("a", "s", "x", float("inf"))),
        ("get_rewards limit huge", lambda: db.get_rewards("a", limit=10**9)),
    ]
    problems = []
    try:
        for name, make in calls:
            try:
                await make()
            except InvalidArgumentError:
                pass
            except BaseException as exc:  # reported below
                problems.append(f"{name}: {type(exc).__name__}: {exc}")
            else:
                problems.append(f"{name}: no error")
        # The server really is unreachable.
        with pytest.raises(BackendUnavailableError):
            await queue.stats()
        with pytest.raises(BackendUnavailableError):
            await db.get_q_value("a", "s", "x")
    finally:
        await queue.close()
        await db.close()
    assert problems == []


async def test_queue_names_with_control_characters_are_refused(
    unreachable: dict[str, Any],
) -> None:
    url = unreachable["postgres"]
    with pytest.raises(InvalidArgumentError):
        WorkQueue(url, "jobs\x00")
    queue = WorkQueue(url, "jobs")
    try:
        with pytest.raises(InvalidArgumentError):
            await queue.claim("consumer\x00")
        with pytest.raises(InvalidArgumentError):
            await queue.enqueue({"a": 1}, dedupe_key="d\x01")
    finally:
        await queue.close()


async def test_agent_memory_refuses_bad_names_before_io(unreachable: dict[str, Any]) -> None:
    backend = RedisMemory(url=unreachable["redis"], socket_connect_timeout=0.5)
    try:
        for agent_id in ("", "a/b", "a*", "a?", "a[b", "a\\b", "patterns", "x" * 300, 5):
            with pytest.raises(InvalidArgumentError):
                AgentMemory(backend, agent_id)
        agent = AgentMemory(backend, "gen-1")
        with pytest.raises(InvalidArgumentError):
            await agent.store_result("", 1)
        with pytest.raises(InvalidTTLError):
            await agent.store_result("k", 1, ttl=0)
        with pytest.raises(SerializationError):
            await agent.store_memory("k", float("nan"))
        with pytest.raises(InvalidArgumentError):
            await agent.store_learned_pattern("", {})
        with pytest.raises(InvalidPatternError):
            await agent.search_memory("aqe/gen-1/[")
        with pytest.raises(InvalidKeyError):
            await agent.retrieve_context("gen-1/k")
        with pytest.raises(BackendUnavailableError):
            await agent.get_memory("k")
    finally:
        await backend.close()


# -- 2. wildcards never widen ------------------------------------------------------------------

NS = "aqe/w/"
#: Keys a widened match would hit: SQL LIKE (% _), glob (* ? [ \), regex (. ^ $ ( | + ]).
DECOY_SUFFIXES = [
    "a%b", "aXb", "a_b", "a\\b", "a*b", "a?b", "a[b", "a]b", "a.b", "a^b", "a$b", "a(b", "a|b",
    "a+b", "a{b", "ab", "a", "aXXb", "a%", "a_", "a\\", "a*", "A%b", "b%b", "a%b/c", "a%bc",
]  # fmt: skip
DECOYS = [NS + suffix for suffix in DECOY_SUFFIXES]


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\\])", r"\\\1", text)


@pytest_asyncio.fixture(loop_scope="session")
async def decoys(memory: Any) -> Any:
    await memory.store_many({key: index for index, key in enumerate(DECOYS)})
    await memory.store("aqe/x", "outside the prefix")
    return memory


async def test_list_keys_prefix_is_literal(decoys: Any) -> None:
    for prefix in sorted({NS + s[:2] for s in DECOY_SUFFIXES} | {NS + "%", NS + "_", NS + "*"}):
        expected = sorted(key for key in DECOYS if key.startswith(prefix))
        assert await decoys.list_keys(prefix) == expected, prefix
    assert await decoys.list_keys(NS + "a%b") == [NS + "a%b", NS + "a%b/c", NS + "a%bc"]
    assert await decoys.list_keys("aqe/_/") == []
    assert await decoys.list_keys("aqe/%") == []
    assert await decoys.list_keys("aqe/.*") == []


async def test_scan_prefix_is_literal(decoys: Any) -> None:
    for prefix in (NS + "a%", NS + "a_", NS + "a\\", NS + "a*", NS + "a["):
        got = [entry.key async for entry in decoys.scan(prefix, batch_size=2)]
        assert got == sorted(key for key in DECOYS if key.startswith(prefix)), prefix


async def test_escaped_glob_matches_exactly_one_key(decoys: Any) -> None:
    for index, key in enumerate(DECOYS):
        assert await decoys.search(glob_escape(key)) == {key: index}, key
    # % and _ are ordinary characters in the glob language: no escaping needed.
    assert await decoys.search(NS + "a%b") == {NS + "a%b": DECOYS.index(NS + "a%b")}
    assert await decoys.search(NS + "a_b") == {NS + "a_b": DECOYS.index(NS + "a_b")}
    assert list(await decoys.search(NS + "a%*")) == sorted(k for k in DECOYS if "/a%" in k)
    assert list(await decoys.search(NS + "a_?")) == [NS + "a_b"]
    assert list(await decoys.search(NS + "[%_]*")) == []
    assert list(await decoys.search(NS + "a[%_]b")) == [NS + "a%b", NS + "a_b"]
    assert list(await decoys.search(NS + "a[\\\\]b")) == [NS + "a\\b"]
    assert list(await decoys.search(NS + "a[.]b")) == [NS + "a.b"]
    assert list(await decoys.search(NS + "a[]]b")) == [NS + "a]b"]
    assert list(await decoys.search(NS + "a[!X]b")) == sorted(
        k for k in DECOYS if re.fullmatch(re.escape(NS) + r"a[^X]b", k)
    )


async def test_regex_metacharacters_are_literal_when_escaped(decoys: Any) -> None:
    for index, key in enumerate(DECOYS):
        found = await decoys.search("^" + re.escape(key) + "$", regex=True)
        assert found == {key: index}, key
    assert list(await decoys.search(re.escape("a.b"), regex=True)) == [NS + "a.b"]
    assert list(await decoys.search(re.escape("a%b"), regex=True)) == [
        NS + "a%b",
        NS + "a%b/c",
        NS + "a%bc",
    ]


PARTITIONS = ["p%", "p_", "p*", "p?", "p[", "p\\", "p.", "pX", "p", "pp", "P%", "p%x", "p^"]


@pytest.mark.parametrize("target", ["p%", "p_", "p*", "p?", "p[", "p\\", "p."])
async def test_clear_partition_names_are_literal(memory: Any, target: str) -> None:
    for index, partition in enumerate(PARTITIONS):
        await memory.store(f"{NS}{index}", partition, partition=partition)
    assert await memory.clear_partition(target) == 1
    left = await memory.search(NS + "*")
    assert sorted(left.values()) == sorted(p for p in PARTITIONS if p != target)
    stats = await memory.get_stats()
    assert stats["partitions"].get(target, 0) == 0
    assert all(stats["partitions"][p] == 1 for p in PARTITIONS if p != target)


async def test_agent_memory_never_reads_another_agents_keys(memory: Any) -> None:
    agents = {name: AgentMemory(memory, name) for name in ("a_b", "aXb", "a%b", "aQQb", "a.b")}
    for name, agent in agents.items():
        await agent.store_learned_pattern(f"n-{name}", {"by": name})
        await agent.store_memory("x_y", name)
        await agent.store_memory("xZy", f"decoy-{name}")
    for name, agent in agents.items():
        assert await agent.get_learned_patterns() == {f"n-{name}": {"by": name}}, name
        assert await agent.get_memory("x_y") == name
        found = await agent.search_memory(glob_escape(agent.prefix) + "x_y")
        assert found == {agent.prefix + "x_y": name}


# -- 3. credentials never leak -----------------------------------------------------------------


@pytest.fixture
def capture_logs(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[int], str]]:
    """Records of the library's and the drivers' loggers (all at DEBUG), formatted with
    tracebacks; ``text_of(level)`` keeps those at ``level`` or above.

    At DEBUG, ``sqlalchemy.engine`` also logs result rows (stored values): SQLAlchemy's own
    behaviour, documented. Statements and their parameters are logged at INFO.
    """
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")

    def text_of(level: int = logging.DEBUG) -> str:
        records = [record for record in caplog.records if record.levelno >= level]
        return "\n".join(formatter.format(record) for record in records)

    yield text_of


@pytest.fixture
def pg_role(aqe_postgres_server: FoundServer) -> Iterator[tuple[str, str]]:
    """A PostgreSQL role with a password (``SECRET``), dropped afterwards; its name and host."""
    role = f"aqe_sec_{uuid.uuid4().hex[:8]}"
    url = aqe_postgres_server.url

    async def run(statement: str) -> None:
        engine = create_engine(url, pool_size=1)
        try:
            async with engine.begin() as connection:
                await connection.exec_driver_sql(statement)
        finally:
            await engine.dispose()

    asyncio.run(run(f"CREATE ROLE {role} LOGIN PASSWORD '{SECRET}'"))
    try:
        host = url.split("@")[-1].split("/")[0]
        yield role, host
    finally:
        asyncio.run(run(f"DROP ROLE IF EXISTS {role}"))


def _assert_clean(text_: str, secrets: tuple[str, ...] = (SECRET, WRONG, STORED_SECRET)) -> None:
    for secret in secrets:
        assert secret not in text_, f"{secret!r} leaked in: {text_[:2000]}"


def _assert_logs_clean(text_of: Callable[[int], str]) -> None:
    """No password at any level; no stored value in statements/parameters (INFO and above)."""
    _assert_clean(text_of(logging.DEBUG), (SECRET, WRONG))
    _assert_clean(text_of(logging.INFO))


def test_wrong_password_to_postgres_never_leaks(
    pg_role: tuple[str, str], capture_logs: Callable[[int], str]
) -> None:
    """A failing connect with a password (the shared server trusts loopback, so the failure is
    the missing database; the password still travels through every layer)."""
    role, host = pg_role
    url = f"postgresql+asyncpg://{role}:{WRONG}@{host}/aqe_no_such_db_{uuid.uuid4().hex[:6]}"

    async def go() -> list[BaseException]:
        errors: list[BaseException] = []
        memory = open_memory(url)
        manager = DatabaseManager(url, min_connections=1, max_connections=1, echo="debug")
        queue = WorkQueue(url, "sec")
        for call in (
            lambda: memory.store("aqe/k", STORED_SECRET),
            manager.connect,
            lambda: manager.upsert_q_value("test-generator", "s", "a", 1.0),
            queue.stats,
        ):
            try:
                await call()
            except PersistenceError as exc:
                errors.append(exc)
        for thing in (memory, manager, queue):
            _assert_clean(repr(thing) + str(thing))
        await memory.close()
        await manager.close()
        await queue.close()
        return errors

    errors = asyncio.run(go())
    assert len(errors) == 4
    assert all(isinstance(exc, BackendUnavailableError) for exc in errors), errors
    for exc in errors:
        _assert_clean(chain_text(exc))
    assert "Error on connect" in capture_logs(logging.DEBUG)  # the pool logged the failure
    _assert_logs_clean(capture_logs)


async def test_working_connections_with_passwords_log_none(
    aqe_database_url: str, aqe_sqlite_url: str, capture_logs: Callable[[int], str]
) -> None:
    """The everyday path: a password in the URL (unused by the trusting server), DEBUG logs on."""
    url = aqe_database_url.replace("://postgres@", f"://postgres:{SECRET}@", 1)
    assert SECRET in url
    memory = open_memory(url, settings=Settings(lock_timeout=5))
    manager = DatabaseManager(url, min_connections=1, max_connections=2, echo="debug")
    queue = WorkQueue(url, f"sec-{uuid.uuid4().hex[:6]}")
    try:
        await memory.store("aqe/sec/ok", {"v": 1})
        assert await memory.retrieve("aqe/sec/ok") == {"v": 1}
        await manager.connect()
        await manager.upsert_q_value("test-generator", "s", "a", 1.0)
        await queue.enqueue({"job": 1})
        assert sum((await queue.stats()).values()) == 1
        await queue.clear()
        await memory.delete("aqe/sec/ok")
        for thing in (memory, manager, queue, manager.engine, manager.engine.sync_engine):
            _assert_clean(repr(thing) + str(thing))
    finally:
        await memory.close()
        await manager.close()
        await queue.close()
    assert "hidden due to hide_parameters" in capture_logs(logging.INFO)
    _assert_logs_clean(capture_logs)


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[int]:
    """A private ``redis-server --requirepass SECRET`` on a free port; its port."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed"
    port = _closed_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--dir", str(tmp_path), "--requirepass", SECRET, "--loglevel", "warning"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        probe = redis_sync.Redis(host="127.0.0.1", port=port, password=SECRET, socket_timeout=0.5)
        try:
            while True:
                try:
                    if probe.ping():
                        break
                except redis_sync.RedisError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise
                    time.sleep(0.02)
        finally:
            probe.close()
        yield port
    finally:
        process.kill()
        process.wait(10)


def test_wrong_password_to_redis_never_leaks(
    redis_with_password: int, aqe_sqlite_url: str, capture_logs: Callable[[int], str]
) -> None:
    port = redis_with_password
    wrong_url = f"redis://:{WRONG}@127.0.0.1:{port}/0"

    async def go() -> list[BaseException]:
        errors: list[BaseException] = []
        right = RedisMemory(url=f"redis://:{SECRET}@127.0.0.1:{port}/0")
        assert await right.store("aqe/sec/k", 1) == 1  # the server and the password work
        wrong = RedisMemory(url=wrong_url)
        by_host = RedisMemory(host="127.0.0.1", port=port, password=WRONG)
        cached = CachedMemory(PostgresMemory(aqe_sqlite_url), redis_url=wrong_url)
        for memory in (wrong, by_host):
            try:
                await memory.retrieve("aqe/sec/k")
            except PersistenceError as exc:
                errors.append(exc)
        # The cache tier falls back to the database; its logs must not show the password.
        await cached.store("aqe/sec/c", STORED_SECRET)
        assert await cached.retrieve("aqe/sec/c") == STORED_SECRET
        for thing in (right, wrong, by_host, cached, right.client, right.client.connection_pool):
            _assert_clean(repr(thing) + str(thing))
        for memory in (right, wrong, by_host, cached):
            await memory.close()
        return errors

    errors = asyncio.run(go())
    assert len(errors) == 2
    assert all(isinstance(exc, BackendUnavailableError) for exc in errors), errors
    for exc in errors:
        _assert_clean(chain_text(exc))
    _assert_logs_clean(capture_logs)


async def test_failing_statement_never_echoes_its_parameters(
    aqe_postgres_server: FoundServer, tmp_path: Path, capture_logs: Callable[[int], str]
) -> None:
    # A raw statement on an engine we create: SQLAlchemy's message must hide the parameters.
    engine = create_engine(aqe_postgres_server.url, pool_size=1)
    try:
        async with engine.connect() as connection:
            with pytest.raises(DBAPIError) as info:
                await connection.execute(
                    text("INSERT INTO aqe_no_such_table (v) VALUES (:v)"), {"v": STORED_SECRET}
                )
        assert "hidden" in str(info.value)
        _assert_clean(chain_text(info.value))
    finally:
        await engine.dispose()
    # Through the public API on a database without the schema, on PostgreSQL and SQLite (echo on).
    name = f"aqe_sec_empty_{uuid.uuid4().hex[:8]}"
    empty_url = create_database(aqe_postgres_server.url, name)
    try:
        for url in (empty_url, f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"):
            memory = PostgresMemory(url, auto_migrate=False, echo=True)
            try:
                for call in (
                    lambda m=memory: m.store("aqe/k", STORED_SECRET, metadata={"s": STORED_SECRET}),
                    lambda m=memory: m.store_many({"aqe/k": STORED_SECRET, "aqe/j": 1}),
                    lambda m=memory: m.increment("aqe/k", 1),
                ):
                    with pytest.raises(SchemaMissingError) as failure:
                        await call()
                    _assert_clean(chain_text(failure.value))
            finally:
                await memory.close()
    finally:
        drop_database(aqe_postgres_server.url, name)
    _assert_logs_clean(capture_logs)


def test_cli_output_never_shows_passwords(
    pg_role: tuple[str, str], redis_with_password: int, tmp_path: Path, aqe_database_url: str
) -> None:
    role, host = pg_role
    # The shared server trusts loopback, so a password in the worker's URL is accepted (unused).
    good_db = aqe_database_url.replace("://postgres@", f"://postgres:{SECRET}@", 1)
    assert SECRET in good_db
    good_redis = f"redis://:{SECRET}@127.0.0.1:{redis_with_password}/0"
    succeeding = [
        ["db", "current", "--database-url", good_db],
        ["db", "current", "--database-url", good_db, "--json"],
        ["db", "upgrade", "--database-url", good_db],
        [
            "memory",
            "put",
            "aqe/sec-cli/k",
            '"v"',
            "--database-url",
            good_db,
            "--redis-url",
            good_redis,
        ],
        ["memory", "get", "aqe/sec-cli/k", "--database-url", good_db, "--redis-url", good_redis],
        ["memory", "stats", "--database-url", good_db, "--redis-url", good_redis, "--json"],
        ["memory", "stats", "--database-url", good_redis],
        ["migrate", "--from", good_db, "--to", good_redis, "--prefix", "aqe/sec-cli/", "--json"],
        ["memory", "delete", "aqe/sec-cli/k", "--database-url", good_db],
    ]
    bad_db = f"postgresql+asyncpg://{role}:{WRONG}@{host}/aqe_no_such_db"
    dead_db = f"postgresql+asyncpg://{role}:{SECRET}@127.0.0.1:{_closed_port()}/aqe"
    bad_redis = f"redis://:{WRONG}@127.0.0.1:{redis_with_password}/0"
    sqlite = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    runner = CliRunner(env={"AQE_DATABASE_URL": None, "AQE_REDIS_URL": None, "COLUMNS": "200"})
    commands = [
        ["memory", "get", "aqe/k", "--database-url", bad_db],
        ["memory", "stats", "--database-url", dead_db],
        ["memory", "ls", "--database-url", dead_db, "--json"],
        ["db", "current", "--database-url", bad_db],
        ["db", "upgrade", "--database-url", dead_db],
        ["memory", "get", "aqe/k", "--database-url", bad_redis],
        ["memory", "put", "aqe/k", '"v"', "--database-url", sqlite, "--redis-url", bad_redis],
        ["export", str(tmp_path / "out.jsonl"), "--database-url", dead_db],
        ["migrate", "--from", dead_db, "--to", bad_redis],
    ]
    for args in succeeding:
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
        _assert_clean(result.output + result.stderr)
    exit_codes = []
    for args in commands:
        result = runner.invoke(app, args)
        exit_codes.append(result.exit_code)
        shown = result.output + result.stderr + repr(result.exception)
        if result.exception is not None:
            shown += chain_text(result.exception)
        _assert_clean(shown)
    # Every command but the cached put (Redis down: the database still works) failed.
    assert [code != 0 for code in exit_codes] == [True] * 6 + [False] + [True] * 2, exit_codes


# -- 4. TLS and timeouts reach the drivers -----------------------------------------------------


@pytest.mark.parametrize("query", ["sslmode=require", "ssl=require", "sslmode=verify-full"])
async def test_postgres_tls_request_reaches_asyncpg(aqe_database_url: str, query: str) -> None:
    url = f"{aqe_database_url}?{query}"
    engine = create_engine(url)
    try:
        _args, kwargs = engine.dialect.create_connect_args(engine.url)
        assert kwargs["ssl"] == query.split("=")[1]
        assert "sslmode" not in kwargs
    finally:
        await engine.dispose()
    # The shared server has no TLS: the handshake is attempted and refused, as a typed error
    # (verify-full first looks for the root certificate to verify the server with).
    expected = PersistenceError if "verify" in query else BackendUnavailableError
    for memory in (open_memory(url), DatabaseManager(url, min_connections=1)):
        try:
            with pytest.raises(expected) as info:
                if isinstance(memory, DatabaseManager):
                    await memory.connect()
                else:
                    await memory.exists("aqe/k")
            assert re.search("SSL|root certificate", chain_text(info.value))
        finally:
            await memory.close()


async def test_rediss_urls_use_tls(aqe_redis_url: str, aqe_sqlite_url: str) -> None:
    location = aqe_redis_url.split("://", 1)[1]
    tls_url = f"rediss://{location}"
    store = open_memory(tls_url)
    cached = open_memory(aqe_sqlite_url, redis_url=tls_url)
    try:
        assert isinstance(store, RedisMemory)
        assert store.client.connection_pool.connection_class is SSLConnection
        assert isinstance(cached, CachedMemory)
        assert cached._client.connection_pool.connection_class is SSLConnection
        # A plain server cannot complete the TLS handshake: typed error, bounded time.
        started = time.monotonic()
        with pytest.raises(BackendUnavailableError):
            await asyncio.wait_for(store.exists("aqe/k"), 30)
        assert time.monotonic() - started < 15
        await cached.store("aqe/k", 1)  # the database still serves the cached store
        assert await cached.retrieve("aqe/k") == 1
    finally:
        await store.close()
        await cached.close()


async def _show(engine: Any) -> tuple[str, str]:
    async with engine.connect() as connection:
        rows = await connection.exec_driver_sql(
            "SELECT current_setting('statement_timeout'), current_setting('lock_timeout')"
        )
        statement, lock = rows.one()
    return str(statement), str(lock)


async def test_timeouts_reach_postgres_sessions(
    aqe_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(database_url=aqe_database_url, statement_timeout=1.5, lock_timeout=0.25)
    memory = open_memory(settings=settings)
    try:
        assert await _show(memory.engine) == ("1500ms", "250ms")  # type: ignore[attr-defined]
    finally:
        await memory.close()
    monkeypatch.setenv("AQE_STATEMENT_TIMEOUT", "3")
    monkeypatch.setenv("AQE_LOCK_TIMEOUT", "0.5")
    memory = open_memory(aqe_database_url, settings=Settings())
    manager = DatabaseManager(aqe_database_url, statement_timeout=2, lock_timeout=0.1)
    try:
        assert await _show(memory.engine) == ("3s", "500ms")  # type: ignore[attr-defined]
        assert await _show(manager.engine) == ("2s", "100ms")
    finally:
        await memory.close()
        await manager.close()


@pytest.mark.parametrize(
    ("timeouts", "sqlstate"),
    [({"lock_timeout": 0.2}, "55P03"), ({"statement_timeout": 0.3}, "57014")],
    ids=["lock_timeout", "statement_timeout"],
)
async def test_waiting_past_a_timeout_is_a_typed_error(
    aqe_database_url: str, timeouts: dict[str, float], sqlstate: str
) -> None:
    """A store blocked by another transaction's row lock fails once its timeout passes:
    ``BackendUnavailableError`` (retryable: the server could not do it now), nothing written."""
    key = f"aqe/sec/locked-{uuid.uuid4().hex[:8]}"
    holder = create_engine(aqe_database_url, pool_size=1)
    memory = PostgresMemory(aqe_database_url, pool_size=2, **timeouts)
    try:
        await memory.store(key, 1)
        async with holder.connect() as connection:
            await connection.begin()
            await connection.execute(
                text("SELECT 1 FROM qe_memory WHERE key = :k FOR UPDATE"), {"k": key}
            )
            started = time.monotonic()
            with pytest.raises(BackendUnavailableError) as info:
                await memory.store(key, 2)
            assert time.monotonic() - started < 5
            assert sqlstate in str(info.value)
            await connection.rollback()
        assert await memory.retrieve(key) == 1
        assert (await memory.get_entry(key)).version == 1  # type: ignore[union-attr]
        assert await memory.store(key, 3) == 2  # the pool healed
    finally:
        await memory.delete(key)
        await memory.close()
        await holder.dispose()
