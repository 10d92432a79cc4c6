"""The memory contract, part 5: bad input gets a typed error before any I/O and changes nothing."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from lionagi_qe import (
    InvalidArgumentError,
    InvalidKeyError,
    PersistenceError,
    SerializationError,
    ValueTooLargeError,
)

pytestmark = pytest.mark.integration


class Opaque:
    pass


BAD_VALUES = [
    float("nan"),
    float("inf"),
    -float("inf"),
    {"x": [1, float("nan")]},
    "nul\x00byte",
    {"k": ["deep", {"s": "a\x00"}]},
    {"nul\x00key": 1},
    Opaque(),
    {"fn": print},
    object(),
    "\ud800",
]


@pytest.fixture
async def baseline(memory: Any) -> dict[str, Any]:
    await memory.store("aqe/test/existing", {"v": 1}, partition="kept")
    return await memory.get_stats()


async def assert_unchanged(memory: Any, before: dict[str, Any]) -> None:
    after = await memory.get_stats()
    for field in ("total_keys", "total_expired", "partitions", "size_bytes"):
        assert after[field] == before[field], field
    assert await memory.retrieve("aqe/test/existing") == {"v": 1}


@pytest.mark.parametrize("value", BAD_VALUES, ids=lambda v: type(v).__name__)
async def test_unserialisable_values(memory: Any, baseline: dict[str, Any], value: Any) -> None:
    with pytest.raises(SerializationError) as info:
        await memory.store("aqe/test/existing", value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, PersistenceError)
    with pytest.raises(SerializationError):
        await memory.store_many({"aqe/test/new-a": 1, "aqe/test/new-b": value})
    await assert_unchanged(memory, baseline)


async def test_value_too_large(memory: Any, baseline: dict[str, Any]) -> None:
    limit = memory.max_value_bytes
    with pytest.raises(ValueTooLargeError):
        await memory.store("aqe/test/existing", "x" * limit)
    with pytest.raises(ValueTooLargeError):
        await memory.store_many({"aqe/test/new": "é" * (limit // 2)})
    await assert_unchanged(memory, baseline)


async def test_value_at_the_limit_is_accepted(memory: Any) -> None:
    limit = memory.max_value_bytes
    value = "x" * (limit - 2)  # two quote characters make it exactly the limit
    await memory.store("aqe/test/at-limit", value)
    assert await memory.retrieve("aqe/test/at-limit") == value


@pytest.mark.parametrize(
    "key",
    [
        None,
        42,
        b"aqe/bytes",
        "aqe/" + "k" * 252,
        "aqe/tab\tkey",
        "aqe/new\nline",
        "aqe/\x7f",
        "aqe/\ud800",
    ],
    ids=repr,
)
async def test_bad_keys(memory: Any, baseline: dict[str, Any], key: Any) -> None:
    with pytest.raises(InvalidKeyError):
        await memory.store(key, 1)
    with pytest.raises(InvalidKeyError):
        await memory.retrieve(key)
    with pytest.raises(InvalidKeyError):
        await memory.store_many([("aqe/test/fine", 1), (key, 2)])
    await assert_unchanged(memory, baseline)


async def test_key_of_255_chars_is_fine(memory: Any) -> None:
    key = "aqe/" + "k" * 251
    await memory.store(key, 1)
    assert await memory.retrieve(key) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"expected_version": 0},
        {"expected_version": -1},
        {"expected_version": "1"},
        {"expected_version": True},
        {"if_absent": True, "expected_version": 1},
        {"if_absent": "yes"},
        {"metadata": ["not", "a", "dict"]},
        {"metadata": {1: "int key"}},
        {"metadata": {"nan": float("nan")}},
    ],
)
async def test_bad_store_arguments(
    memory: Any, baseline: dict[str, Any], kwargs: dict[str, Any]
) -> None:
    with pytest.raises(ValueError):
        await memory.store("aqe/test/existing", 2, **kwargs)
    await assert_unchanged(memory, baseline)


@pytest.mark.parametrize("delta", [True, "1", None, float("nan"), float("inf"), 2**63])
async def test_bad_increment(memory: Any, baseline: dict[str, Any], delta: Any) -> None:
    with pytest.raises(InvalidArgumentError):
        await memory.increment("aqe/test/counter", delta)
    await assert_unchanged(memory, baseline)


@pytest.mark.parametrize(("start", "delta"), [(2**63 - 1, 1), (-(2**63), -1), (2**62, 2**62)])
async def test_increment_stays_64_bit(memory: Any, start: int, delta: int) -> None:
    await memory.store("aqe/test/big", start)
    with pytest.raises(SerializationError):
        await memory.increment("aqe/test/big", delta)
    assert await memory.retrieve("aqe/test/big") == start
    assert await memory.increment("aqe/test/big", 0) == start


async def test_increment_of_non_number(memory: Any, baseline: dict[str, Any]) -> None:
    for value in ({"v": 1}, "12", None, True, [1]):
        await memory.store("aqe/test/notnum", value)
        with pytest.raises(SerializationError):
            await memory.increment("aqe/test/notnum", 1)
        assert await memory.retrieve("aqe/test/notnum") == value


@pytest.mark.parametrize(
    "items", ["aqe/test/str", [("aqe/test/a", 1, 2)], [["aqe/test/a"]], [42], None]
)
async def test_bad_store_many_shapes(memory: Any, baseline: dict[str, Any], items: Any) -> None:
    with pytest.raises((InvalidArgumentError, TypeError)):
        await memory.store_many(items)
    await assert_unchanged(memory, baseline)


async def test_bad_retrieve_many(memory: Any) -> None:
    with pytest.raises(InvalidArgumentError):
        await memory.retrieve_many("aqe/test/a-single-string")


async def test_expire_requires_a_positive_ttl(memory: Any, baseline: dict[str, Any]) -> None:
    for ttl in (None, 0, -5):
        with pytest.raises(ValueError):
            await memory.expire("aqe/test/existing", ttl)
    assert await memory.ttl("aqe/test/existing") is None
    await assert_unchanged(memory, baseline)


@dataclasses.dataclass
class Holder:
    inner: Any


async def test_nested_unserialisable_in_dataclass(memory: Any, baseline: dict[str, Any]) -> None:
    with pytest.raises(SerializationError):
        await memory.store("aqe/test/existing", Holder(inner=Opaque()))
    await assert_unchanged(memory, baseline)
