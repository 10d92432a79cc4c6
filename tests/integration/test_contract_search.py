"""The memory contract, part 3: glob and regex search, listing, ordering."""

from __future__ import annotations

import re
from typing import Any

import pytest

from lionagi_qe import InvalidPatternError
from lionagi_qe.keys import compile_glob

pytestmark = pytest.mark.integration

KEYS = [
    "aqe/agent/gen-1/result",
    "aqe/agent/gen-2/result",
    "aqe/agent/gen-10/result",
    "aqe/agent/exec-1/result",
    "aqe/agent/gen-1/plan",
    "aqe/fleet/status",
    "aqe/odd/100%",
    "aqe/odd/1000",
    "aqe/odd/a_b",
    "aqe/odd/axb",
    "aqe/odd/star*key",
    "aqe/odd/starXkey",
    "aqe/odd/q?",
    "aqe/odd/br[x]",
    "aqe/odd/back\\slash",
    "aqe/odd/Upper",
    "aqe/odd/upper",
    "aqe/odd/é",
    "aqe/odd/z",
    "aqe/odd/𝄞",
]


@pytest.fixture
async def seeded(memory: Any) -> Any:
    await memory.store_many({key: {"key": key} for key in KEYS})
    await memory.store("aqe/null/value", None)
    return memory


def expected(pattern: str) -> list[str]:
    glob = compile_glob(pattern)
    return sorted(k for k in [*KEYS, "aqe/null/value"] if glob.matches(k))


@pytest.mark.parametrize(
    ("pattern", "keys"),
    [
        ("aqe/agent/gen-1/*", ["aqe/agent/gen-1/plan", "aqe/agent/gen-1/result"]),
        ("aqe/agent/*/result", None),
        ("aqe/agent/gen-?/result", ["aqe/agent/gen-1/result", "aqe/agent/gen-2/result"]),
        ("aqe/agent/gen-[12]/result", ["aqe/agent/gen-1/result", "aqe/agent/gen-2/result"]),
        ("aqe/agent/gen-[!1]/result", ["aqe/agent/gen-2/result"]),
        ("aqe/agent/gen-[0-9][0-9]/result", ["aqe/agent/gen-10/result"]),
        ("aqe/*", None),
        ("*", None),
        ("aqe/odd/100%", ["aqe/odd/100%"]),
        ("aqe/odd/a_b", ["aqe/odd/a_b"]),
        ("aqe/odd/star\\*key", ["aqe/odd/star*key"]),
        ("aqe/odd/star*key", ["aqe/odd/star*key", "aqe/odd/starXkey"]),
        ("aqe/odd/q\\?", ["aqe/odd/q?"]),
        ("aqe/odd/br\\[x]", ["aqe/odd/br[x]"]),
        ("aqe/odd/back\\\\slash", ["aqe/odd/back\\slash"]),
        ("aqe/odd/[Uu]pper", ["aqe/odd/Upper", "aqe/odd/upper"]),
        ("aqe/odd/upper", ["aqe/odd/upper"]),
        ("aqe/odd/?", ["aqe/odd/z", "aqe/odd/é", "aqe/odd/𝄞"]),
        ("aqe/odd/[]x]", []),
        ("aqe/odd/[a-z]", ["aqe/odd/z"]),
        ("aqe?agent?gen-1?plan", ["aqe/agent/gen-1/plan"]),
        ("aqe/agent", []),
        ("other/*", []),
        ("aqe/null/*", ["aqe/null/value"]),
    ],
)
async def test_glob(seeded: Any, pattern: str, keys: list[str] | None) -> None:
    want = expected(pattern) if keys is None else keys
    assert want == expected(pattern), "test table disagrees with the reference matcher"
    result = await seeded.search(pattern)
    assert list(result) == want
    for key in want:
        assert result[key] == (None if key == "aqe/null/value" else {"key": key})


async def test_percent_and_underscore_never_widen(seeded: Any) -> None:
    assert list(await seeded.search("aqe/odd/a_b")) == ["aqe/odd/a_b"]
    assert list(await seeded.search("aqe/odd/%")) == []
    assert list(await seeded.search("aqe/odd/1000%")) == []
    assert await seeded.list_keys("aqe/odd/a_") == ["aqe/odd/a_b"]
    assert await seeded.list_keys("aqe/odd/%") == []
    assert await seeded.list_keys("aqe/odd/star*") == ["aqe/odd/star*key"]


async def test_results_in_code_point_order(seeded: Any) -> None:
    keys = list(await seeded.search("aqe/odd/*"))
    assert keys == sorted(keys)
    assert keys.index("aqe/odd/Upper") < keys.index("aqe/odd/upper")
    assert keys[-3:] == ["aqe/odd/z", "aqe/odd/é", "aqe/odd/𝄞"]


async def test_limit(seeded: Any) -> None:
    full = list(await seeded.search("aqe/agent/*"))
    assert list(await seeded.search("aqe/agent/*", limit=2)) == full[:2]
    assert await seeded.search("aqe/agent/*", limit=0) == {}
    assert list(await seeded.search("aqe/odd/[a-z]*", limit=1)) == ["aqe/odd/a_b"]
    assert list(await seeded.search("gen", regex=True, limit=1)) == full[:1]


@pytest.mark.parametrize(
    "pattern",
    [r"gen-\d+/result$", r"^aqe/odd/[A-Z]", r"%", r"a_b", r"\*", r"(?i)UPPER", r"𝄞", "."],
)
async def test_regex_is_python_re_search(seeded: Any, pattern: str) -> None:
    compiled = re.compile(pattern)
    want = sorted(k for k in [*KEYS, "aqe/null/value"] if compiled.search(k))
    assert list(await seeded.search(pattern, regex=True)) == want


@pytest.mark.parametrize("pattern", ["aqe/[abc", "aqe/x\\", "aqe/[", "aqe/[!", "aqe/[z-a]"])
async def test_malformed_glob(memory: Any, pattern: str) -> None:
    with pytest.raises(InvalidPatternError):
        await memory.search(pattern)


@pytest.mark.parametrize("pattern", ["(", "[a-", "*x", "(?P<"])
async def test_malformed_regex(memory: Any, pattern: str) -> None:
    with pytest.raises(InvalidPatternError):
        await memory.search(pattern, regex=True)


async def test_search_rejects_non_string_and_bad_limit(memory: Any) -> None:
    with pytest.raises(InvalidPatternError):
        await memory.search(123)
    with pytest.raises(ValueError):
        await memory.search("aqe/*", limit=-1)


async def test_list_keys_prefix_is_literal_and_sorted(seeded: Any) -> None:
    assert await seeded.list_keys("aqe/agent/gen-1") == [
        "aqe/agent/gen-1/plan",
        "aqe/agent/gen-1/result",
        "aqe/agent/gen-10/result",
    ]
    everything = await seeded.list_keys()
    assert everything == sorted([*KEYS, "aqe/null/value"])
    assert await seeded.list_keys("aqe/") == everything
    assert await seeded.list_keys("aq") == everything
    assert await seeded.list_keys("aqe/nothing-here") == []
    assert await seeded.list_keys("zzz") == []
    assert await seeded.list_keys("aqe/odd/?") == []
    assert await seeded.list_keys("aqe/odd/[") == []


async def test_search_of_fifty_in_many(memory: Any) -> None:
    items = {f"aqe/test/agent-{i % 40:02d}/item-{i:05d}": i for i in range(2000)}
    await memory.store_many(items)
    found = await memory.search("aqe/test/agent-07/*")
    assert len(found) == 50
    assert all(key.startswith("aqe/test/agent-07/") for key in found)
    assert list(found) == sorted(found)
