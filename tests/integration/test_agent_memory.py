"""AgentMemory on every backend: methods, key layout, partitions and hand-off (SPEC §6)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lionagi_qe.coordination import AgentMemory
from lionagi_qe.errors import InvalidArgumentError

pytestmark = [pytest.mark.integration]


async def test_store_result_layout_and_partition(memory: Any) -> None:
    agent = AgentMemory(memory, "test-generator")
    await agent.store_result("tests", {"count": 3})
    entry = await memory.get_entry("aqe/test-generator/tests")
    assert entry is not None
    assert entry.value == {"count": 3} and entry.partition == "agent_results"
    assert await memory.ttl("aqe/test-generator/tests") is None
    await agent.store_result("custom", 1, partition="elsewhere")
    assert (await memory.get_entry("aqe/test-generator/custom")).partition == "elsewhere"


async def test_store_result_ttl(memory: Any) -> None:
    agent = AgentMemory(memory, "a1")
    await memory.exists("aqe/a1/warm-up")  # connect first: a loaded machine, a cluster to find
    await agent.store_result("short", "x", ttl=0.6)
    ttl = await memory.ttl("aqe/a1/short")
    assert ttl is not None and 0 < ttl <= 0.6
    await asyncio.sleep(0.75)
    assert await agent.get_memory("short", default="gone") == "gone"


async def test_store_memory_and_get_memory(memory: Any) -> None:
    agent = AgentMemory(memory, "a1")
    await agent.store_memory("state", {"step": 2})
    entry = await memory.get_entry("aqe/a1/state")
    assert entry is not None and entry.partition == "agent_data"
    assert await agent.get_memory("state") == {"step": 2}
    assert await agent.get_memory("missing") is None
    assert await agent.get_memory("missing", default=[]) == []
    await agent.store_memory("temp", 1, ttl=60)
    ttl = await memory.ttl("aqe/a1/temp")
    assert ttl is not None and 0 < ttl <= 60
    await agent.store_result("result", "r")
    assert await agent.get_memory("result") == "r"  # results share the agent's prefix


async def test_retrieve_context_takes_a_full_key(memory: Any) -> None:
    agent = AgentMemory(memory, "reader")
    await memory.store("aqe/shared/config", {"mode": "fast"})
    assert await agent.retrieve_context("aqe/shared/config") == {"mode": "fast"}
    assert await agent.retrieve_context("aqe/shared/none") is None


async def test_search_memory_globs_full_keys(memory: Any) -> None:
    one, two = AgentMemory(memory, "one"), AgentMemory(memory, "two")
    await one.store_result("r1", 1)
    await one.store_memory("m1", 2)
    await two.store_result("r1", 3)
    assert await one.search_memory("aqe/one/*") == {"aqe/one/r1": 1, "aqe/one/m1": 2}
    assert await one.search_memory("aqe/*/r1") == {"aqe/one/r1": 1, "aqe/two/r1": 3}
    assert await one.search_memory("aqe/nobody/*") == {}


async def test_learned_patterns(memory: Any) -> None:
    agent = AgentMemory(memory, "coverage-analyzer")
    other = AgentMemory(memory, "coverage-analyzer-2")
    assert await agent.get_learned_patterns() == {}
    await agent.store_learned_pattern("gap-first", {"weight": 0.8})
    await agent.store_learned_pattern("branch/deep", [1, 2])
    await other.store_learned_pattern("unrelated", True)
    entry = await memory.get_entry("aqe/patterns/coverage-analyzer/gap-first")
    assert entry is not None and entry.partition == "patterns" and entry.expires_at is None
    assert await memory.ttl("aqe/patterns/coverage-analyzer/gap-first") is None
    assert await agent.get_learned_patterns() == {
        "gap-first": {"weight": 0.8},
        "branch/deep": [1, 2],
    }
    assert await other.get_learned_patterns() == {"unrelated": True}
    # A new instance of the same agent reads what the old one learned.
    assert await AgentMemory(memory, "coverage-analyzer").get_learned_patterns() == {
        "gap-first": {"weight": 0.8},
        "branch/deep": [1, 2],
    }


async def test_two_agents_hand_off_results(memory: Any) -> None:
    generator = AgentMemory(memory, "test-generator")
    executor = AgentMemory(memory, "test-executor")
    await generator.store_result("plan", {"tests": ["t1", "t2"]})
    plan = await executor.retrieve_context("aqe/test-generator/plan")
    outcome = dict.fromkeys(plan["tests"], "passed")
    await executor.store_result("results", outcome)
    assert await generator.retrieve_context("aqe/test-executor/results") == {
        "t1": "passed",
        "t2": "passed",
    }
    assert await executor.get_memory("plan") is None  # its own prefix holds no plan


@pytest.mark.parametrize(
    "agent_id", ["", "a/b", "a*", "a?", "a[1]", "a\\b", "a\nb", "patterns", "x" * 101, 7, None]
)
def test_invalid_agent_id(agent_id: Any) -> None:
    with pytest.raises(InvalidArgumentError):
        AgentMemory(object(), agent_id)  # type: ignore[arg-type]


def test_empty_keys_are_refused() -> None:
    agent = AgentMemory(object(), "a1")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        agent.key_for("")
