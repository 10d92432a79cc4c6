"""Memory: partitions and qe_memory.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model types: revisions never import code that may change later.
# Values are kept as written: PostgreSQL ``json``, not ``jsonb`` (which rewrites numbers).
JSON_DOCUMENT = sa.Text().with_variant(postgresql.JSON(), "postgresql")
KEY = sa.String(length=255).with_variant(sa.String(length=255, collation="C"), "postgresql")
NOW = sa.func.now()
LIVE_EXPIRY = sa.text("expires_at IS NOT NULL")


def upgrade() -> None:
    """Create the memory tables and the ``default`` partition."""
    partitions = op.create_table(
        "partitions",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_partitions")),
    )
    op.bulk_insert(partitions, [{"name": "default", "description": "Default partition"}])
    op.create_table(
        "qe_memory",
        sa.Column("key", KEY, nullable=False),
        sa.Column("value", JSON_DOCUMENT, nullable=False),
        sa.Column(
            "partition", sa.String(length=64), server_default=sa.text("'default'"), nullable=False
        ),
        sa.Column("metadata", JSON_DOCUMENT, server_default=sa.text("'{}'"), nullable=False),
        sa.Column("version", sa.BigInteger(), server_default=sa.text("1"), nullable=False),
        sa.Column("size_bytes", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["partition"],
            ["partitions.name"],
            onupdate="CASCADE",
            name=op.f("fk_qe_memory_partition_partitions"),
        ),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_qe_memory")),
    )
    op.create_index(
        "ix_qe_memory_expires_at",
        "qe_memory",
        ["expires_at"],
        postgresql_where=LIVE_EXPIRY,
        sqlite_where=LIVE_EXPIRY,
    )
    op.create_index("ix_qe_memory_partition", "qe_memory", ["partition"])


def downgrade() -> None:
    """Drop the memory tables."""
    op.drop_index("ix_qe_memory_partition", table_name="qe_memory")
    op.drop_index("ix_qe_memory_expires_at", table_name="qe_memory")
    op.drop_table("qe_memory")
    op.drop_table("partitions")
