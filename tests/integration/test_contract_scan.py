"""The memory contract: ``scan`` streams every live entry, in key order, page by page."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lionagi_qe import ClosedError, InvalidArgumentError, InvalidKeyError
from lionagi_qe.backends.protocol import ScannedEntry

pytestmark = pytest.mark.integration


async def _scan(memory: Any, prefix: str | None = None, **options: Any) -> list[ScannedEntry]:
    return [entry async for entry in memory.scan(prefix, **options)]


async def test_empty_store_scans_nothing(memory: Any) -> None:
    assert await _scan(memory) == []
    assert await _scan(memory, "aqe/nothing/", batch_size=1) == []


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7, 1000])
async def test_every_live_entry_once_in_code_point_order(memory: Any, batch_size: int) -> None:
    keys = [
        "aqe/s/b",
        "aqe/s/a",
        "aqe/s/\u00e9t\u00e9",
        "aqe/s/Z",
        "aqe/s/a/b",
        "aqe/s/\U0001f600",
        "aqe/s/\uffff",
    ]
    for number, key in enumerate(keys):
        await memory.store(key, number)
    entries = await _scan(memory, batch_size=batch_size)
    assert [entry.key for entry in entries] == sorted(keys)
    assert {entry.key: entry.value for entry in entries} == {k: n for n, k in enumerate(keys)}


async def test_entries_carry_partition_metadata_version_and_server_ttl(memory: Any) -> None:
    await memory.store("aqe/s/plain", None)
    rich_value = {"f": 0.1 + 0.2, "big": 1e16, "list": [1, "x", True, None]}
    for _ in range(2):
        await memory.store(
            "aqe/s/rich", rich_value, ttl=60, partition="results", metadata={"agent": "gen-1"}
        )
    plain, rich = await _scan(memory, "aqe/s/")
    assert plain.key == "aqe/s/plain"
    assert plain.value is None
    assert plain.partition == "default"
    assert plain.metadata == {}
    assert plain.version == 1
    assert plain.expires_at is None and plain.ttl is None
    assert rich.value == {"f": 0.30000000000000004, "big": 1e16, "list": [1, "x", True, None]}
    assert isinstance(rich.value["big"], float)
    assert rich.partition == "results"
    assert rich.metadata == {"agent": "gen-1"}
    assert rich.version == 2
    assert rich.expires_at is not None
    assert rich.ttl is not None and 55 < rich.ttl <= 60
    entry = await memory.get_entry("aqe/s/rich")
    assert entry is not None and entry.expires_at == rich.expires_at


async def test_expired_entries_are_never_scanned(memory: Any) -> None:
    # Expired members between live ones, at page boundaries: a scan that stops at the first
    # short page of *live* entries would lose the tail.
    for letter in "abcdefgh":
        ttl = 0.3 if letter in "bcdg" else None
        await memory.store(f"aqe/s/{letter}", letter, ttl=ttl)
    await asyncio.sleep(0.6)
    for size in (1, 2, 3, 100):
        entries = await _scan(memory, batch_size=size)
        assert [entry.value for entry in entries] == ["a", "e", "f", "h"], size


async def test_prefix_is_literal_and_validated(memory: Any) -> None:
    for key in ("aqe/p%/x", "aqe/p_/x", "aqe/p*/x", "aqe/pq/x", "aqe/p/x"):
        await memory.store(key, key)
    assert [e.key for e in await _scan(memory, "aqe/p%")] == ["aqe/p%/x"]
    assert [e.key for e in await _scan(memory, "aqe/p_")] == ["aqe/p_/x"]
    assert [e.key for e in await _scan(memory, "aqe/p*")] == ["aqe/p*/x"]
    assert [e.key for e in await _scan(memory, "aqe/p/")] == ["aqe/p/x"]
    assert len(await _scan(memory, "aqe/p")) == 5
    assert len(await _scan(memory, "")) == 5  # the namespace starts with the prefix
    assert len(await _scan(memory, "aq")) == 5
    assert await _scan(memory, "other/") == []
    assert await _scan(memory, "aqe/q") == []
    with pytest.raises(InvalidKeyError):
        memory.scan("aqe/\x00")
    with pytest.raises(InvalidKeyError):
        memory.scan(42)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "10", None])
async def test_bad_batch_size_is_refused_when_called(memory: Any, bad: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        memory.scan("aqe/", batch_size=bad)


async def test_keyset_pages_neither_repeat_nor_skip_under_writes(memory: Any) -> None:
    for letter in "bdfhj":
        await memory.store(f"aqe/k/{letter}", letter)
    seen: list[str] = []
    async for entry in memory.scan("aqe/k/", batch_size=2):
        seen.append(entry.value)
        if entry.value == "d":
            # Behind the cursor: an OFFSET scan would now yield "d" again. Ahead: it is seen.
            await memory.store("aqe/k/a", "a")
            await memory.store("aqe/k/c", "c")
            await memory.store("aqe/k/g", "g")
            await memory.delete("aqe/k/h")
    assert seen == ["b", "d", "f", "g", "j"]


async def test_breaking_off_a_scan_leaves_the_memory_usable(memory: Any) -> None:
    await memory.store_many({f"aqe/b/{n:03}": n for n in range(25)})
    scan = memory.scan("aqe/b/", batch_size=10)
    first = [(await anext(scan)).value for _ in range(12)]
    await scan.aclose()
    assert first == list(range(12))
    # Every page held its connection only while it was read.
    assert await memory.retrieve("aqe/b/024") == 24
    found = await memory.retrieve_many(f"aqe/b/{n:03}" for n in range(25))
    assert list(found.values()) == list(range(25))
    assert len(await _scan(memory, "aqe/b/", batch_size=10)) == 25


async def test_scan_of_a_closed_memory_raises(memory: Any) -> None:
    await memory.close()
    with pytest.raises(ClosedError):
        memory.scan()


async def test_scan_reads_the_store_not_a_cache(memory: Any) -> None:
    await memory.store("aqe/c/x", 1)
    assert await memory.retrieve("aqe/c/x") == 1  # a cached backend fills its record here
    await memory.store("aqe/c/x", 2, partition="p2", metadata={"m": 1})
    (entry,) = await _scan(memory, "aqe/c/")
    assert (entry.value, entry.partition, entry.metadata, entry.version) == (2, "p2", {"m": 1}, 2)
