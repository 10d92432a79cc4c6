"""Agent types, per-instance agent state, and patterns with running statistics."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from sqlalchemy import (
    Double,
    Executable,
    Integer,
    Table,
    Text,
    bindparam,
    cast,
    func,
    literal_column,
    select,
)
from sqlalchemy.sql.elements import BindParameter

from lionagi_qe.db.sql import server_now
from lionagi_qe.models.base import JSONDocument
from lionagi_qe.models.learning import AgentState, AgentType, Pattern
from lionagi_qe.repositories.learning_base import (
    Bind,
    LearningRepository,
    dialect_insert,
    json_text,
)

__all__ = [
    "AGENT_STATE_FIELDS",
    "AgentStateRepository",
    "AgentTypeRepository",
    "PatternRepository",
    "statements",
]

_at: Table = AgentType.__table__  # type: ignore[assignment]
_as: Table = AgentState.__table__  # type: ignore[assignment]
_p: Table = Pattern.__table__  # type: ignore[assignment]

#: Agent-state columns a caller may set, with their bind types (None keeps the stored value).
AGENT_STATE_FIELDS: dict[str, Any] = {
    "total_episodes": Integer(),
    "total_actions": Integer(),
    "successful_actions": Integer(),
    "total_reward": Double(),
    "epsilon": Double(),
    "learning_rate": Double(),
    "discount_factor": Double(),
}
_AGENT_STATE_FLOATS = (
    "total_reward",
    "success_rate",
    "epsilon",
    "learning_rate",
    "discount_factor",
)
_PATTERN_FLOATS = ("average_reward",)


def _empty_document() -> Any:
    return cast(literal_column("'{}'"), JSONDocument())


class _Statements:
    """Agent type, agent state and pattern statements for one dialect."""

    def __init__(self, dialect: str) -> None:
        insert = dialect_insert(dialect)
        now = server_now()
        agent_type = bindparam("agent_type", type_=Text())

        self.list_agent_types = select(
            _at.c.agent_type, _at.c.description, _at.c.created_at
        ).order_by(_at.c.agent_type)
        self.register_agent_type = (
            insert(_at)
            .values(
                agent_type=agent_type,
                description=bindparam("description", type_=Text()),
                created_at=now,
            )
            .on_conflict_do_nothing(index_elements=[_at.c.agent_type])
            .returning(_at.c.agent_type)
        )

        c = _as.c
        fields = {name: bindparam(name, type_=type_) for name, type_ in AGENT_STATE_FIELDS.items()}
        zero_defaults = {"total_episodes", "total_actions", "successful_actions", "total_reward"}
        state_data = json_text("state_data")
        fresh = insert(_as).values(
            agent_type=agent_type,
            agent_instance_id=bindparam("agent_instance_id", type_=Text()),
            state_data=func.coalesce(state_data, _empty_document()),
            created_at=now,
            updated_at=now,
            last_active_at=now,
            **{
                name: func.coalesce(param, 0) if name in zero_defaults else param
                for name, param in fields.items()
            },
        )
        self.update_agent_state = fresh.on_conflict_do_update(
            index_elements=[c.agent_type, c.agent_instance_id],
            set_={
                **{name: func.coalesce(param, c[name]) for name, param in fields.items()},
                "state_data": func.coalesce(state_data, c.state_data),
                "updated_at": fresh.excluded.updated_at,
                "last_active_at": fresh.excluded.last_active_at,
            },
        ).returning(*_as.c)
        self.get_agent_state = select(*_as.c).where(
            c.agent_type == agent_type,
            c.agent_instance_id == bindparam("agent_instance_id", type_=Text()),
        )

        p = _p.c
        pattern_columns = [col for col in _p.c if col.name != "id"]
        self.pattern_columns = (p.id.label("pattern_id"), *pattern_columns)
        by_name = (p.agent_type == agent_type, p.pattern_name == bindparam("pattern_name"))
        self.get_pattern = select(*self.pattern_columns).where(*by_name)
        self.record_pattern_use: dict[bool, Executable] = {}
        for rewarded in (False, True):
            reward: BindParameter[float] = bindparam("reward", type_=Double())
            pattern_data = json_text("pattern_data")
            use = insert(_p).values(
                agent_type=agent_type,
                pattern_name=bindparam("pattern_name", type_=Text()),
                pattern_type=bindparam("pattern_type", type_=Text()),
                pattern_data=func.coalesce(pattern_data, _empty_document()),
                usage_count=1,
                success_count=bindparam("success", type_=Integer()),
                failure_count=bindparam("failure", type_=Integer()),
                average_reward=reward if rewarded else 0.0,
                reward_count=1 if rewarded else 0,
                created_at=now,
                updated_at=now,
                last_used_at=now,
            )
            # Counts add under the row lock; the running mean folds one reward in:
            # avg + (r - avg) / (n + 1). The type and data of a pattern stay as first
            # recorded unless new data is given.
            changes: dict[str, Any] = {
                "usage_count": p.usage_count + 1,
                "success_count": p.success_count + use.excluded.success_count,
                "failure_count": p.failure_count + use.excluded.failure_count,
                "reward_count": p.reward_count + use.excluded.reward_count,
                "pattern_data": func.coalesce(pattern_data, p.pattern_data),
                "updated_at": use.excluded.updated_at,
                "last_used_at": use.excluded.last_used_at,
            }
            if rewarded:
                # Divide by a double, or SQLAlchemy casts the count to NUMERIC.
                count: Any = cast(p.reward_count + 1, Double())
                changes["average_reward"] = p.average_reward + (reward - p.average_reward) / count
            self.record_pattern_use[rewarded] = use.on_conflict_do_update(
                index_elements=[p.agent_type, p.pattern_name], set_=changes
            ).returning(*self.pattern_columns)


@lru_cache(maxsize=4)
def statements(dialect: str) -> _Statements:
    """The statements for ``dialect`` ("postgresql" or "sqlite"), built on first use."""
    return _Statements(dialect)


class AgentTypeRepository(LearningRepository):
    """The agent types every learning row references."""

    def __init__(self, bind: Bind, dialect: str) -> None:
        super().__init__(bind, dialect)
        self._sql = statements(dialect)

    async def all(self) -> list[dict[str, Any]]:
        """Every agent type, by name."""
        return await self._rows(self._sql.list_agent_types, {})

    async def register(self, agent_type: str, description: str | None) -> bool:
        """Add an agent type; False if it already existed (left unchanged)."""
        result = await self._execute(
            self._sql.register_agent_type, {"agent_type": agent_type, "description": description}
        )
        return result.first() is not None


class AgentStateRepository(LearningRepository):
    """Learning state per agent instance."""

    def __init__(self, bind: Bind, dialect: str) -> None:
        super().__init__(bind, dialect)
        self._sql = statements(dialect)

    async def update(
        self,
        agent_type: str,
        agent_instance_id: str,
        values: dict[str, Any],
        state_data: str | None,
    ) -> dict[str, Any]:
        """Create or update an instance's state: given ``values`` replace, missing ones stay."""
        params: dict[str, Any] = dict.fromkeys(AGENT_STATE_FIELDS)
        params.update(values)
        params.update(
            agent_type=agent_type, agent_instance_id=agent_instance_id, state_data=state_data
        )
        rows = await self._rows(self._sql.update_agent_state, params, _AGENT_STATE_FLOATS)
        return rows[0]

    async def get(self, agent_type: str, agent_instance_id: str) -> dict[str, Any] | None:
        """An instance's state, or None."""
        params = {"agent_type": agent_type, "agent_instance_id": agent_instance_id}
        rows = await self._rows(self._sql.get_agent_state, params, _AGENT_STATE_FLOATS)
        return rows[0] if rows else None


class PatternRepository(LearningRepository):
    """Named patterns with usage, success, failure counts and a running average reward."""

    def __init__(self, bind: Bind, dialect: str) -> None:
        super().__init__(bind, dialect)
        self._sql = statements(dialect)

    async def record_use(
        self,
        agent_type: str,
        pattern_name: str,
        *,
        success: bool,
        reward: float | None,
        pattern_type: str,
        pattern_data: str | None,
    ) -> dict[str, Any]:
        """Count one use atomically; return the pattern afterwards."""
        params: dict[str, Any] = {
            "agent_type": agent_type,
            "pattern_name": pattern_name,
            "pattern_type": pattern_type,
            "pattern_data": pattern_data,
            "success": int(success),
            "failure": int(not success),
        }
        if reward is not None:
            params["reward"] = reward
        rows = await self._rows(
            self._sql.record_pattern_use[reward is not None], params, _PATTERN_FLOATS
        )
        return _with_success_rate(rows[0])

    async def get(self, agent_type: str, pattern_name: str) -> dict[str, Any] | None:
        """A pattern, or None."""
        params = {"agent_type": agent_type, "pattern_name": pattern_name}
        rows = await self._rows(self._sql.get_pattern, params, _PATTERN_FLOATS)
        return _with_success_rate(rows[0]) if rows else None


def _with_success_rate(row: dict[str, Any]) -> dict[str, Any]:
    uses = row["usage_count"]
    row["success_rate"] = row["success_count"] / uses if uses else 0.0
    return row
