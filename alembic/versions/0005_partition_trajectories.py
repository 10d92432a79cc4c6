"""Large tables: trajectories range-partitioned by id (PostgreSQL); rewards indexed by time.

On PostgreSQL (SQLite keeps its plain tables and only gets the rewards index):

- ``trajectories`` becomes ``PARTITION BY RANGE (id)``. Its primary key stays ``(id)`` (the
  partition key *is* the key, so the key and ``rewards.trajectory_id``'s foreign key need no
  change). Partitioning by ``created_at`` would have forced ``(id, created_at)`` as the key
  and broken that foreign key. Ids grow with time, so a partition holds one span of history
  and retention retires whole partitions once every step in them has expired.
- The existing table is not copied: it is attached as the partition ``trajectories_p0`` for
  every id below the next one (``MINVALUE`` up to it). Attaching scans it once to check the
  bound; its indexes become the partitions' indexes as they are.
- ``PARTITIONS_AHEAD`` partitions of ``PARTITION_ROWS`` ids each are created above it, plus a
  ``DEFAULT`` partition: if maintenance lapses, steps land there instead of failing. After
  this, :meth:`lionagi_qe.DatabaseManager.maintain_partitions` (run by
  ``cleanup_expired_data`` too) keeps partitions created ahead.
- Two indexes (both dialects) for reads that were slow at ten million rows:
  ``ix_rewards_agent_type_created_at`` (``get_rewards(agent_type)``, newest first, sorted every
  reward of the agent type) and ``ix_trajectories_agent_type_agent_instance_id_created_at``
  (``get_recent_trajectories(agent_type, agent_instance_id=…)`` walked the agent type's whole
  history when the instance had few steps: 0.3 s median, 3 s worst).

Downgrade copies the rows back into one plain table (and drops the new index).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Ids per partition created by this revision (the library's default too).
PARTITION_ROWS = 1_000_000
#: Partitions created above the next id.
PARTITIONS_AHEAD = 2

TABLE = "trajectories"
JSON_DOCUMENT = sa.Text().with_variant(postgresql.JSONB(), "postgresql")
#: (name, columns) of the trajectory indexes, as 0002 made them.
INDEXES = (
    ("ix_trajectories_agent_type_created_at", ["agent_type", "created_at"]),
    ("ix_trajectories_expires_at", ["expires_at"]),
    ("ix_trajectories_session_id", ["session_id"]),
)
REWARDS_FK = "fk_rewards_trajectory_id_trajectories"
REWARDS_INDEX = "ix_rewards_agent_type_created_at"
INSTANCE_INDEX = "ix_trajectories_agent_type_agent_instance_id_created_at"


def _columns(start: int) -> list[sa.Column[object]]:
    """The 0002 columns of ``trajectories``, ids numbered from ``start``."""
    now = sa.func.now()
    return [
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False, start=start), nullable=False),
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
        sa.Column("metadata", JSON_DOCUMENT, server_default=sa.text("'{}'"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=now, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    ]


def _create_trajectories(start: int, **options: str) -> None:
    """``trajectories`` with its 0002 keys and indexes (``options``: e.g. partitioning)."""
    op.create_table(
        TABLE,
        *_columns(start),
        sa.ForeignKeyConstraint(
            ["agent_type"],
            ["agent_types.agent_type"],
            onupdate="CASCADE",
            name="fk_trajectories_agent_type_agent_types",
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.session_id"],
            ondelete="SET NULL",
            name="fk_trajectories_session_id_sessions",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_trajectories"),
        **options,
    )
    for name, columns in INDEXES:
        op.create_index(name, TABLE, columns)


def _create_instance_index() -> None:
    op.create_index(INSTANCE_INDEX, TABLE, ["agent_type", "agent_instance_id", "created_at"])


def _rewards_fk() -> None:
    op.create_foreign_key(
        REWARDS_FK, "rewards", TABLE, ["trajectory_id"], ["id"], ondelete="SET NULL"
    )


def _next_id(conn: sa.Connection) -> int:
    """The id the next step would get: past the sequence and past every stored id."""
    sequence = conn.scalar(sa.text(f"SELECT pg_get_serial_sequence('{TABLE}', 'id')"))
    last, called = conn.execute(sa.text(f"SELECT last_value, is_called FROM {sequence}")).one()
    highest = conn.scalar(sa.text(f"SELECT max(id) FROM {TABLE}"))
    return max(int(last) + (1 if called else 0), int(highest or 0) + 1)


def _rename_indexes(table: str) -> None:
    """Give ``table``'s indexes its own names: index names are unique per schema."""
    pairs = [("pk_trajectories", f"{table}_pkey")] + [
        (name, f"{table}_{name.removeprefix('ix_trajectories_')}") for name, _ in INDEXES
    ]
    for old, new in pairs:
        op.execute(f'ALTER INDEX "{old}" RENAME TO "{new}"')


def upgrade() -> None:
    """Partition ``trajectories`` by id (PostgreSQL); the two new indexes (both dialects)."""
    op.create_index(REWARDS_INDEX, "rewards", ["agent_type", "created_at"])
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        _create_instance_index()
        return
    op.drop_constraint(REWARDS_FK, "rewards", type_="foreignkey")
    start = _next_id(conn)
    legacy = f"{TABLE}_p0"
    op.execute(f"ALTER TABLE {TABLE} ALTER COLUMN id DROP IDENTITY")
    op.rename_table(TABLE, legacy)
    # Index names are unique per schema: the partition's make room for the parent's.
    _rename_indexes(legacy)
    _create_trajectories(start, postgresql_partition_by="RANGE (id)")
    op.execute(
        f"ALTER TABLE {TABLE} ATTACH PARTITION {legacy} FOR VALUES FROM (MINVALUE) TO ({start})"
    )
    for n in range(PARTITIONS_AHEAD):
        low = start + n * PARTITION_ROWS
        op.execute(
            f"CREATE TABLE {TABLE}_p{low} PARTITION OF {TABLE} "
            f"FOR VALUES FROM ({low}) TO ({low + PARTITION_ROWS})"
        )
    op.execute(f"CREATE TABLE {TABLE}_default PARTITION OF {TABLE} DEFAULT")
    _create_instance_index()
    _rewards_fk()


def downgrade() -> None:
    """One plain ``trajectories`` table again, rows copied; the new indexes dropped."""
    op.drop_index(REWARDS_INDEX, table_name="rewards")
    op.drop_index(INSTANCE_INDEX, table_name=TABLE)
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    op.drop_constraint(REWARDS_FK, "rewards", type_="foreignkey")
    start = _next_id(conn)
    old = f"{TABLE}_partitioned"
    op.rename_table(TABLE, old)
    _rename_indexes(old)
    _create_trajectories(start)
    names = ", ".join(f'"{column.name}"' for column in _columns(start))
    op.execute(f"INSERT INTO {TABLE} ({names}) SELECT {names} FROM {old}")
    op.drop_table(old)
    _rewards_fk()
