"""Moving data (SPEC §9): export/import as JSON Lines and migrate between any two backends."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from lionagi_qe import (
    BackendUnavailableError,
    InvalidArgumentError,
    InvalidKeyError,
    InvalidPartitionError,
    InvalidTTLError,
    PersistenceError,
    SerializationError,
)
from lionagi_qe.backends.redis import RedisMemory
from lionagi_qe.backends.sql import PostgresMemory
from lionagi_qe.coordination import AgentMemory
from lionagi_qe.transfer import (
    FIELDS,
    decode_line,
    export_entries,
    export_jsonl,
    import_jsonl,
    migrate,
    validate_jsonl,
    verify,
)

pytestmark = pytest.mark.integration

#: Values of every JSON kind, with floats whose text a careless path would change.
VALUES: dict[str, Any] = {
    "aqe/kinds/dict": {"nested": {"list": [1, 2.5, "x", None, True]}, "z": 1, "a": 2},
    "aqe/kinds/list": [1, [2, [3, []]], {}],
    "aqe/kinds/str": 'quote " backslash \\ newline \n tab \t sep \u2028 emoji \U0001f600',
    "aqe/kinds/int": 42,
    "aqe/kinds/bigint": 2**53 + 1,
    "aqe/kinds/negative": -7,
    "aqe/kinds/float": 0.1 + 0.2,
    "aqe/kinds/float-int": 1.0,
    "aqe/kinds/1e16": 1e16,
    "aqe/kinds/tiny": 5e-324,
    "aqe/kinds/huge": 1.7976931348623157e308,
    "aqe/kinds/true": True,
    "aqe/kinds/false": False,
    "aqe/kinds/none": None,
    "aqe/kinds/empty-dict": {},
    "aqe/kinds/empty-list": [],
    "aqe/kinds/empty-str": "",
    "aqe/\u00fc/\u952e/\U0001f600": "unicode key",
}


def _names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def _exact(value: Any) -> str:
    # Equal JSON text, so 1 and 1.0 (or True and 1) differ.
    return json.dumps(value, ensure_ascii=False)


async def _seed(memory: Any) -> None:
    await memory.store_many(VALUES)
    await memory.store(
        "aqe/rich/meta",
        {"score": 0.7},
        partition="agent_results",
        metadata={"agent": "gen-1", "tags": ["a", "b"], "w": 0.5},
    )
    await memory.store("aqe/rich/ttl", "beat", ttl=300, partition="heartbeats")
    await memory.store("aqe/rich/both", [1], ttl=200, partition="p-2", metadata={"m": 1})
    await memory.store_many({"aqe/rich/same-1": 1, "aqe/rich/same-2": 2}, partition="labels")


async def _state(memory: Any, prefix: str | None = None) -> dict[str, Any]:
    """The live state: exact value text, partition, metadata, and the TTL rounded to 10 s."""
    state = {}
    async for entry in memory.scan(prefix):
        ttl = None if entry.ttl is None else round(entry.ttl, -1)
        state[entry.key] = (_exact(entry.value), entry.partition, _exact(entry.metadata), ttl)
    return state


async def _check_seeded(memory: Any, source_state: dict[str, Any]) -> None:
    assert await _state(memory) == source_state
    for key, value in VALUES.items():
        assert _exact(await memory.retrieve(key)) == _exact(value), key
    entry = await memory.get_entry("aqe/rich/meta")
    assert entry is not None
    assert entry.partition == "agent_results"
    assert entry.metadata == {"agent": "gen-1", "tags": ["a", "b"], "w": 0.5}
    assert entry.expires_at is None
    ttl = await memory.ttl("aqe/rich/ttl")
    assert ttl is not None and 280 < ttl <= 300
    both = await memory.get_entry("aqe/rich/both")
    assert both is not None and both.partition == "p-2" and both.metadata == {"m": 1}
    ttl = await memory.ttl("aqe/rich/both")
    assert ttl is not None and 180 < ttl <= 200
    stats = await memory.get_stats()
    assert stats["total_keys"] == len(VALUES) + 5
    assert stats["partitions"] == {
        "agent_results": 1,
        "default": len(VALUES),
        "heartbeats": 1,
        "labels": 2,
        "p-2": 1,
    }


# -- more stores than the plugin's one per kind ------------------------------------------------


@pytest_asyncio.fixture
async def other_sqlite(_aqe_sqlite_template: Path, tmp_path: Path) -> AsyncIterator[Any]:
    """A second, independent SQLite store."""
    path = tmp_path / f"other-{uuid.uuid4().hex[:6]}.db"
    shutil.copyfile(_aqe_sqlite_template, path)
    memory = PostgresMemory(f"sqlite+aiosqlite:///{path}")
    try:
        yield memory
    finally:
        await memory.close()


@pytest_asyncio.fixture
async def other_redis(aqe_redis_url: str) -> AsyncIterator[Any]:
    """A second Redis store under a key prefix of its own, deleted afterwards."""
    prefix = f"aqe-test:{uuid.uuid4().hex[:12]}:"
    memory = RedisMemory(url=aqe_redis_url, prefix=prefix)
    try:
        yield memory
    finally:
        await memory.close()
        client = RedisMemory(url=aqe_redis_url, prefix=prefix).client
        try:
            keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
            if keys:
                await client.unlink(*keys)
        finally:
            await client.aclose()


_BOTH = [pytest.mark.redis, pytest.mark.postgres]


def _pair(source: str, target: str, name: str, marks: Any = ()) -> Any:
    return pytest.param((source, target), id=name, marks=marks)


PAIRS = [
    _pair("sqlite_memory", "postgres_memory", "sqlite-postgres", pytest.mark.postgres),
    _pair("redis_memory", "postgres_memory", "redis-postgres", _BOTH),
    _pair("postgres_memory", "redis_memory", "postgres-redis", _BOTH),
    _pair("sqlite_memory", "cached_memory", "sqlite-cached", _BOTH),
    _pair("cached_memory", "redis_memory", "cached-redis", _BOTH),
    _pair("redis_memory", "other_redis", "redis-redis", pytest.mark.redis),
    _pair("postgres_memory", "sqlite_memory", "postgres-sqlite", pytest.mark.postgres),
    _pair("sqlite_memory", "other_sqlite", "sqlite-sqlite"),
]


@pytest.fixture(params=PAIRS)
def pair(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    """(source, target): two independent stores."""
    source_name, target_name = request.param
    return request.getfixturevalue(source_name), request.getfixturevalue(target_name)


# -- migrate -----------------------------------------------------------------------------------


async def test_migrate_keeps_values_partitions_metadata_and_ttls(pair: tuple[Any, Any]) -> None:
    source, target = pair
    await _seed(source)
    before = await _state(source)
    summary = await migrate(source, target, batch_size=7)
    assert summary.read == summary.written == len(VALUES) + 5
    assert summary.expired == 0
    check = summary.verification
    assert check is not None and check.ok
    assert (check.source, check.matched, check.missing, check.different) == (len(before),) * 2 + (
        0,
        0,
    )
    await _check_seeded(target, before)
    assert await _state(source) == before  # the source is only read


async def test_migrate_is_idempotent(pair: tuple[Any, Any]) -> None:
    source, target = pair
    await _seed(source)
    first = await migrate(source, target)
    state = await _state(target)
    stats = await target.get_stats()
    second = await migrate(source, target)
    assert first.ok and second.ok
    assert await _state(target) == state
    again = await target.get_stats()
    assert (again["total_keys"], again["partitions"], again["size_bytes"]) == (
        stats["total_keys"],
        stats["partitions"],
        stats["size_bytes"],
    )


@pytest.mark.redis
@pytest.mark.postgres
async def test_fleet_scenario_redis_to_postgres(redis_memory: Any, postgres_memory: Any) -> None:
    """A fleet that ran on Redis moves to PostgreSQL and carries on where it stopped."""
    for agent_id in ("test-generator", "coverage-analyzer", "quality-gate"):
        agent = AgentMemory(redis_memory, agent_id)
        await agent.store_result("plan", {"tests": 12, "ratio": 0.85})
        await agent.store_memory("state", {"step": 3})
        await agent.store_learned_pattern("retry-flaky", {"max": 3})
        await redis_memory.store(f"aqe/heartbeat/{agent_id}", "alive", ttl=30)
    await redis_memory.increment("aqe/fleet/passed", 41)
    summary = await migrate(redis_memory, postgres_memory)
    assert summary.ok and summary.written == 3 * 4 + 1
    source_stats = await redis_memory.get_stats()
    target_stats = await postgres_memory.get_stats()
    assert target_stats["partitions"] == source_stats["partitions"]
    assert target_stats["size_bytes"] == source_stats["size_bytes"]
    moved = AgentMemory(postgres_memory, "quality-gate")
    assert await moved.retrieve_context("aqe/quality-gate/plan") == {"tests": 12, "ratio": 0.85}
    assert await moved.get_learned_patterns() == {"retry-flaky": {"max": 3}}
    heartbeat = await postgres_memory.ttl("aqe/heartbeat/quality-gate")
    assert heartbeat is not None and 25 < heartbeat <= 30
    assert await postgres_memory.increment("aqe/fleet/passed") == 42


@pytest.mark.postgres
async def test_migrate_prefix_copies_only_that_prefix(
    sqlite_memory: Any, postgres_memory: Any
) -> None:
    await sqlite_memory.store_many({"aqe/a/1": 1, "aqe/a/2": 2, "aqe/ab": 3, "aqe/b/1": 4})
    await postgres_memory.store("aqe/b/2", "already there")
    summary = await migrate(sqlite_memory, postgres_memory, prefix="aqe/a/")
    assert summary.read == 2
    assert await postgres_memory.list_keys() == ["aqe/a/1", "aqe/a/2", "aqe/b/2"]
    check = summary.verification
    assert check is not None and check.ok and check.matched == 2 and check.extra == 0


async def test_expired_entries_are_not_copied(sqlite_memory: Any, other_sqlite: Any) -> None:
    await sqlite_memory.store("aqe/x/live", 1)
    await sqlite_memory.store("aqe/x/dead", 2, ttl=0.2)
    await asyncio.sleep(0.4)
    summary = await migrate(sqlite_memory, other_sqlite)
    assert summary.read == 1
    assert await other_sqlite.list_keys() == ["aqe/x/live"]
    assert (await other_sqlite.get_stats())["total_expired"] == 0


class _SlowScan:
    """A source whose scan pauses after each entry (a long move)."""

    def __init__(self, memory: Any, pause: float) -> None:
        self._memory = memory
        self._pause = pause

    def __getattr__(self, name: str) -> Any:
        return getattr(self._memory, name)

    async def _scan(self, prefix: str | None, batch_size: int) -> AsyncIterator[Any]:
        async for entry in self._memory.scan(prefix, batch_size=batch_size):
            yield entry
            await asyncio.sleep(self._pause)

    def scan(self, prefix: str | None = None, *, batch_size: int = 1000) -> Any:
        return self._scan(prefix, batch_size)


@pytest.mark.redis
async def test_an_entry_that_expires_during_the_move_is_not_resurrected(
    redis_memory: Any, sqlite_memory: Any
) -> None:
    await redis_memory.store("aqe/m/b-long", "lives", ttl=60)
    for n in range(5):
        await redis_memory.store(f"aqe/m/c{n}", n)
    await redis_memory.store("aqe/m/a-short", "dies on the way", ttl=0.5)  # scanned first
    # All seven are read before the one chunk is written, 0.15 s apart: 1 s in all.
    summary = await migrate(_SlowScan(redis_memory, 0.15), sqlite_memory, check=False)
    assert summary.read == 7
    assert summary.expired == 1 and summary.written == 6
    assert await sqlite_memory.get_entry("aqe/m/a-short") is None
    assert (await sqlite_memory.get_stats())["total_expired"] == 0
    source_left = await redis_memory.ttl("aqe/m/b-long")
    remaining = await sqlite_memory.ttl("aqe/m/b-long")  # read after the source's
    assert remaining is not None and source_left is not None
    # Counted down while the move ran (up to the write's own latency): a naive copy would give
    # it back the ~1 s the move took.
    assert source_left - 1.0 < remaining <= source_left + 0.15


async def test_verification_counts_missing_different_and_extra(
    sqlite_memory: Any, other_sqlite: Any
) -> None:
    await sqlite_memory.store_many({f"aqe/v/{n}": n for n in range(6)})
    await sqlite_memory.store("aqe/v/ttl", "t", ttl=100)
    assert (await migrate(sqlite_memory, other_sqlite)).ok
    await other_sqlite.delete("aqe/v/0")  # missing
    await other_sqlite.store("aqe/v/1", 1.0)  # 1 became 1.0: different
    await other_sqlite.store("aqe/v/2", 2, partition="elsewhere")  # different
    await other_sqlite.store("aqe/v/3", 3, metadata={"x": 1})  # different
    await other_sqlite.store("aqe/v/4", 4, ttl=100)  # a TTL the source lacks: different
    await other_sqlite.store("aqe/v/ttl", "t")  # the TTL was dropped: different
    await other_sqlite.store("aqe/v/zz", "only here")  # extra
    check = await verify(sqlite_memory, other_sqlite)
    assert (check.source, check.matched, check.missing, check.different, check.extra) == (
        7,
        1,
        1,
        5,
        1,
    )
    assert not check.ok
    assert check.examples == ["aqe/v/0", "aqe/v/1", "aqe/v/2", "aqe/v/3", "aqe/v/4", "aqe/v/ttl"]
    assert (await verify(sqlite_memory, other_sqlite, prefix="aqe/v/5")).ok


async def test_migrate_refuses_bad_arguments_before_any_io(
    sqlite_memory: Any, other_sqlite: Any
) -> None:
    await sqlite_memory.store("aqe/k", 1)
    with pytest.raises(InvalidArgumentError):
        await migrate(sqlite_memory, other_sqlite, batch_size=0)
    with pytest.raises(InvalidArgumentError):
        await migrate(sqlite_memory, other_sqlite, concurrency=0)
    with pytest.raises(InvalidKeyError):
        await migrate(sqlite_memory, other_sqlite, prefix="aqe/\x01")
    with pytest.raises(InvalidArgumentError, match="same store"):
        await migrate(sqlite_memory, sqlite_memory)
    foreign = PostgresMemory(other_sqlite.engine, namespace="qe/")
    with pytest.raises(InvalidArgumentError, match="namespace"):
        await migrate(sqlite_memory, foreign)
    assert await other_sqlite.list_keys() == []


@pytest.mark.redis
@pytest.mark.postgres
async def test_migrating_into_a_cached_store_invalidates_its_cache(
    sqlite_memory: Any, cached_memory: Any
) -> None:
    await cached_memory.store("aqe/c/key", "old")
    assert await cached_memory.retrieve("aqe/c/key") == "old"  # now a cache record
    await sqlite_memory.store("aqe/c/key", "new", partition="moved")
    assert (await migrate(sqlite_memory, cached_memory)).ok
    assert await cached_memory.retrieve("aqe/c/key") == "new"
    entry = await cached_memory.get_entry("aqe/c/key")
    assert entry is not None and entry.partition == "moved"


# -- export and import -------------------------------------------------------------------------


async def test_export_import_round_trip(pair: tuple[Any, Any], tmp_path: Path) -> None:
    source, target = pair
    await _seed(source)
    await source.store("aqe/gone", 1, ttl=0.2)
    await asyncio.sleep(0.3)
    before = await _state(source)
    path = tmp_path / "dump.jsonl"
    exported = await export_jsonl(source, path, batch_size=4)
    assert exported.entries == len(before)
    assert exported.bytes == path.stat().st_size
    # Only "\n" ends a line (str.splitlines would also split at the U+2028 inside a value).
    lines = path.read_text("utf-8").split("\n")[:-1]
    assert len(lines) == len(before)
    documents = [json.loads(line) for line in lines]
    assert [d["key"] for d in documents] == sorted(before)
    assert all(list(d) == list(FIELDS) for d in documents)
    assert '"value":0.30000000000000004' in path.read_text("utf-8")
    imported = await import_jsonl(target, path, batch_size=5)
    assert imported.lines == imported.entries == len(before)
    await _check_seeded(target, before)


async def test_export_line_format(sqlite_memory: Any) -> None:
    await sqlite_memory.store("aqe/f/a", {"x": 1.5}, ttl=50, partition="p", metadata={"m": None})
    await sqlite_memory.store("aqe/f/b", None)
    await sqlite_memory.store("aqe/g", "outside the prefix")
    out = io.BytesIO()
    summary = await export_entries(sqlite_memory, out, prefix="aqe/f/")
    first, second = out.getvalue().decode().split("\n")[:-1]
    assert summary.entries == 2 and summary.bytes == len(out.getvalue())
    a = json.loads(first)
    assert 45 < a.pop("ttl") <= 50
    assert a == {"key": "aqe/f/a", "value": {"x": 1.5}, "partition": "p", "metadata": {"m": None}}
    assert second == (
        '{"key":"aqe/f/b","value":null,"partition":"default","ttl":null,"metadata":{}}'
    )


async def test_import_ttl_counts_from_the_import(sqlite_memory: Any, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(
        '{"key":"aqe/i/a","value":1,"ttl":100}\n'
        "\n"
        '{"key":"aqe/i/b","value":{"deep":[1,2]},"partition":"p","metadata":null}\n'
        '{"key":"aqe/i/c","value":3,"ttl":100,"partition":"p"}\n'
        '{"key":"aqe/i/a","value":"last line wins"}\n',
        "utf-8",
    )
    summary = await import_jsonl(sqlite_memory, path, batch_size=2)
    assert (summary.lines, summary.entries) == (4, 4)
    assert await sqlite_memory.retrieve("aqe/i/a") == "last line wins"
    assert await sqlite_memory.ttl("aqe/i/a") is None
    ttl = await sqlite_memory.ttl("aqe/i/c")
    assert ttl is not None and 95 < ttl <= 100
    entry = await sqlite_memory.get_entry("aqe/i/b")
    assert entry is not None and entry.partition == "p" and entry.metadata == {}


class _Recording:
    """A target that records its write calls."""

    def __init__(self, memory: Any) -> None:
        self._memory = memory
        self.calls: list[tuple[str, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._memory, name)

    async def store_many(self, items: Any, ttl: Any = None, partition: str = "default") -> int:
        self.calls.append(("store_many", len(items)))
        result: int = await self._memory.store_many(items, ttl, partition)
        return result

    async def store(self, key: str, value: Any, *args: Any, **kwargs: Any) -> int:
        self.calls.append(("store", 1))
        result: int = await self._memory.store(key, value, *args, **kwargs)
        return result


async def test_import_batches_plain_entries_and_stores_the_rest(
    sqlite_memory: Any, tmp_path: Path
) -> None:
    path = tmp_path / "in.jsonl"
    with path.open("w", encoding="utf-8") as out:
        for n in range(2500):
            out.write(json.dumps({"key": f"aqe/b/{n:05}", "value": n}) + "\n")
        for n in range(3):
            out.write(json.dumps({"key": f"aqe/m/{n}", "value": n, "metadata": {"n": n}}) + "\n")
    target = _Recording(sqlite_memory)
    summary = await import_jsonl(target, path, batch_size=1000)
    assert summary.entries == 2503
    assert sorted(target.calls) == sorted(
        [("store_many", 1000), ("store_many", 1000), ("store_many", 500)] + [("store", 1)] * 3
    )
    assert (await sqlite_memory.get_stats())["total_keys"] == 2503
    assert (await sqlite_memory.get_entry("aqe/m/2")).metadata == {"n": 2}


GOOD = '{"key":"aqe/ok/%d","value":%d}'

MALFORMED = [
    pytest.param(b'{"key": "aqe/x", "value": }', SerializationError, "not valid JSON", id="json"),
    pytest.param(b'{"value": 1}', InvalidArgumentError, "missing field 'key'", id="no-key"),
    pytest.param(b'{"key": "aqe/x"}', InvalidArgumentError, "missing field 'value'", id="no-value"),
    pytest.param(
        b'{"key": "qe/x", "value": 1}',
        InvalidKeyError,
        "must start with 'aqe/' namespace",
        id="namespace",
    ),
    pytest.param(b'{"key": 7, "value": 1}', InvalidKeyError, "key must be a str", id="key-type"),
    pytest.param(b'{"key": "aqe/x", "value": 1, "ttl": 0}', InvalidTTLError, "ttl", id="ttl-0"),
    pytest.param(b'{"key": "aqe/x", "value": 1, "ttl": -5}', InvalidTTLError, "ttl", id="ttl<0"),
    pytest.param(b'{"key": "aqe/x", "value": 1, "ttl": "9"}', InvalidTTLError, "ttl", id="ttl-str"),
    pytest.param(b'{"key": "aqe/x", "value": NaN}', SerializationError, "NaN", id="nan"),
    pytest.param(
        b'{"key": "aqe/x", "value": 1, "metadata": {"w": -Infinity}}',
        SerializationError,
        "Infinity",
        id="infinity",
    ),
    pytest.param(
        b'{"key": "aqe/x", "value": 1, "metadata": [1]}', SerializationError, "metadata", id="meta"
    ),
    pytest.param(
        b'{"key": "aqe/x", "value": 1, "partition": ""}',
        InvalidPartitionError,
        "partition",
        id="partition",
    ),
    pytest.param(b'{"key": "aqe/x", "value": "\\u0000"}', SerializationError, "NUL", id="nul"),
    pytest.param(b"[1, 2]", InvalidArgumentError, "expected a JSON object", id="array"),
    pytest.param(
        b'{"key": "aqe/x", "value": 1, "tll": 5}', InvalidArgumentError, "'tll'", id="unknown"
    ),
    pytest.param(b'{"key": "aqe/\xff", "value": 1}', SerializationError, "UTF-8", id="utf8"),
]


@pytest.mark.parametrize(("bad", "error", "fragment"), MALFORMED)
async def test_malformed_file_is_refused_before_anything_is_written(
    sqlite_memory: Any, tmp_path: Path, bad: bytes, error: type[Exception], fragment: str
) -> None:
    await sqlite_memory.store("aqe/ok/1", "untouched", partition="mine")
    path = tmp_path / "bad.jsonl"
    good = "\n".join(GOOD % (n, n) for n in range(50)).encode()
    path.write_bytes(good + b"\n" + bad + b"\n" + (GOOD % (99, 99)).encode() + b"\n")
    before = await sqlite_memory.get_stats()
    with pytest.raises(error, match=fragment) as raised:
        await import_jsonl(sqlite_memory, path, batch_size=10)
    assert str(raised.value).startswith("line 51: ")
    after = await sqlite_memory.get_stats()
    assert (after["total_keys"], after["partitions"], after["size_bytes"]) == (
        before["total_keys"],
        before["partitions"],
        before["size_bytes"],
    )
    assert await sqlite_memory.retrieve("aqe/ok/1") == "untouched"
    with pytest.raises(error):
        await validate_jsonl(path)


async def test_malformed_file_leaves_every_backend_unchanged(memory: Any, tmp_path: Path) -> None:
    await memory.store("aqe/keep", {"v": 1}, ttl=100)
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(GOOD % (n, n) for n in range(30)) + '\n{"key":"bad","value":1}\n')
    before = await memory.get_stats()
    with pytest.raises(InvalidKeyError, match=r"^line 31: "):
        await import_jsonl(memory, path, batch_size=5)
    after = await memory.get_stats()
    assert (after["total_keys"], after["partitions"]) == (
        before["total_keys"],
        before["partitions"],
    )
    assert await memory.list_keys() == ["aqe/keep"]


def test_decode_line_names_the_line_and_keeps_the_type() -> None:
    assert decode_line("  \n", 3) is None
    record = decode_line('{"key":"x/k","value":[1.5],"ttl":2}', 9, namespace="x/")
    assert record is not None and (record.key, record.value, record.ttl) == ("x/k", [1.5], 2.0)
    with pytest.raises(InvalidKeyError, match=r"^line 4: .*must start with 'aqe/' namespace"):
        decode_line('{"key":"x/k","value":1}', 4)
    with pytest.raises(PersistenceError, match=r"^line 2: value is 12 bytes"):
        decode_line('{"key":"aqe/k","value":"0123456789"}', 2, max_value_bytes=10)


async def test_export_refuses_bad_arguments_and_leaves_no_file(
    sqlite_memory: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "exports"
    folder.mkdir()
    path = folder / "out.jsonl"
    with pytest.raises(InvalidArgumentError):
        await export_jsonl(sqlite_memory, path, batch_size=0)
    with pytest.raises(InvalidKeyError):
        await export_jsonl(sqlite_memory, path, prefix="aqe/\n")
    assert _names(folder) == []


class _Failing:
    """A source whose scan breaks down after its first entry (a lost server)."""

    def __init__(self, memory: Any) -> None:
        self._memory = memory

    def __getattr__(self, name: str) -> Any:
        return getattr(self._memory, name)

    async def _scan(self) -> AsyncIterator[Any]:
        async for entry in self._memory.scan():
            yield entry
            raise BackendUnavailableError("lost the server")

    def scan(self, prefix: str | None = None, *, batch_size: int = 1000) -> Any:
        return self._scan()


async def test_a_failed_export_keeps_the_previous_file(sqlite_memory: Any, tmp_path: Path) -> None:
    folder = tmp_path / "exports"
    folder.mkdir()
    path = folder / "out.jsonl"
    path.write_text("previous\n")
    await sqlite_memory.store_many({"aqe/k/1": 1, "aqe/k/2": 2})
    with pytest.raises(BackendUnavailableError):
        await export_jsonl(_Failing(sqlite_memory), path)
    assert path.read_text() == "previous\n"
    assert _names(folder) == ["out.jsonl"]


# -- streaming ---------------------------------------------------------------------------------


class _CountingScan:
    """A source that counts the entries its scan has yielded so far."""

    def __init__(self, memory: Any) -> None:
        self._memory = memory
        self.yielded = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._memory, name)

    async def _scan(self, prefix: str | None, batch_size: int) -> AsyncIterator[Any]:
        async for entry in self._memory.scan(prefix, batch_size=batch_size):
            self.yielded += 1
            yield entry

    def scan(self, prefix: str | None = None, *, batch_size: int = 1000) -> Any:
        return self._scan(prefix, batch_size)


class _Sink(io.RawIOBase):
    """A file that checks, at every write, that lines leave while the scan is running."""

    def __init__(self, source: _CountingScan) -> None:
        self.source = source
        self.lines = 0
        self.most_behind = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.lines += bytes(data).count(b"\n")
        self.most_behind = max(self.most_behind, self.source.yielded - self.lines)
        return len(data)


@pytest.mark.slow
async def test_export_and_import_of_20000_entries_stream(
    sqlite_memory: Any, other_sqlite: Any, tmp_path: Path
) -> None:
    payload = "x" * 400
    for start in range(0, 20_000, 5000):
        await sqlite_memory.store_many(
            {f"aqe/s/{n:06}": {"n": n, "pad": payload} for n in range(start, start + 5000)}
        )
    source = _CountingScan(sqlite_memory)
    sink = _Sink(source)
    summary = await export_entries(source, sink, batch_size=500)  # type: ignore[arg-type]
    assert summary.entries == sink.lines == 20_000
    assert sink.most_behind <= 1  # each line is written as its entry arrives

    path = tmp_path / "big.jsonl"
    tracemalloc.start()
    try:
        await export_jsonl(sqlite_memory, path, batch_size=500)
        _, export_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        imported = await import_jsonl(other_sqlite, path, batch_size=500)
        _, import_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    size = path.stat().st_size
    assert size > 8_000_000 and imported.entries == 20_000
    # Holding every entry (decoded values, encoded rows) takes several times the file's size;
    # a page is ~1/40 of it. The bound leaves room for coverage tracing and the read-ahead page.
    assert export_peak < size, (export_peak, size)
    assert import_peak < size, (import_peak, size)
    assert (await other_sqlite.get_stats())["total_keys"] == 20_000
    assert await other_sqlite.retrieve("aqe/s/019999") == {"n": 19999, "pad": payload}
