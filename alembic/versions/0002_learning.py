"""Q-learning: agent types (seeded), sessions, q_values, trajectories, rewards, patterns, states.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_DOCUMENT = sa.Text().with_variant(postgresql.JSONB(), "postgresql")
# Surrogate keys: 64-bit on PostgreSQL; on SQLite only a column declared exactly INTEGER is the
# auto-numbered rowid.
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
NOW = sa.func.now()
ZERO = sa.text("0")
EMPTY_JSON = sa.text("'{}'")

# The 18 QE agent types, frozen as of this revision.
AGENT_TYPES = {
    "test-generator": "Generates test cases from code and requirements",
    "test-executor": "Runs test suites and collects results",
    "coverage-analyzer": "Finds coverage gaps and prioritises them",
    "quality-gate": "Decides whether a change may ship",
    "quality-analyzer": "Aggregates quality metrics and trends",
    "performance-tester": "Runs load and performance tests",
    "security-scanner": "Scans code and dependencies for vulnerabilities",
    "requirements-validator": "Checks requirements for testability",
    "production-intelligence": "Turns production incidents into tests",
    "fleet-commander": "Plans and coordinates the agent fleet",
    "deployment-readiness": "Assesses release risk before deployment",
    "regression-risk-analyzer": "Selects tests by the risk a change carries",
    "test-data-architect": "Generates and manages test data",
    "api-contract-validator": "Checks API changes against their contracts",
    "flaky-test-hunter": "Detects and quarantines flaky tests",
    "visual-tester": "Compares screenshots for visual regressions",
    "chaos-engineer": "Injects faults to test resilience",
    "code-complexity": "Measures complexity and suggests refactorings",
}


def _timestamps(*names: str) -> list[sa.Column[object]]:
    return [
        sa.Column(name, sa.DateTime(timezone=True), server_default=NOW, nullable=False)
        for name in names
    ]


def _agent_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["agent_type"],
        ["agent_types.agent_type"],
        onupdate="CASCADE",
        name=op.f(f"fk_{table}_agent_type_agent_types"),
    )


def upgrade() -> None:
    """Create the learning tables and seed the agent types."""
    agent_types = op.create_table(
        "agent_types",
        sa.Column("agent_type", sa.String(length=100), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        *_timestamps("created_at"),
        sa.PrimaryKeyConstraint("agent_type", name=op.f("pk_agent_types")),
    )
    op.bulk_insert(
        agent_types,
        [{"agent_type": name, "description": text} for name, text in AGENT_TYPES.items()],
    )
    op.create_table(
        "agent_states",
        sa.Column("agent_type", sa.String(length=100), nullable=False),
        sa.Column("agent_instance_id", sa.String(length=100), nullable=False),
        sa.Column("total_episodes", sa.Integer(), server_default=ZERO, nullable=False),
        sa.Column("total_actions", sa.Integer(), server_default=ZERO, nullable=False),
        sa.Column("successful_actions", sa.Integer(), server_default=ZERO, nullable=False),
        sa.Column("total_reward", sa.Double(), server_default=ZERO, nullable=False),
        sa.Column(
            "success_rate",
            sa.Double(),
            sa.Computed(
                "CASE WHEN total_actions > 0 "
                "THEN CAST(successful_actions AS DOUBLE PRECISION) / total_actions ELSE 0 END",
                persisted=True,
            ),
            nullable=False,
        ),
        sa.Column("epsilon", sa.Double(), nullable=True),
        sa.Column("learning_rate", sa.Double(), nullable=True),
        sa.Column("discount_factor", sa.Double(), nullable=True),
        sa.Column("state_data", JSON_DOCUMENT, server_default=EMPTY_JSON, nullable=False),
        *_timestamps("created_at", "updated_at", "last_active_at"),
        _agent_fk("agent_states"),
        sa.PrimaryKeyConstraint("agent_type", "agent_instance_id", name=op.f("pk_agent_states")),
    )
    op.create_table(
        "patterns",
        sa.Column("id", ID, sa.Identity(always=False), nullable=False),
        sa.Column("agent_type", sa.String(length=100), nullable=False),
        sa.Column("pattern_name", sa.String(length=255), nullable=False),
        sa.Column(
            "pattern_type",
            sa.String(length=50),
            server_default=sa.text("'general'"),
            nullable=False,
        ),
        sa.Column("pattern_data", JSON_DOCUMENT, server_default=EMPTY_JSON, nullable=False),
        sa.Column("usage_count", sa.Integer(), server_default=ZERO, nullable=False),
        sa.Column("success_count", sa.Integer(), server_default=ZERO, nullable=False),
        sa.Column("failure_count", sa.Integer(), server_default=ZERO, nullable=False),
        sa.Column("average_reward", sa.Double(), server_default=ZERO, nullable=False),
        sa.Column("reward_count", sa.Integer(), server_default=ZERO, nullable=False),
        *_timestamps("created_at", "updated_at"),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        _agent_fk("patterns"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patterns")),
        sa.UniqueConstraint(
            "agent_type", "pattern_name", name=op.f("uq_patterns_agent_type_pattern_name")
        ),
    )
    op.create_table(
        "q_values",
        sa.Column("id", ID, sa.Identity(always=False), nullable=False),
        sa.Column("agent_type", sa.String(length=100), nullable=False),
        sa.Column("state_hash", sa.String(length=128), nullable=False),
        sa.Column("action_hash", sa.String(length=128), nullable=False),
        sa.Column("q_value", sa.Double(), server_default=ZERO, nullable=False),
        sa.Column("visit_count", sa.Integer(), server_default=ZERO, nullable=False),
        sa.Column("state_data", JSON_DOCUMENT, nullable=True),
        sa.Column("action_data", JSON_DOCUMENT, nullable=True),
        *_timestamps("created_at", "updated_at", "last_used_at"),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        _agent_fk("q_values"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_q_values")),
        sa.UniqueConstraint(
            "agent_type",
            "state_hash",
            "action_hash",
            name=op.f("uq_q_values_agent_type_state_hash_action_hash"),
        ),
    )
    op.create_index("ix_q_values_expires_at", "q_values", ["expires_at"])
    op.create_table(
        "sessions",
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("agent_type", sa.String(length=100), nullable=False),
        sa.Column("session_name", sa.String(length=255), nullable=True),
        sa.Column(
            "environment",
            sa.String(length=50),
            server_default=sa.text("'development'"),
            nullable=False,
        ),
        sa.Column(
            "status", sa.String(length=20), server_default=sa.text("'active'"), nullable=False
        ),
        sa.Column("total_reward", sa.Double(), nullable=True),
        sa.Column("metadata", JSON_DOCUMENT, server_default=EMPTY_JSON, nullable=False),
        *_timestamps("started_at"),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('active', 'completed', 'failed', 'aborted')",
            name=op.f("ck_sessions_status"),
        ),
        _agent_fk("sessions"),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_sessions")),
    )
    op.create_index("ix_sessions_agent_type_started_at", "sessions", ["agent_type", "started_at"])
    op.create_table(
        "trajectories",
        sa.Column("id", ID, sa.Identity(always=False), nullable=False),
        sa.Column("agent_type", sa.String(length=100), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=True),
        sa.Column("agent_instance_id", sa.String(length=100), nullable=True),
        sa.Column("step_number", sa.Integer(), nullable=True),
        sa.Column("state_hash", sa.String(length=128), nullable=False),
        sa.Column("action_hash", sa.String(length=128), nullable=False),
        sa.Column("reward", sa.Double(), nullable=False),
        sa.Column("next_state_hash", sa.String(length=128), nullable=True),
        sa.Column("done", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("state_data", JSON_DOCUMENT, nullable=True),
        sa.Column("action_data", JSON_DOCUMENT, nullable=True),
        sa.Column("next_state_data", JSON_DOCUMENT, nullable=True),
        sa.Column("metadata", JSON_DOCUMENT, server_default=EMPTY_JSON, nullable=False),
        *_timestamps("created_at"),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        _agent_fk("trajectories"),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.session_id"],
            ondelete="SET NULL",
            name=op.f("fk_trajectories_session_id_sessions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trajectories")),
    )
    op.create_index(
        "ix_trajectories_agent_type_created_at", "trajectories", ["agent_type", "created_at"]
    )
    op.create_index("ix_trajectories_expires_at", "trajectories", ["expires_at"])
    op.create_index("ix_trajectories_session_id", "trajectories", ["session_id"])
    op.create_table(
        "rewards",
        sa.Column("id", ID, sa.Identity(always=False), nullable=False),
        sa.Column("agent_type", sa.String(length=100), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=True),
        sa.Column("trajectory_id", sa.BigInteger(), nullable=True),
        sa.Column("state_hash", sa.String(length=128), nullable=False),
        sa.Column("action_hash", sa.String(length=128), nullable=False),
        sa.Column("reward_value", sa.Double(), nullable=False),
        sa.Column(
            "reward_type",
            sa.String(length=50),
            server_default=sa.text("'immediate'"),
            nullable=False,
        ),
        sa.Column("reward_source", sa.String(length=100), nullable=True),
        *_timestamps("created_at"),
        _agent_fk("rewards"),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.session_id"],
            ondelete="SET NULL",
            name=op.f("fk_rewards_session_id_sessions"),
        ),
        sa.ForeignKeyConstraint(
            ["trajectory_id"],
            ["trajectories.id"],
            ondelete="SET NULL",
            name=op.f("fk_rewards_trajectory_id_trajectories"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rewards")),
    )
    op.create_index(
        "ix_rewards_agent_type_state_hash_action_hash",
        "rewards",
        ["agent_type", "state_hash", "action_hash"],
    )
    # Deleting a trajectory or session sets these to NULL: index them, or every deleted row
    # costs a scan of the rewards table.
    op.create_index("ix_rewards_trajectory_id", "rewards", ["trajectory_id"])
    op.create_index("ix_rewards_session_id", "rewards", ["session_id"])


def downgrade() -> None:
    """Drop the learning tables."""
    op.drop_index("ix_rewards_session_id", table_name="rewards")
    op.drop_index("ix_rewards_trajectory_id", table_name="rewards")
    op.drop_index("ix_rewards_agent_type_state_hash_action_hash", table_name="rewards")
    op.drop_table("rewards")
    op.drop_index("ix_trajectories_session_id", table_name="trajectories")
    op.drop_index("ix_trajectories_expires_at", table_name="trajectories")
    op.drop_index("ix_trajectories_agent_type_created_at", table_name="trajectories")
    op.drop_table("trajectories")
    op.drop_index("ix_sessions_agent_type_started_at", table_name="sessions")
    op.drop_table("sessions")
    op.drop_index("ix_q_values_expires_at", table_name="q_values")
    op.drop_table("q_values")
    op.drop_table("patterns")
    op.drop_table("agent_states")
    op.drop_table("agent_types")
