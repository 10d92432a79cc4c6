"""``AgentMemory``: the agent-side view of a memory backend, with the original key layout.

Keys (SPEC §6), as the original lionagi-qe agents wrote them:

- ``aqe/{agent_id}/{key}``: an agent's results (:meth:`AgentMemory.store_result`, partition
  ``agent_results``) and working memory (:meth:`AgentMemory.store_memory`, partition
  ``agent_data``); both share the agent's prefix, so :meth:`AgentMemory.get_memory` reads either.
- ``aqe/patterns/{agent_id}/{name}``: learned patterns (partition ``patterns``, never expire).

Reads of another agent's output go through :meth:`AgentMemory.retrieve_context` with the full
key, as in the original (an agent is handed the key of the context it should read).
"""

from __future__ import annotations

import re
from typing import Any

from lionagi_qe.backends.protocol import MemoryBackend
from lionagi_qe.errors import InvalidArgumentError

__all__ = ["AgentMemory"]

#: Characters an agent id may not hold: the key separator, glob specials and control characters.
_FORBIDDEN = re.compile(r"[/*?\[\]\\\x00-\x1f\x7f-\x9f]")
_MAX_AGENT_ID = 100
#: ``aqe/patterns/...`` holds learned patterns; an agent of that name would collide with it.
_RESERVED = frozenset({"patterns"})


def _validate_agent_id(agent_id: Any) -> str:
    if not isinstance(agent_id, str) or not agent_id or len(agent_id) > _MAX_AGENT_ID:
        raise InvalidArgumentError(
            f"agent_id must be a non-empty string of at most {_MAX_AGENT_ID} characters"
        )
    if _FORBIDDEN.search(agent_id):
        raise InvalidArgumentError(
            "agent_id may not contain '/', glob characters (* ? [ ] \\) or control characters"
        )
    if agent_id in _RESERVED:
        raise InvalidArgumentError(f"agent_id {agent_id!r} is reserved")
    return agent_id


class AgentMemory:
    """One agent's view of a shared :class:`~lionagi_qe.backends.protocol.MemoryBackend`.

    Args:
        backend: any memory backend (PostgreSQL, SQLite, Redis, cached); not owned, not closed.
        agent_id: the agent's id: non-empty, no ``/``, no glob characters, not ``patterns``.

    Raises:
        InvalidArgumentError: the agent id is invalid.
    """

    def __init__(self, backend: MemoryBackend, agent_id: str) -> None:
        self.backend = backend
        self.agent_id = _validate_agent_id(agent_id)
        self.prefix = f"aqe/{self.agent_id}/"
        self.patterns_prefix = f"aqe/patterns/{self.agent_id}/"

    def key_for(self, key: str) -> str:
        """The full key of ``key`` under this agent's prefix (``aqe/{agent_id}/{key}``)."""
        if not isinstance(key, str) or not key:
            raise InvalidArgumentError("key must be a non-empty string")
        return self.prefix + key

    async def store_result(
        self, key: str, value: Any, ttl: float | None = None, partition: str = "agent_results"
    ) -> None:
        """Store a result for other agents under ``aqe/{agent_id}/{key}``."""
        await self.backend.store(self.key_for(key), value, ttl=ttl, partition=partition)

    async def retrieve_context(self, key: str) -> Any:
        """The value of a full key (e.g. ``aqe/test-generator/tests``), or None if missing.

        Takes the full key, not one under this agent's prefix: context is what other agents
        wrote, and the original API handed agents the full keys to read.
        """
        return await self.backend.retrieve(key)

    async def get_memory(self, key: str, default: Any = None) -> Any:
        """The value of ``aqe/{agent_id}/{key}``, or ``default`` if missing."""
        return await self.backend.retrieve(self.key_for(key), default=default)

    async def store_memory(
        self, key: str, value: Any, ttl: float | None = None, partition: str = "agent_data"
    ) -> None:
        """Store working memory under ``aqe/{agent_id}/{key}``."""
        await self.backend.store(self.key_for(key), value, ttl=ttl, partition=partition)

    async def search_memory(self, pattern: str) -> dict[str, Any]:
        """Live entries whose full keys match the glob ``pattern`` (any agent's), key → value."""
        return await self.backend.search(pattern)

    async def store_learned_pattern(self, name: str, data: Any) -> None:
        """Store a learned pattern under ``aqe/patterns/{agent_id}/{name}``; it never expires."""
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError("pattern name must be a non-empty string")
        await self.backend.store(self.patterns_prefix + name, data, partition="patterns")

    async def get_learned_patterns(self) -> dict[str, Any]:
        """This agent's learned patterns, name → data."""
        found = await self.backend.search(self.patterns_prefix + "*")
        return {key[len(self.patterns_prefix) :]: value for key, value in found.items()}

    def __repr__(self) -> str:
        return f"<AgentMemory {self.agent_id!r} on {type(self.backend).__name__}>"
