"""Trajectory, reward and session methods of :class:`~lionagi_qe.DatabaseManager`."""

from __future__ import annotations

import uuid
from typing import Any

from lionagi_qe.errors import InvalidArgumentError, KeyNotFoundError, VersionConflictError
from lionagi_qe.learning.store import LearningStore
from lionagi_qe.learning.validation import (
    END_STATUSES,
    check_count,
    check_document,
    check_hash,
    check_limit,
    check_metadata,
    check_name,
    check_number,
    check_optional_name,
    check_session_id,
)
from lionagi_qe.repositories.learning import (
    RewardRepository,
    SessionRepository,
    TrajectoryRepository,
    TrajectoryStep,
)

__all__ = ["RecordMethods"]

_STATUSES = END_STATUSES | {"active"}


def _optional_session(session_id: object) -> uuid.UUID | None:
    return None if session_id is None else check_session_id(session_id)


def _bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{what} must be a bool, not {type(value).__name__}")
    return value


class RecordMethods(LearningStore):
    """Trajectories (one row per step), rewards and learning sessions."""

    # -- trajectories ----------------------------------------------------------------------

    async def store_trajectory(
        self,
        agent_type: str,
        state_hash: str,
        action_hash: str,
        reward: float,
        next_state_hash: str | None = None,
        done: bool = False,
        *,
        session_id: str | uuid.UUID | None = None,
        agent_instance_id: str | None = None,
        step_number: int | None = None,
        state_data: Any = None,
        action_data: Any = None,
        next_state_data: Any = None,
        metadata: dict[str, Any] | None = None,
    ) -> int:
        """Store one step (s, a, r, s', done) and return its id.

        Every argument reads back unchanged from :meth:`get_recent_trajectories`. The step
        expires ``trajectory_retention`` seconds after it is stored.

        Raises:
            InvalidArgumentError: bad arguments; unknown agent type or session.
            SerializationError: a document with no JSON form.
        """
        step = TrajectoryStep(
            agent_type=check_name(agent_type, "agent_type"),
            state_hash=check_hash(state_hash, "state_hash"),
            action_hash=check_hash(action_hash, "action_hash"),
            reward=check_number(reward, "reward"),
            next_state_hash=None
            if next_state_hash is None
            else check_hash(next_state_hash, "next_state_hash"),
            done=_bool(done, "done"),
            session_id=_optional_session(session_id),
            agent_instance_id=check_optional_name(agent_instance_id, "agent_instance_id"),
            step_number=None if step_number is None else check_count(step_number, "step_number"),
            state_data=check_document(state_data),
            action_data=check_document(action_data),
            next_state_data=check_document(next_state_data),
            metadata=check_metadata(metadata),
        )
        async with self._bind(agent_type=step.agent_type, session_id=step.session_id) as conn:
            return await TrajectoryRepository(conn, self.dialect).store(
                step, self.trajectory_retention
            )

    async def get_recent_trajectories(
        self,
        agent_type: str,
        limit: int = 100,
        *,
        agent_instance_id: str | None = None,
        session_id: str | uuid.UUID | None = None,
    ) -> list[dict[str, Any]]:
        """The newest live steps of an agent type (optionally one instance or session).

        Each item has ``trajectory_id`` and every stored field: ``agent_type``, ``session_id``
        (str or None), ``agent_instance_id``, ``step_number``, ``state_hash``, ``action_hash``,
        ``reward`` (float), ``next_state_hash``, ``done``, ``state_data``, ``action_data``,
        ``next_state_data``, ``metadata``, ``created_at``, ``expires_at``.
        """
        checked_type = check_name(agent_type, "agent_type")
        checked_limit = check_limit(limit)
        instance = check_optional_name(agent_instance_id, "agent_instance_id")
        session = _optional_session(session_id)
        async with self._bind(write=False) as conn:
            return await TrajectoryRepository(conn, self.dialect).recent(
                checked_type, checked_limit, agent_instance_id=instance, session_id=session
            )

    # -- rewards ---------------------------------------------------------------------------

    async def record_reward(
        self,
        agent_type: str,
        state_hash: str,
        action_hash: str,
        reward_value: float,
        reward_type: str = "immediate",
        session_id: str | uuid.UUID | None = None,
        trajectory_id: int | None = None,
        reward_source: str | None = None,
    ) -> int:
        """Record a reward for a state-action pair; return its id.

        Raises:
            InvalidArgumentError: bad arguments; unknown agent type, session or trajectory.
        """
        checked_type = check_name(agent_type, "agent_type")
        checked_state = check_hash(state_hash, "state_hash")
        checked_action = check_hash(action_hash, "action_hash")
        value = check_number(reward_value, "reward_value")
        kind = check_name(reward_type, "reward_type", 50)
        session = _optional_session(session_id)
        if trajectory_id is not None and (
            isinstance(trajectory_id, bool)
            or not isinstance(trajectory_id, int)
            or not 1 <= trajectory_id < 2**63
        ):
            raise InvalidArgumentError("trajectory_id must be a positive 64-bit int")
        source = check_optional_name(reward_source, "reward_source")
        async with self._bind(
            agent_type=checked_type, session_id=session, trajectory_id=trajectory_id
        ) as conn:
            return await RewardRepository(conn, self.dialect).record(
                checked_type,
                checked_state,
                checked_action,
                value,
                reward_type=kind,
                session_id=session,
                trajectory_id=trajectory_id,
                reward_source=source,
            )

    async def get_rewards(
        self,
        agent_type: str,
        state_hash: str | None = None,
        action_hash: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Rewards of an agent type, newest first, optionally for one state and/or action.

        Each item: ``reward_id``, ``agent_type``, ``session_id``, ``trajectory_id``,
        ``state_hash``, ``action_hash``, ``reward_value`` (float), ``reward_type``,
        ``reward_source``, ``created_at``.
        """
        checked_type = check_name(agent_type, "agent_type")
        state = None if state_hash is None else check_hash(state_hash, "state_hash")
        action = None if action_hash is None else check_hash(action_hash, "action_hash")
        checked_limit = check_limit(limit)
        async with self._bind(write=False) as conn:
            return await RewardRepository(conn, self.dialect).query(
                checked_type, state, action, checked_limit
            )

    # -- sessions --------------------------------------------------------------------------

    async def start_session(
        self,
        agent_type: str,
        session_name: str | None = None,
        environment: str = "development",
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Start an active learning session; return its id (a UUID string)."""
        checked_type = check_name(agent_type, "agent_type")
        name = check_optional_name(session_name, "session_name", 255)
        env = check_name(environment, "environment", 50)
        metadata_json = check_metadata(metadata)
        session_id = uuid.uuid4()
        async with self._bind(agent_type=checked_type) as conn:
            await SessionRepository(conn, self.dialect).start(
                session_id, checked_type, name, env, metadata_json
            )
        return str(session_id)

    async def end_session(
        self,
        session_id: str | uuid.UUID,
        status: str = "completed",
        total_reward: float | None = None,
    ) -> dict[str, Any]:
        """End an active session with ``status`` (completed, failed, aborted); return it.

        ``total_reward=None`` stores the sum of the rewards of the session's live trajectory
        steps (0.0 if it has none).

        Raises:
            KeyNotFoundError: no session has that id.
            VersionConflictError: the session has already ended.
        """
        checked_id = check_session_id(session_id)
        if status not in END_STATUSES:
            raise InvalidArgumentError(f"status must be one of {sorted(END_STATUSES)}")
        reward = None if total_reward is None else check_number(total_reward, "total_reward")
        async with self._bind() as conn:
            sessions = SessionRepository(conn, self.dialect)
            ended = await sessions.end(checked_id, status, reward)
            if ended is not None:
                return ended
            existing = await sessions.get(checked_id)
        if existing is None:
            raise KeyNotFoundError(f"no session {checked_id}")
        raise VersionConflictError(f"session {checked_id} already ended ({existing['status']})")

    async def get_session(self, session_id: str | uuid.UUID) -> dict[str, Any] | None:
        """One session, or None.

        Keys: ``session_id``, ``agent_type``, ``session_name``, ``environment``, ``status``,
        ``total_reward`` (float or None), ``metadata``, ``started_at``, ``ended_at``.
        """
        checked_id = check_session_id(session_id)
        async with self._bind(write=False) as conn:
            return await SessionRepository(conn, self.dialect).get(checked_id)

    async def list_sessions(
        self, agent_type: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Sessions, newest first, optionally of one agent type and/or status."""
        checked_type = check_optional_name(agent_type, "agent_type")
        if status is not None and status not in _STATUSES:
            raise InvalidArgumentError(f"status must be one of {sorted(_STATUSES)}")
        checked_limit = check_limit(limit)
        async with self._bind(write=False) as conn:
            return await SessionRepository(conn, self.dialect).newest(
                checked_type, status, checked_limit
            )
