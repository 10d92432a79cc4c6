"""Argument validation shared by every backend (``lionagi_qe.backends.base.MemoryBase``).

All of it runs before any I/O, so it is tested on a bare ``MemoryBase``.
"""

from __future__ import annotations

import asyncio
import math
import types
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lionagi_qe.backends.base import (
    DEFAULT_MAX_VALUE_BYTES,
    EncodedItem,
    KeyRange,
    MemoryBase,
    entry_size,
)
from lionagi_qe.errors import (
    ClosedError,
    InvalidArgumentError,
    InvalidKeyError,
    InvalidPartitionError,
    InvalidPatternError,
    InvalidTTLError,
    SerializationError,
    ValueTooLargeError,
)


@pytest.fixture
def base() -> MemoryBase:
    return MemoryBase(namespace="aqe/")


# -- construction ------------------------------------------------------------------------------


def test_defaults() -> None:
    memory = MemoryBase()
    assert memory.namespace == "aqe/"
    assert memory.max_value_bytes == DEFAULT_MAX_VALUE_BYTES == 8 * 1024 * 1024


@pytest.mark.parametrize("namespace", ["", None, 5, "\U0010ffff", "\U0010ffff\U0010ffff"])
def test_bad_namespace(namespace: Any) -> None:
    with pytest.raises(InvalidKeyError):
        MemoryBase(namespace=namespace)


@pytest.mark.parametrize("size", [0, -1])
def test_bad_max_value_bytes(size: int) -> None:
    with pytest.raises(InvalidArgumentError):
        MemoryBase(max_value_bytes=size)


# -- single items ----------------------------------------------------------------------------


def test_key(base: MemoryBase) -> None:
    assert base._key("aqe/x") == "aqe/x"
    with pytest.raises(InvalidKeyError, match="must start with 'aqe/' namespace"):
        base._key("x")


def test_other_namespace() -> None:
    memory = MemoryBase(namespace="tenant/")
    assert memory._key("tenant/x") == "tenant/x"
    with pytest.raises(InvalidKeyError, match="must start with 'tenant/' namespace"):
        memory._key("aqe/x")


def test_item(base: MemoryBase) -> None:
    item = base._item("aqe/é", {"v": "中"})
    assert item == EncodedItem("aqe/é", '{"v":"中"}', entry_size("aqe/é", '{"v":"中"}'))
    assert item.size_bytes == len("aqe/é".encode()) + len('{"v":"中"}'.encode())


def test_item_checks_the_key_first(base: MemoryBase) -> None:
    with pytest.raises(InvalidKeyError):
        base._item("bad", math.nan)


def test_encode_honours_max_value_bytes() -> None:
    memory = MemoryBase(max_value_bytes=10)
    assert memory._encode("x" * 8) == '"xxxxxxxx"'
    with pytest.raises(ValueTooLargeError):
        memory._encode("x" * 9)
    with pytest.raises(ValueTooLargeError):
        memory._item("aqe/k", "é" * 5)  # 12 bytes of JSON


def test_encode_refuses_bad_values(base: MemoryBase) -> None:
    for value in (math.nan, "\x00", object()):
        with pytest.raises(SerializationError):
            base._encode(value)


# -- batches ------------------------------------------------------------------------------------


def test_items_from_a_mapping(base: MemoryBase) -> None:
    items = base._items({"aqe/a": 1, "aqe/b": [2], "aqe/c": None})
    assert [(i.key, i.value_json) for i in items] == [
        ("aqe/a", "1"),
        ("aqe/b", "[2]"),
        ("aqe/c", "null"),
    ]
    for item in items:
        assert item.size_bytes == entry_size(item.key, item.value_json)


def test_items_from_pairs(base: MemoryBase) -> None:
    pairs = [("aqe/b", 1), ["aqe/a", 2]]
    assert [i.key for i in base._items(pairs)] == ["aqe/b", "aqe/a"]
    generator = ((f"aqe/{n}", n) for n in range(3))
    assert [i.value_json for i in base._items(generator)] == ["0", "1", "2"]
    assert base._items([]) == []
    assert base._items({}) == []


def test_items_from_other_mappings(base: MemoryBase) -> None:
    ordered = OrderedDict([("aqe/z", 1), ("aqe/a", 2)])
    assert [i.key for i in base._items(ordered)] == ["aqe/z", "aqe/a"]
    proxy = types.MappingProxyType({"aqe/p": True})
    assert [(i.key, i.value_json) for i in base._items(proxy)] == [("aqe/p", "true")]


def test_items_last_value_of_a_repeated_key_wins(base: MemoryBase) -> None:
    pairs = [("aqe/a", 1), ("aqe/b", 2), ("aqe/c", 3), ("aqe/a", 4), ("aqe/a", 5)]
    items = base._items(pairs)
    assert len(items) == 3
    values = {i.key: i.value_json for i in items}
    assert values == {"aqe/a": "5", "aqe/b": "2", "aqe/c": "3"}
    order = [i.key for i in items]
    assert order.index("aqe/b") < order.index("aqe/c")  # distinct keys keep their order


@given(
    st.lists(
        st.tuples(st.sampled_from(["aqe/a", "aqe/b", "aqe/c", "aqe/d"]), st.integers()),
        max_size=12,
    )
)
def test_items_dedup_property(pairs: list[tuple[str, int]]) -> None:
    items = MemoryBase()._items(pairs)
    expected = dict(pairs)  # last wins
    assert {i.key: int(i.value_json) for i in items} == expected
    assert len(items) == len(expected)


@pytest.mark.parametrize(
    "items",
    [
        "aqe/a",
        b"aqe/a",
        [("aqe/a",)],
        [("aqe/a", 1, 2)],
        ["ab"],  # a 2-character string is not a pair
        [{"aqe/a": 1}],
        [None],
        [5],
    ],
)
def test_items_bad_shapes(base: MemoryBase, items: Any) -> None:
    with pytest.raises(InvalidArgumentError):
        base._items(items)


def test_items_bad_keys_and_values(base: MemoryBase) -> None:
    with pytest.raises(InvalidKeyError):
        base._items({"x": 1})
    with pytest.raises(InvalidKeyError):
        base._items([(1, 1)])
    with pytest.raises(SerializationError):
        base._items([("aqe/a", 1), ("aqe/b", math.inf)])
    with pytest.raises(ValueTooLargeError):
        MemoryBase(max_value_bytes=4)._items({"aqe/a": "12345"})


@pytest.mark.parametrize("method", ["_items", "_keys"])
@pytest.mark.parametrize("arg", [None, 5])
def test_non_iterables_raise_invalid_argument_error(
    base: MemoryBase, method: str, arg: Any
) -> None:
    with pytest.raises(InvalidArgumentError):
        getattr(base, method)(arg)


def test_keys(base: MemoryBase) -> None:
    assert base._keys(["aqe/b", "aqe/a", "aqe/b"]) == ["aqe/b", "aqe/a"]
    assert base._keys(iter(["aqe/x"])) == ["aqe/x"]
    assert base._keys(("aqe/t",)) == ["aqe/t"]
    assert base._keys({"aqe/s"}) == ["aqe/s"]
    assert base._keys([]) == []


@pytest.mark.parametrize("keys", ["aqe/a", b"aqe/a"])
def test_keys_rejects_a_bare_string(base: MemoryBase, keys: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="not a single str"):
        base._keys(keys)


def test_keys_validates_each_key(base: MemoryBase) -> None:
    with pytest.raises(InvalidKeyError):
        base._keys(["aqe/a", "b"])
    with pytest.raises(InvalidKeyError):
        base._keys(["aqe/a", None])


# -- scalar arguments ---------------------------------------------------------------------------


def test_ttl_helpers() -> None:
    assert MemoryBase._ttl(None) is None
    assert MemoryBase._ttl(5) == 5.0
    assert MemoryBase._required_ttl(0.5) == 0.5
    for bad in (0, -1, math.nan, True, "5"):
        with pytest.raises(InvalidTTLError):
            MemoryBase._ttl(bad)
    with pytest.raises(InvalidTTLError):
        MemoryBase._required_ttl(None)


def test_partition_helper() -> None:
    assert MemoryBase._partition("default") == "default"
    for bad in ("", None, "p" * 65, "a\tb"):
        with pytest.raises(InvalidPartitionError):
            MemoryBase._partition(bad)


def test_metadata_helper() -> None:
    assert MemoryBase._metadata(None) == "{}"
    assert MemoryBase._metadata({"a": 1}) == '{"a":1}'
    with pytest.raises(SerializationError):
        MemoryBase._metadata(["a"])


def test_conditions() -> None:
    assert MemoryBase._conditions(False, None) is None
    assert MemoryBase._conditions(True, None) is None
    assert MemoryBase._conditions(False, 1) == 1
    assert MemoryBase._conditions(False, 2**40) == 2**40


@pytest.mark.parametrize(
    ("if_absent", "expected_version"),
    [
        (None, None),
        (1, None),
        ("yes", None),
        (False, 0),
        (False, -1),
        (False, True),
        (False, 1.0),
        (False, "1"),
        (True, 1),  # contradictory
    ],
)
def test_bad_conditions(if_absent: Any, expected_version: Any) -> None:
    with pytest.raises(InvalidArgumentError):
        MemoryBase._conditions(if_absent, expected_version)


@pytest.mark.parametrize("delta", [1, -1, 0, 2**63 - 1, -(2**63), 0.5, -1e300, 1e308])
def test_good_deltas(delta: float) -> None:
    assert MemoryBase._delta(delta) == delta
    assert type(MemoryBase._delta(delta)) is type(delta)


@pytest.mark.parametrize(
    "delta", [True, False, 2**63, -(2**63) - 1, 10**30, math.nan, math.inf, -math.inf, "1", None]
)
def test_bad_deltas(delta: Any) -> None:
    with pytest.raises(InvalidArgumentError):
        MemoryBase._delta(delta)


@pytest.mark.parametrize("limit", [None, 0, 1, 10**9])
def test_good_limits(limit: int | None) -> None:
    assert MemoryBase._limit(limit) == limit


@pytest.mark.parametrize("limit", [-1, True, False, 1.0, "5", math.inf])
def test_bad_limits(limit: Any) -> None:
    with pytest.raises(InvalidArgumentError):
        MemoryBase._limit(limit)


def test_as_number() -> None:
    assert MemoryBase._as_number(3) == 3
    assert MemoryBase._as_number(2.5) == 2.5
    for bad in (True, "3", None, [1]):
        with pytest.raises(InvalidArgumentError):
            MemoryBase._as_number(bad)


# -- key ranges -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("aqe/", KeyRange("aqe/", "aqe0")),
        ("aqe/x", KeyRange("aqe/x", "aqe/y")),
        ("aqe/a/b", KeyRange("aqe/a/b", "aqe/a/c")),
        ("aqe/\U0010ffff", KeyRange("aqe/\U0010ffff", "aqe0")),
        ("aqe/\ud7ff", KeyRange("aqe/\ud7ff", "aqe/\ue000")),
        ("", KeyRange("aqe/", "aqe0")),  # shorter than the namespace: the whole namespace
        ("a", KeyRange("aqe/", "aqe0")),
        ("aqe", KeyRange("aqe/", "aqe0")),
        ("b", None),  # above the namespace
        ("aqe0", None),
        ("aqf", None),
        ("aqd/", None),  # below it
        ("AQE/", None),
        ("x/aqe/", None),
    ],
)
def test_prefix_range(base: MemoryBase, prefix: str, expected: KeyRange | None) -> None:
    assert base._prefix_range(prefix) == expected


@given(prefix=st.text(alphabet="aqe/0xyz\U0010ffff", max_size=7), key=st.text(max_size=12))
def test_prefix_range_holds_exactly_the_namespaced_keys_with_the_prefix(
    prefix: str, key: str
) -> None:
    memory = MemoryBase()
    key = "aqe/" + key
    key_range = memory._prefix_range(prefix)
    inside = key_range is not None and key_range.lower <= key < key_range.upper
    assert inside is key.startswith(prefix)


def test_list_range(base: MemoryBase) -> None:
    assert base._list_range(None) == KeyRange("aqe/", "aqe0")
    assert base._list_range("aqe/k") == KeyRange("aqe/k", "aqe/l")
    assert base._list_range("zzz") is None
    with pytest.raises(InvalidKeyError):
        base._list_range(5)
    with pytest.raises(InvalidKeyError):
        base._list_range("aqe/\n")


def test_glob_plans_a_range(base: MemoryBase) -> None:
    glob, key_range = base._glob("aqe/agent/*")
    assert glob.matches("aqe/agent/1")
    assert key_range == KeyRange("aqe/agent/", "aqe/agent0")
    assert base._glob("*")[1] == KeyRange("aqe/", "aqe0")
    assert base._glob("aq?/*")[1] == KeyRange("aqe/", "aqe0")
    assert base._glob("other/*")[1] is None
    with pytest.raises(InvalidPatternError):
        base._glob("aqe/[")


def test_regex(base: MemoryBase) -> None:
    assert base._regex("agent/\\d").search("aqe/agent/1")
    with pytest.raises(InvalidPatternError):
        base._regex("(")


# -- entry size ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value_json", "size"),
    [
        ("aqe/a", "1", 6),
        ("aqe/é", '"é"', 6 + 4),
        ("aqe/\U0001f600", '"中"', 8 + 5),
        ("aqe/", "", 4),
    ],
)
def test_entry_size(key: str, value_json: str, size: int) -> None:
    assert entry_size(key, value_json) == size


@given(key=st.text(max_size=20), value=st.text(max_size=20))
def test_entry_size_is_utf8_bytes(key: str, value: str) -> None:
    assert entry_size(key, value) == len(key.encode()) + len(value.encode())


# -- lifecycle ------------------------------------------------------------------------------------


def test_close_is_final() -> None:
    memory = MemoryBase()
    memory._check_open()
    assert "open" in repr(memory)
    asyncio.run(memory.close())
    assert "closed" in repr(memory)
    with pytest.raises(ClosedError):
        memory._check_open()
    asyncio.run(memory.close())  # closing twice is harmless


def test_async_with_closes() -> None:
    async def scenario() -> MemoryBase:
        async with MemoryBase() as memory:
            memory._check_open()
        return memory

    memory = asyncio.run(scenario())
    with pytest.raises(ClosedError):
        memory._check_open()

    async def reenter() -> None:
        async with memory:
            pass

    with pytest.raises(ClosedError):
        asyncio.run(reenter())


def test_repr_names_the_namespace() -> None:
    assert repr(MemoryBase(namespace="tenant/")) == "<MemoryBase namespace='tenant/' open>"
