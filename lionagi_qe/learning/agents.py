"""Agent-state, pattern, agent-type and statistics methods of the learning store."""

from __future__ import annotations

from typing import Any

from lionagi_qe.errors import InvalidArgumentError
from lionagi_qe.learning.store import LearningStore, check_stale_ok
from lionagi_qe.learning.validation import (
    check_count,
    check_document,
    check_name,
    check_number,
    check_optional_name,
    check_positive,
    check_unit_interval,
)
from lionagi_qe.repositories.learning import (
    AgentStateRepository,
    AgentTypeRepository,
    PatternRepository,
    StatisticsRepository,
)

__all__ = ["AgentMethods", "agent_state_values"]


def _pick(new: Any, old: Any, new_name: str, old_name: str) -> Any:
    """One value from a new-style argument and its original-API alias."""
    if new is not None and old is not None and new != old:
        raise InvalidArgumentError(f"{new_name} and {old_name} disagree; pass one of them")
    return new if new is not None else old


def agent_state_values(
    *,
    total_tasks: Any = None,
    successful_tasks: Any = None,
    failed_tasks: Any = None,
    total_reward: Any = None,
    avg_reward: Any = None,
    current_exploration_rate: Any = None,
    current_learning_rate: Any = None,
    total_episodes: Any = None,
    total_actions: Any = None,
    successful_actions: Any = None,
    epsilon: Any = None,
    learning_rate: Any = None,
    discount_factor: Any = None,
) -> dict[str, Any]:
    """Validate agent-state arguments into column values (no I/O); None means "keep".

    The original API's names map onto the columns: ``total_tasks`` → ``total_actions``,
    ``successful_tasks`` → ``successful_actions``, ``current_exploration_rate`` →
    ``epsilon``, ``current_learning_rate`` → ``learning_rate``. ``failed_tasks`` is
    ``total - successful``: it is checked against them, or fills in the total. ``avg_reward``
    is checked but not stored (it is ``total_reward`` divided by a count the caller chose).
    """
    total = _pick(total_actions, total_tasks, "total_actions", "total_tasks")
    successes = _pick(
        successful_actions, successful_tasks, "successful_actions", "successful_tasks"
    )
    values: dict[str, Any] = {
        "total_episodes": None
        if total_episodes is None
        else check_count(total_episodes, "total_episodes"),
        "total_actions": None if total is None else check_count(total, "total_actions"),
        "successful_actions": None
        if successes is None
        else check_count(successes, "successful_actions"),
        "total_reward": None
        if total_reward is None
        else check_number(total_reward, "total_reward"),
    }
    for column, new, old, old_name in (
        ("epsilon", epsilon, current_exploration_rate, "current_exploration_rate"),
        ("learning_rate", learning_rate, current_learning_rate, "current_learning_rate"),
        ("discount_factor", discount_factor, None, ""),
    ):
        chosen = _pick(new, old, column, old_name)
        values[column] = None if chosen is None else check_unit_interval(chosen, column)
    if avg_reward is not None:
        check_number(avg_reward, "avg_reward")
    if failed_tasks is not None:
        failures = check_count(failed_tasks, "failed_tasks")
        if values["successful_actions"] is None:
            raise InvalidArgumentError("failed_tasks needs successful_tasks beside it")
        implied = values["successful_actions"] + failures
        if values["total_actions"] is None:
            values["total_actions"] = check_count(implied, "total_actions")
        elif values["total_actions"] != implied:
            raise InvalidArgumentError("successful_tasks + failed_tasks must equal total_tasks")
    if (
        values["total_actions"] is not None
        and values["successful_actions"] is not None
        and values["successful_actions"] > values["total_actions"]
    ):
        raise InvalidArgumentError("successful actions cannot exceed total actions")
    return values


class AgentMethods(LearningStore):
    """Agent instances' state, patterns, agent types and statistics."""

    async def update_agent_state(
        self,
        agent_type: str,
        agent_instance_id: str,
        total_tasks: int | None = None,
        successful_tasks: int | None = None,
        failed_tasks: int | None = None,
        total_reward: float | None = None,
        avg_reward: float | None = None,
        current_exploration_rate: float | None = None,
        current_learning_rate: float | None = None,
        *,
        total_episodes: int | None = None,
        total_actions: int | None = None,
        successful_actions: int | None = None,
        epsilon: float | None = None,
        learning_rate: float | None = None,
        discount_factor: float | None = None,
        state_data: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Create or update an agent instance's state; return it as :meth:`get_agent_state`.

        Values given replace the stored ones; values left None keep them (a new instance
        starts from zeros). The positional parameters are the original API's; see
        :func:`agent_state_values` for how they map onto the columns.

        Raises:
            InvalidArgumentError: bad or inconsistent values; an unknown agent type.
        """
        checked_type = check_name(agent_type, "agent_type")
        instance = check_name(agent_instance_id, "agent_instance_id")
        values = agent_state_values(
            total_tasks=total_tasks,
            successful_tasks=successful_tasks,
            failed_tasks=failed_tasks,
            total_reward=total_reward,
            avg_reward=avg_reward,
            current_exploration_rate=current_exploration_rate,
            current_learning_rate=current_learning_rate,
            total_episodes=total_episodes,
            total_actions=total_actions,
            successful_actions=successful_actions,
            epsilon=epsilon,
            learning_rate=learning_rate,
            discount_factor=discount_factor,
        )
        data = check_document(state_data)
        async with self._bind(agent_type=checked_type) as conn:
            return await AgentStateRepository(conn, self.dialect).update(
                checked_type, instance, values, data
            )

    async def get_agent_state(
        self, agent_type: str, agent_instance_id: str
    ) -> dict[str, Any] | None:
        """An agent instance's state, or None.

        Keys: ``agent_type``, ``agent_instance_id``, ``total_episodes``, ``total_actions``,
        ``successful_actions``, ``total_reward``, ``success_rate`` (computed by the database),
        ``epsilon``, ``learning_rate``, ``discount_factor``, ``state_data``, ``created_at``,
        ``updated_at``, ``last_active_at``.
        """
        checked_type = check_name(agent_type, "agent_type")
        instance = check_name(agent_instance_id, "agent_instance_id")
        async with self._bind(write=False) as conn:
            return await AgentStateRepository(conn, self.dialect).get(checked_type, instance)

    async def record_pattern_use(
        self,
        agent_type: str,
        pattern_name: str,
        *,
        success: bool,
        reward: float | None = None,
        pattern_type: str = "general",
        pattern_data: Any = None,
    ) -> dict[str, Any]:
        """Count one use of a pattern, atomically, and return the pattern afterwards.

        One statement: ``usage_count``, ``success_count``/``failure_count`` and (if ``reward``
        is given) ``reward_count`` go up by one and ``average_reward`` becomes the running
        mean of the rewards given; a use without a reward leaves the average alone. The first
        use creates the pattern with ``pattern_type``; ``pattern_data`` replaces the stored
        data when given. Result keys: ``pattern_id``, ``agent_type``, ``pattern_name``,
        ``pattern_type``, ``pattern_data``, ``usage_count``, ``success_count``,
        ``failure_count``, ``reward_count``, ``average_reward``, ``success_rate``,
        ``created_at``, ``updated_at``, ``last_used_at``.
        """
        checked_type = check_name(agent_type, "agent_type")
        name = check_name(pattern_name, "pattern_name", 255)
        if not isinstance(success, bool):
            raise InvalidArgumentError("success must be a bool")
        checked_reward = None if reward is None else check_number(reward, "reward")
        kind = check_name(pattern_type, "pattern_type", 50)
        data = check_document(pattern_data)
        async with self._bind(agent_type=checked_type) as conn:
            return await PatternRepository(conn, self.dialect).record_use(
                checked_type,
                name,
                success=success,
                reward=checked_reward,
                pattern_type=kind,
                pattern_data=data,
            )

    async def get_pattern(self, agent_type: str, pattern_name: str) -> dict[str, Any] | None:
        """A pattern with its counts (as :meth:`record_pattern_use` returns it), or None."""
        checked_type = check_name(agent_type, "agent_type")
        name = check_name(pattern_name, "pattern_name", 255)
        async with self._bind(write=False) as conn:
            return await PatternRepository(conn, self.dialect).get(checked_type, name)

    async def register_agent_type(self, agent_type: str, description: str | None = None) -> bool:
        """Add an agent type beside the 18 seeded ones; False if it already exists."""
        checked_type = check_name(agent_type, "agent_type")
        text = check_optional_name(description, "description", 10_000)
        async with self._bind() as conn:
            return await AgentTypeRepository(conn, self.dialect).register(checked_type, text)

    async def list_agent_types(self) -> list[dict[str, Any]]:
        """Every agent type (``agent_type``, ``description``, ``created_at``), by name."""
        async with self._bind(write=False) as conn:
            return await AgentTypeRepository(conn, self.dialect).all()

    async def get_learning_statistics(
        self, agent_type: str | None = None, hours: float | None = None, *, stale_ok: bool = False
    ) -> dict[str, Any]:
        """Statistics computed from the learning tables (all agent types, or one).

        Keys: ``agent_type``, ``window_hours``, and one dict each for ``q_values`` (count,
        states, total_visits, avg/min/max_q_value), ``trajectories`` (count,
        episodes_completed, total_reward, avg_reward, std_reward, agent_instances, sessions,
        last_step_at), ``rewards`` (count, total_reward, avg_reward), ``sessions`` (count,
        active, completed, failed, aborted, avg_total_reward), ``patterns`` (count,
        usage_count, success_count, failure_count, success_rate, avg_reward) and ``agents``
        (instances, total_episodes, total_actions, successful_actions, success_rate,
        total_reward). Counts are ints, everything else floats; an average of nothing is None.
        ``hours`` limits trajectories, rewards and sessions to the last ``hours``.
        ``stale_ok=True`` lets a read replica answer (figures up to ``replica_max_lag``
        seconds old, never older than this store's own writes); it is one ``SELECT`` anyway.
        """
        checked_type = check_optional_name(agent_type, "agent_type")
        window = None if hours is None else check_positive(hours, "hours")
        return await self._read_only(
            lambda conn: StatisticsRepository(conn, self.dialect).stats(checked_type, window),
            stale_ok=check_stale_ok(stale_ok),
        )
