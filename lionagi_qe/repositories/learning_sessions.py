"""Learning sessions, trajectories (one row per step) and rewards.

Every dict these repositories return names its own id (``session_id``, ``trajectory_id``,
``reward_id``), has float rewards and timezone-aware timestamps; session ids are strings.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Double,
    Executable,
    Integer,
    Table,
    Text,
    Uuid,
    and_,
    bindparam,
    delete,
    func,
    insert,
    select,
    text,
    update,
)

from lionagi_qe.db.sql import is_live, server_now
from lionagi_qe.models.learning import LearningSession, Reward, Trajectory
from lionagi_qe.repositories.learning_base import (
    Bind,
    LearningRepository,
    expired,
    expiry,
    json_text,
)

__all__ = [
    "RewardRepository",
    "SessionRepository",
    "TrajectoryRepository",
    "TrajectoryStep",
    "statements",
]

_s: Table = LearningSession.__table__  # type: ignore[assignment]
_tr: Table = Trajectory.__table__  # type: ignore[assignment]
_r: Table = Reward.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class TrajectoryStep:
    """One step to store, validated; documents as JSON text (or None, metadata ``{}``)."""

    agent_type: str
    state_hash: str
    action_hash: str
    reward: float
    next_state_hash: str | None
    done: bool
    session_id: uuid.UUID | None
    agent_instance_id: str | None
    step_number: int | None
    state_data: str | None
    action_data: str | None
    next_state_data: str | None
    metadata: str


def _param(name: str, type_: Any) -> Any:
    return bindparam(name, type_=type_)


class _Statements:
    """Session, trajectory and reward statements for one dialect."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        self._sessions(dialect)
        self._trajectories()
        self._rewards()

    def _sessions(self, dialect: str) -> None:
        c = _s.c
        self.session_columns = (
            c.session_id,
            c.agent_type,
            c.session_name,
            c.environment,
            c.status,
            c.total_reward,
            c.metadata,
            c.started_at,
            c.ended_at,
        )
        self.start_session = insert(_s).values(
            session_id=_param("session_id", Uuid()),
            agent_type=_param("agent_type", Text()),
            session_name=_param("session_name", Text()),
            environment=_param("environment", Text()),
            status="active",
            metadata=json_text("metadata"),
            started_at=server_now(),
        )
        by_id = c.session_id == _param("session_id", Uuid())
        # UPDATE statements may not reuse column names for parameters.
        by_key = c.session_id == _param("key_session_id", Uuid())
        # total_reward=None: the sum of the session's (live) trajectory rewards, 0 if none.
        steps_total = (
            select(func.coalesce(func.sum(_tr.c.reward), 0.0))
            .where(_tr.c.session_id == c.session_id, is_live(_tr.c.expires_at))
            .scalar_subquery()
        )
        self.end_session = (
            update(_s)
            .where(by_key, c.status == "active")
            .values(
                status=_param("new_status", Text()),
                total_reward=func.coalesce(_param("new_total_reward", Double()), steps_total),
                ended_at=server_now(),
            )
            .returning(*self.session_columns)
        )
        self.get_session = select(*self.session_columns).where(by_id)
        self.list_sessions: dict[tuple[bool, bool], Executable] = {}
        for by_agent in (False, True):
            for by_status in (False, True):
                stmt = select(*self.session_columns)
                if by_agent:
                    stmt = stmt.where(c.agent_type == _param("agent_type", Text()))
                if by_status:
                    stmt = stmt.where(c.status == _param("status", Text()))
                # SQLite's clock has millisecond steps: sessions started within one tie, and
                # its rowid (insertion order) breaks the tie so "newest first" holds.
                tie = text("sessions.rowid DESC") if dialect == "sqlite" else c.session_id
                self.list_sessions[by_agent, by_status] = stmt.order_by(
                    c.started_at.desc(), tie
                ).limit(_param("limit", Integer()))

    def _trajectories(self) -> None:
        c = _tr.c
        self.trajectory_columns = (
            c.id.label("trajectory_id"),
            c.agent_type,
            c.session_id,
            c.agent_instance_id,
            c.step_number,
            c.state_hash,
            c.action_hash,
            c.reward,
            c.next_state_hash,
            c.done,
            c.state_data,
            c.action_data,
            c.next_state_data,
            c.metadata,
            c.created_at,
            c.expires_at,
        )
        self.store_trajectory: dict[bool, Executable] = {}
        for retain in (False, True):
            self.store_trajectory[retain] = (
                insert(_tr)
                .values(
                    agent_type=_param("agent_type", Text()),
                    session_id=_param("session_id", Uuid()),
                    agent_instance_id=_param("agent_instance_id", Text()),
                    step_number=_param("step_number", Integer()),
                    state_hash=_param("state_hash", Text()),
                    action_hash=_param("action_hash", Text()),
                    reward=_param("reward", Double()),
                    next_state_hash=_param("next_state_hash", Text()),
                    done=_param("done", Boolean()),
                    state_data=json_text("state_data"),
                    action_data=json_text("action_data"),
                    next_state_data=json_text("next_state_data"),
                    metadata=json_text("metadata"),
                    created_at=server_now(),
                    expires_at=expiry(retain),
                )
                .returning(c.id)
            )
        self.recent_trajectories: dict[tuple[bool, bool], Executable] = {}
        for by_instance in (False, True):
            for by_session in (False, True):
                stmt = select(*self.trajectory_columns).where(
                    c.agent_type == _param("agent_type", Text()), is_live(c.expires_at)
                )
                if by_instance:
                    stmt = stmt.where(c.agent_instance_id == _param("agent_instance_id", Text()))
                if by_session:
                    stmt = stmt.where(c.session_id == _param("session_id", Uuid()))
                self.recent_trajectories[by_instance, by_session] = stmt.order_by(
                    c.created_at.desc(), c.id.desc()
                ).limit(_param("limit", Integer()))
        victims = select(c.id).where(expired(c.expires_at)).limit(_param("batch", Integer()))
        if self.dialect == "postgresql":
            victims = victims.with_for_update(skip_locked=True)
        self.delete_expired_trajectories = delete(_tr).where(
            c.id.in_(victims.scalar_subquery()), expired(c.expires_at)
        )

    def _rewards(self) -> None:
        c = _r.c
        self.reward_columns = (
            c.id.label("reward_id"),
            c.agent_type,
            c.session_id,
            c.trajectory_id,
            c.state_hash,
            c.action_hash,
            c.reward_value,
            c.reward_type,
            c.reward_source,
            c.created_at,
        )
        self.record_reward = (
            insert(_r)
            .values(
                agent_type=_param("agent_type", Text()),
                session_id=_param("session_id", Uuid()),
                trajectory_id=_param("trajectory_id", BigInteger()),
                state_hash=_param("state_hash", Text()),
                action_hash=_param("action_hash", Text()),
                reward_value=_param("reward_value", Double()),
                reward_type=_param("reward_type", Text()),
                reward_source=_param("reward_source", Text()),
                created_at=server_now(),
            )
            .returning(c.id)
        )
        self.get_rewards: dict[tuple[bool, bool], Executable] = {}
        for by_state in (False, True):
            for by_action in (False, True):
                where = [c.agent_type == _param("agent_type", Text())]
                if by_state:
                    where.append(c.state_hash == _param("state_hash", Text()))
                if by_action:
                    where.append(c.action_hash == _param("action_hash", Text()))
                self.get_rewards[by_state, by_action] = (
                    select(*self.reward_columns)
                    .where(and_(*where))
                    .order_by(c.created_at.desc(), c.id.desc())
                    .limit(_param("limit", Integer()))
                )


@lru_cache(maxsize=4)
def statements(dialect: str) -> _Statements:
    """The statements for ``dialect`` ("postgresql" or "sqlite"), built on first use."""
    return _Statements(dialect)


class SessionRepository(LearningRepository):
    """Learning sessions (episodes runs) of an agent type."""

    _floats = ("total_reward",)

    def __init__(self, bind: Bind, dialect: str) -> None:
        super().__init__(bind, dialect)
        self._sql = statements(dialect)

    async def start(
        self,
        session_id: uuid.UUID,
        agent_type: str,
        session_name: str | None,
        environment: str,
        metadata: str,
    ) -> None:
        """Insert an active session."""
        await self._execute(
            self._sql.start_session,
            {
                "session_id": session_id,
                "agent_type": agent_type,
                "session_name": session_name,
                "environment": environment,
                "metadata": metadata,
            },
        )

    async def end(
        self, session_id: uuid.UUID, status: str, total_reward: float | None
    ) -> dict[str, Any] | None:
        """End an active session; None if there is no active session with that id."""
        params = {
            "key_session_id": session_id,
            "new_status": status,
            "new_total_reward": total_reward,
        }
        rows = await self._rows(self._sql.end_session, params, self._floats)
        return rows[0] if rows else None

    async def get(self, session_id: uuid.UUID) -> dict[str, Any] | None:
        """One session, or None."""
        rows = await self._rows(self._sql.get_session, {"session_id": session_id}, self._floats)
        return rows[0] if rows else None

    async def newest(
        self, agent_type: str | None, status: str | None, limit: int
    ) -> list[dict[str, Any]]:
        """Sessions, newest first, optionally of one agent type and/or status."""
        params: dict[str, Any] = {"limit": limit}
        if agent_type is not None:
            params["agent_type"] = agent_type
        if status is not None:
            params["status"] = status
        statement = self._sql.list_sessions[agent_type is not None, status is not None]
        return await self._rows(statement, params, self._floats)


class TrajectoryRepository(LearningRepository):
    """Trajectory steps."""

    def __init__(self, bind: Bind, dialect: str) -> None:
        super().__init__(bind, dialect)
        self._sql = statements(dialect)

    async def store(self, step: TrajectoryStep, retention: float | None) -> int:
        """Insert one step, expiring ``retention`` seconds from now (None: never); its id."""
        params = {name: getattr(step, name) for name in step.__dataclass_fields__}
        if retention is not None:
            params["retention"] = retention
        result = await self._execute(self._sql.store_trajectory[retention is not None], params)
        return int(result.scalar_one())

    async def recent(
        self,
        agent_type: str,
        limit: int,
        *,
        agent_instance_id: str | None = None,
        session_id: uuid.UUID | None = None,
    ) -> list[dict[str, Any]]:
        """Live steps of ``agent_type``, newest first."""
        params: dict[str, Any] = {"agent_type": agent_type, "limit": limit}
        if agent_instance_id is not None:
            params["agent_instance_id"] = agent_instance_id
        if session_id is not None:
            params["session_id"] = session_id
        statement = self._sql.recent_trajectories[
            agent_instance_id is not None, session_id is not None
        ]
        return await self._rows(statement, params, floats=("reward",))

    async def delete_expired(self, batch: int) -> int:
        """Delete up to ``batch`` expired steps; return how many."""
        result = await self._execute(self._sql.delete_expired_trajectories, {"batch": batch})
        return int(result.rowcount)


class RewardRepository(LearningRepository):
    """Rewards observed for state-action pairs."""

    def __init__(self, bind: Bind, dialect: str) -> None:
        super().__init__(bind, dialect)
        self._sql = statements(dialect)

    async def record(
        self,
        agent_type: str,
        state_hash: str,
        action_hash: str,
        reward_value: float,
        *,
        reward_type: str,
        session_id: uuid.UUID | None,
        trajectory_id: int | None,
        reward_source: str | None,
    ) -> int:
        """Insert a reward; return its id."""
        result = await self._execute(
            self._sql.record_reward,
            {
                "agent_type": agent_type,
                "state_hash": state_hash,
                "action_hash": action_hash,
                "reward_value": reward_value,
                "reward_type": reward_type,
                "session_id": session_id,
                "trajectory_id": trajectory_id,
                "reward_source": reward_source,
            },
        )
        return int(result.scalar_one())

    async def query(
        self, agent_type: str, state_hash: str | None, action_hash: str | None, limit: int
    ) -> list[dict[str, Any]]:
        """Rewards of ``agent_type`` (optionally one state and/or action), newest first."""
        params: dict[str, Any] = {"agent_type": agent_type, "limit": limit}
        if state_hash is not None:
            params["state_hash"] = state_hash
        if action_hash is not None:
            params["action_hash"] = action_hash
        statement = self._sql.get_rewards[state_hash is not None, action_hash is not None]
        return await self._rows(statement, params, floats=("reward_value",))
