"""Learning statistics, aggregated from the learning tables in one statement.

No summary table: every figure comes from the rows as they are (live Q-values and trajectory
steps only), so statistics can never disagree with the data. Each table contributes one
aggregate row; the rows are joined side by side, one round trip in all.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    Double,
    Executable,
    Table,
    Text,
    bindparam,
    case,
    func,
    select,
    true,
)

from lionagi_qe.db.sql import is_live, seconds_from_now
from lionagi_qe.models.learning import (
    AgentState,
    LearningSession,
    Pattern,
    QValue,
    Reward,
    Trajectory,
)
from lionagi_qe.repositories.learning_base import LearningRepository, plain

__all__ = ["StatisticsRepository", "statements"]

_q: Table = QValue.__table__  # type: ignore[assignment]
_t: Table = Trajectory.__table__  # type: ignore[assignment]
_r: Table = Reward.__table__  # type: ignore[assignment]
_s: Table = LearningSession.__table__  # type: ignore[assignment]
_p: Table = Pattern.__table__  # type: ignore[assignment]
_a: Table = AgentState.__table__  # type: ignore[assignment]


def _count_if(condition: Any) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _total(column: Any, zero: float = 0.0) -> Any:
    """The sum of ``column``; ``zero`` (0 for counts, 0.0 for amounts) when there are no rows."""
    return func.coalesce(func.sum(column), zero)


def _statement(by_agent: bool, windowed: bool) -> Executable:
    def scoped(table: Table, *where: Any, moment: Any = None) -> list[Any]:
        conditions = list(where)
        if by_agent:
            conditions.append(table.c.agent_type == bindparam("agent_type", type_=Text()))
        if windowed and moment is not None:
            conditions.append(moment >= seconds_from_now(bindparam("since", type_=Double())))
        return conditions

    q, t, r, s, p, a = _q.c, _t.c, _r.c, _s.c, _p.c, _a.c
    parts = [
        select(
            func.count().label("q_count"),
            func.count(q.state_hash.distinct()).label("q_states"),
            _total(q.visit_count, 0).label("q_visits"),
            func.avg(q.q_value).label("q_avg"),
            func.min(q.q_value).label("q_min"),
            func.max(q.q_value).label("q_max"),
        ).where(*scoped(_q, is_live(q.expires_at))),
        select(
            func.count().label("t_count"),
            _count_if(t.done).label("t_episodes"),
            _total(t.reward).label("t_total"),
            _total(t.reward * t.reward).label("t_squares"),
            func.count(t.agent_instance_id.distinct()).label("t_instances"),
            func.count(t.session_id.distinct()).label("t_sessions"),
            func.max(t.created_at).label("t_last"),
        ).where(*scoped(_t, is_live(t.expires_at), moment=t.created_at)),
        select(
            func.count().label("r_count"),
            _total(r.reward_value).label("r_total"),
        ).where(*scoped(_r, moment=r.created_at)),
        select(
            func.count().label("s_count"),
            *(
                _count_if(s.status == status).label(f"s_{status}")
                for status in ("active", "completed", "failed", "aborted")
            ),
            func.avg(s.total_reward).label("s_avg_reward"),
        ).where(*scoped(_s, moment=s.started_at)),
        select(
            func.count().label("p_count"),
            _total(p.usage_count, 0).label("p_uses"),
            _total(p.success_count, 0).label("p_successes"),
            _total(p.failure_count, 0).label("p_failures"),
            _total(p.reward_count, 0).label("p_rewards"),
            _total(p.average_reward * p.reward_count).label("p_reward_total"),
        ).where(*scoped(_p)),
        select(
            func.count().label("a_count"),
            _total(a.total_episodes, 0).label("a_episodes"),
            _total(a.total_actions, 0).label("a_actions"),
            _total(a.successful_actions, 0).label("a_successes"),
            _total(a.total_reward).label("a_reward"),
        ).where(*scoped(_a)),
    ]
    subqueries = [part.subquery() for part in parts]
    joined = subqueries[0]
    for sub in subqueries[1:]:
        # Each side is one aggregate row: an explicit ON TRUE instead of a bare cross join.
        joined = joined.join(sub, true())  # type: ignore[assignment]
    return select(*(col for sub in subqueries for col in sub.c)).select_from(joined)


class _Statements:
    def __init__(self) -> None:
        self.stats = {
            (by_agent, windowed): _statement(by_agent, windowed)
            for by_agent in (False, True)
            for windowed in (False, True)
        }


@lru_cache(maxsize=1)
def statements() -> _Statements:
    """The statistics statements (the same for every dialect), built on first use."""
    return _Statements()


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


class StatisticsRepository(LearningRepository):
    """Learning statistics over the whole store or one agent type."""

    async def stats(self, agent_type: str | None, hours: float | None) -> dict[str, Any]:
        """Q-values, trajectories, rewards, sessions, patterns and agents, aggregated.

        ``hours`` limits trajectories, rewards and sessions to those recorded (started) in the
        last ``hours``; Q-values, patterns and agent states are the current totals. Averages
        are None when there is nothing to average.
        """
        params: dict[str, Any] = {}
        if agent_type is not None:
            params["agent_type"] = agent_type
        if hours is not None:
            params["since"] = -hours * 3600.0
        statement = statements().stats[agent_type is not None, hours is not None]
        row = (await self._execute(statement, params)).mappings().one()
        n = int(row["t_count"])
        total, squares = float(row["t_total"]), float(row["t_squares"])
        # Sample standard deviation from the sums (SQLite has no stddev aggregate).
        std = math.sqrt(max(squares - total * total / n, 0.0) / (n - 1)) if n > 1 else None
        successes, failures = int(row["p_successes"]), int(row["p_failures"])
        return {
            "agent_type": agent_type,
            "window_hours": hours,
            "q_values": {
                "count": int(row["q_count"]),
                "states": int(row["q_states"]),
                "total_visits": int(row["q_visits"]),
                "avg_q_value": _float(row["q_avg"]),
                "min_q_value": _float(row["q_min"]),
                "max_q_value": _float(row["q_max"]),
            },
            "trajectories": {
                "count": n,
                "episodes_completed": int(row["t_episodes"]),
                "total_reward": total,
                "avg_reward": _ratio(total, n),
                "std_reward": std,
                "agent_instances": int(row["t_instances"]),
                "sessions": int(row["t_sessions"]),
                "last_step_at": plain(row["t_last"]),
            },
            "rewards": {
                "count": int(row["r_count"]),
                "total_reward": float(row["r_total"]),
                "avg_reward": _ratio(float(row["r_total"]), int(row["r_count"])),
            },
            "sessions": {
                "count": int(row["s_count"]),
                **{
                    status: int(row[f"s_{status}"])
                    for status in ("active", "completed", "failed", "aborted")
                },
                "avg_total_reward": _float(row["s_avg_reward"]),
            },
            "patterns": {
                "count": int(row["p_count"]),
                "usage_count": int(row["p_uses"]),
                "success_count": successes,
                "failure_count": failures,
                "success_rate": _ratio(successes, successes + failures),
                "avg_reward": _ratio(float(row["p_reward_total"]), int(row["p_rewards"])),
            },
            "agents": {
                "instances": int(row["a_count"]),
                "total_episodes": int(row["a_episodes"]),
                "total_actions": int(row["a_actions"]),
                "successful_actions": int(row["a_successes"]),
                "success_rate": _ratio(int(row["a_successes"]), int(row["a_actions"])),
                "total_reward": float(row["a_reward"]),
            },
        }


def _float(value: Any) -> float | None:
    return None if value is None else float(value)
