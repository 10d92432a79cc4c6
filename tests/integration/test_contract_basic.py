"""The memory contract, part 1: store, retrieve, overwrite, delete, entries, versions, values.

Runs unchanged against every backend (the ``memory`` fixture is parametrized in conftest).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import uuid
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel

from lionagi_qe import MemoryBackend, MemoryEntry, VersionConflictError

pytestmark = pytest.mark.integration


class Verdict(enum.Enum):
    PASS = "pass"
    FAIL = "fail"


class TestResult(BaseModel):
    __test__ = False
    name: str
    passed: bool
    duration: float
    tags: list[str] = []


@dataclasses.dataclass
class Coverage:
    lines: int
    ratio: float


async def test_satisfies_protocol(memory: Any) -> None:
    assert isinstance(memory, MemoryBackend)


async def test_store_then_retrieve(memory: Any) -> None:
    assert await memory.store("aqe/test/basic", {"status": "ok"}) == 1
    assert await memory.retrieve("aqe/test/basic") == {"status": "ok"}


async def test_retrieve_missing_returns_none_or_default(memory: Any) -> None:
    assert await memory.retrieve("aqe/test/missing") is None
    assert await memory.retrieve("aqe/test/missing", default={"d": 1}) == {"d": 1}


async def test_overwrite_replaces_value_and_bumps_version(memory: Any) -> None:
    assert await memory.store("aqe/test/over", 1) == 1
    assert await memory.store("aqe/test/over", {"v": 2}) == 2
    assert await memory.store("aqe/test/over", [3]) == 3
    assert await memory.retrieve("aqe/test/over") == [3]


async def test_delete(memory: Any) -> None:
    await memory.store("aqe/test/del", "x")
    assert await memory.delete("aqe/test/del") is True
    assert await memory.retrieve("aqe/test/del") is None
    assert await memory.exists("aqe/test/del") is False
    assert await memory.delete("aqe/test/del") is False


async def test_exists(memory: Any) -> None:
    assert await memory.exists("aqe/test/ex") is False
    await memory.store("aqe/test/ex", None)
    assert await memory.exists("aqe/test/ex") is True


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -17,
        2**62,
        3.5,
        -0.0,
        1e-300,
        1.7976931348623157e308,
        0.1 + 0.2,
        "",
        "plain",
        "unicodé ✓ 𝄞 中文",
        'quote" back\\slash \\u0000 literal',
        [],
        {},
        [1, "two", None, [3.0, {"four": 4}]],
        {"nested": {"deep": {"deeper": [1, 2, {"x": None}]}}, "k": "v"},
        {"1": "numeric-looking key", "": "empty key"},
    ],
    ids=repr,
)
async def test_json_values_round_trip_exactly(memory: Any, value: Any) -> None:
    await memory.store("aqe/test/value", value)
    got = await memory.retrieve("aqe/test/value", default="MISSING")
    assert got == value
    assert type(got) is type(value)


async def test_float_precision_survives(memory: Any) -> None:
    values = [0.1, 1 / 3, 2.0, 1e16, 123456789.123456789, 5e-324]
    await memory.store("aqe/test/floats", values)
    got = await memory.retrieve("aqe/test/floats")
    assert got == values
    assert all(isinstance(item, float) for item in got)


async def test_rich_python_values_stored_in_json_form(memory: Any) -> None:
    when = dt.datetime(2026, 11, 24, 12, 30, tzinfo=dt.UTC)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    value = {
        "when": when,
        "day": dt.date(2026, 11, 24),
        "id": ident,
        "amount": Decimal("12.50"),
        "verdict": Verdict.PASS,
        "pair": (1, 2),
        "result": TestResult(name="t", passed=True, duration=0.5),
        "coverage": Coverage(lines=10, ratio=0.9),
    }
    await memory.store("aqe/test/rich", value)
    got = await memory.retrieve("aqe/test/rich")
    assert got == {
        "when": "2026-11-24T12:30:00Z",
        "day": "2026-11-24",
        "id": str(ident),
        "amount": "12.50",
        "verdict": "pass",
        "pair": [1, 2],
        "result": {"name": "t", "passed": True, "duration": 0.5, "tags": []},
        "coverage": {"lines": 10, "ratio": 0.9},
    }


async def test_retrieve_as_type_round_trips_models(memory: Any) -> None:
    result = TestResult(name="login", passed=False, duration=1.25, tags=["auth"])
    await memory.store("aqe/test/typed", result)
    assert await memory.retrieve("aqe/test/typed", as_type=TestResult) == result
    await memory.store("aqe/test/dc", Coverage(lines=3, ratio=0.5))
    assert await memory.retrieve("aqe/test/dc", as_type=Coverage) == Coverage(3, 0.5)
    await memory.store("aqe/test/list", [1, 2, 3])
    assert await memory.retrieve("aqe/test/list", as_type=list[int]) == [1, 2, 3]
    assert await memory.retrieve("aqe/test/nothing", as_type=TestResult) is None


async def test_get_entry_carries_metadata(memory: Any) -> None:
    await memory.store("aqe/test/entry", {"a": 1}, partition="agents", metadata={"by": "gen-1"})
    entry = await memory.get_entry("aqe/test/entry")
    assert isinstance(entry, MemoryEntry)
    assert entry.key == "aqe/test/entry"
    assert entry.value == {"a": 1}
    assert entry.partition == "agents"
    assert entry.version == 1
    assert entry.metadata == {"by": "gen-1"}
    assert entry.expires_at is None
    assert entry.created_at.tzinfo is not None
    assert entry.created_at == entry.updated_at
    with pytest.raises(Exception):  # noqa: B017 - frozen pydantic model
        entry.value = 2  # type: ignore[misc]
    assert await memory.get_entry("aqe/test/none") is None


async def test_get_entry_tracks_first_and_last_write(memory: Any) -> None:
    await memory.store("aqe/test/times", 1)
    first = await memory.get_entry("aqe/test/times")
    await memory.store("aqe/test/times", 2, metadata={"round": 2})
    second = await memory.get_entry("aqe/test/times")
    assert first is not None and second is not None
    assert second.created_at == first.created_at
    assert second.updated_at >= first.updated_at
    assert second.version == 2
    assert second.metadata == {"round": 2}


async def test_if_absent_writes_only_once(memory: Any) -> None:
    assert await memory.store("aqe/test/claim", "agent-1", if_absent=True) == 1
    with pytest.raises(VersionConflictError):
        await memory.store("aqe/test/claim", "agent-2", if_absent=True)
    assert await memory.retrieve("aqe/test/claim") == "agent-1"


async def test_expected_version_is_compare_and_set(memory: Any) -> None:
    version = await memory.store("aqe/test/cas", {"step": 1})
    assert await memory.store("aqe/test/cas", {"step": 2}, expected_version=version) == 2
    with pytest.raises(VersionConflictError):
        await memory.store("aqe/test/cas", {"step": "stale"}, expected_version=version)
    assert await memory.retrieve("aqe/test/cas") == {"step": 2}
    with pytest.raises(VersionConflictError):
        await memory.store("aqe/test/cas-missing", 1, expected_version=1)
    assert await memory.exists("aqe/test/cas-missing") is False


async def test_increment_creates_and_adds(memory: Any) -> None:
    assert await memory.increment("aqe/test/counter") == 1
    assert await memory.increment("aqe/test/counter", 5) == 6
    assert await memory.increment("aqe/test/counter", -10) == -4
    result = await memory.increment("aqe/test/counter", 0.5)
    assert result == -3.5 and isinstance(result, float)
    assert await memory.retrieve("aqe/test/counter") == -3.5


async def test_increment_int_stays_int_float_stays_float(memory: Any) -> None:
    value = await memory.increment("aqe/test/ints", 2)
    assert value == 2 and isinstance(value, int)
    await memory.store("aqe/test/flt", 2.0)
    value = await memory.increment("aqe/test/flt", 1)
    assert value == 3.0 and isinstance(value, float)
    assert await memory.retrieve("aqe/test/flt") == 3.0
    assert isinstance(await memory.retrieve("aqe/test/flt"), float)
    assert await memory.increment("aqe/test/sum", 0.1) == 0.1
    assert await memory.increment("aqe/test/sum", 0.2) == 0.1 + 0.2


async def test_increment_bumps_version(memory: Any) -> None:
    await memory.increment("aqe/test/v")
    await memory.increment("aqe/test/v")
    entry = await memory.get_entry("aqe/test/v")
    assert entry is not None and entry.version == 2


async def test_store_many_and_retrieve_many(memory: Any) -> None:
    items = {f"aqe/test/many/{i:03d}": {"i": i} for i in range(250)}
    assert await memory.store_many(items) == 250
    got = await memory.retrieve_many([*items, "aqe/test/many/missing"])
    assert got == items
    pairs = [("aqe/test/pairs/a", 1), ("aqe/test/pairs/b", None), ("aqe/test/pairs/a", 3)]
    assert await memory.store_many(pairs, partition="batch") == 2
    assert await memory.retrieve_many(["aqe/test/pairs/a", "aqe/test/pairs/b"]) == {
        "aqe/test/pairs/a": 3,
        "aqe/test/pairs/b": None,
    }
    entry = await memory.get_entry("aqe/test/pairs/b")
    assert entry is not None and entry.partition == "batch"
    assert await memory.store_many({}) == 0
    assert await memory.retrieve_many([]) == {}


async def test_store_many_overwrites_and_versions(memory: Any) -> None:
    await memory.store("aqe/test/sm/1", "old")
    await memory.store_many({"aqe/test/sm/1": "new", "aqe/test/sm/2": "fresh"})
    assert (await memory.get_entry("aqe/test/sm/1")).version == 2  # type: ignore[union-attr]
    assert (await memory.get_entry("aqe/test/sm/2")).version == 1  # type: ignore[union-attr]
    assert await memory.retrieve("aqe/test/sm/1") == "new"


async def test_large_value_below_limit(memory: Any) -> None:
    value = {"blob": "x" * 1_000_000, "items": list(range(1000))}
    await memory.store("aqe/test/large", value)
    assert await memory.retrieve("aqe/test/large") == value


async def test_async_context_manager_closes(memory: Any) -> None:
    async with memory as entered:
        assert entered is memory
        await memory.store("aqe/test/ctx", 1)
    from lionagi_qe import ClosedError

    with pytest.raises(ClosedError):
        await memory.retrieve("aqe/test/ctx")
    with pytest.raises(ClosedError):
        await memory.store("aqe/test/ctx", 2)
