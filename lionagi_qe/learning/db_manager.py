"""``DatabaseManager``: the Q-learning store over one engine (original import path kept)."""

from __future__ import annotations

from lionagi_qe.learning.agents import AgentMethods
from lionagi_qe.learning.maintenance import MaintenanceMethods
from lionagi_qe.learning.q_values import QValueMethods
from lionagi_qe.learning.records import RecordMethods
from lionagi_qe.learning.store import DEFAULT_RETENTION

__all__ = ["DEFAULT_RETENTION", "DatabaseManager"]


class DatabaseManager(QValueMethods, RecordMethods, AgentMethods, MaintenanceMethods):
    """The original lionagi-qe database manager: an engine and pool plus the Q-learning API.

    ``DatabaseManager(database_url, min_connections=2, max_connections=10, *,
    q_value_retention=30 days, trajectory_retention=30 days, cleanup_batch_size=1000,
    trajectory_partition_rows=1_000_000, trajectory_partitions_ahead=2, **engine_options)``
    takes ``postgresql://`` (asyncpg implied), ``postgresql+asyncpg://``
    or an SQLite URL; the schema comes from ``lionagi-qe db upgrade``.

    - Lifecycle: :meth:`connect`, :meth:`disconnect` / :meth:`close`, ``async with``.
    - Q-values: :meth:`update_q_value` (the TD update in one SQL statement),
      :meth:`batch_update_q_values`, :meth:`upsert_q_value`, :meth:`get_q_value`,
      :meth:`get_best_action`, :meth:`get_all_q_values_for_state`. Reading or writing a
      Q-value moves its expiry ``q_value_retention`` ahead, so knowledge in use never expires.
      The three reads and :meth:`get_learning_statistics` take ``stale_ok=True`` to let a read
      replica answer; such reads do not move expiries.
    - Trajectories: :meth:`store_trajectory`, :meth:`get_recent_trajectories`.
    - Rewards: :meth:`record_reward`, :meth:`get_rewards`.
    - Sessions: :meth:`start_session`, :meth:`end_session`, :meth:`get_session`,
      :meth:`list_sessions`.
    - Agents: :meth:`update_agent_state`, :meth:`get_agent_state`,
      :meth:`record_pattern_use`, :meth:`get_pattern`, :meth:`register_agent_type`,
      :meth:`list_agent_types`.
    - Maintenance: :meth:`cleanup_expired_data` (drops ``trajectories`` partitions whose
      steps have all expired, deletes the rest row by row), :meth:`maintain_partitions`,
      :meth:`list_trajectory_partitions`, :meth:`get_learning_statistics`.

    Every real number returned is a ``float`` (never ``Decimal``); counts are ints. Bad
    arguments raise :class:`~lionagi_qe.errors.InvalidArgumentError` before any I/O; a
    reference to an agent type, session or trajectory that does not exist raises it too, and
    changes nothing.
    """
