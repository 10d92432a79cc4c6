"""Work queue: ``queue_jobs`` with its claim, lease, dedupe and purge indexes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_DOCUMENT = sa.Text().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)
NOW = sa.func.now()
ZERO = sa.text("0")
LIVE = sa.text("state IN ('queued', 'active')")
QUEUED = sa.text("state = 'queued'")
ACTIVE = sa.text("state = 'active'")
FINISHED = sa.text("state IN ('done', 'dead')")


def _partial(where: sa.TextClause) -> dict[str, sa.TextClause]:
    return {"postgresql_where": where, "sqlite_where": where}


def upgrade() -> None:
    """Create ``queue_jobs`` and its indexes."""
    op.create_table(
        "queue_jobs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("queue", sa.String(length=255), nullable=False),
        sa.Column("payload", JSON_DOCUMENT, nullable=False),
        sa.Column("priority", sa.Integer(), server_default=ZERO, nullable=False),
        sa.Column(
            "state", sa.String(length=16), server_default=sa.text("'queued'"), nullable=False
        ),
        sa.Column("attempts", sa.Integer(), server_default=ZERO, nullable=False),
        sa.Column("max_attempts", sa.Integer(), server_default=sa.text("5"), nullable=False),
        sa.Column("dedupe_key", sa.String(length=255), nullable=True),
        sa.Column("available_at", TIMESTAMP, server_default=NOW, nullable=False),
        sa.Column("lease_owner", sa.String(length=255), nullable=True),
        sa.Column("lease_expires_at", TIMESTAMP, nullable=True),
        sa.Column("result", JSON_DOCUMENT, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, server_default=NOW, nullable=False),
        sa.Column("updated_at", TIMESTAMP, server_default=NOW, nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.CheckConstraint(
            "state IN ('queued', 'active', 'done', 'failed', 'dead')",
            name=op.f("ck_queue_jobs_state"),
        ),
        sa.CheckConstraint("max_attempts >= 1", name=op.f("ck_queue_jobs_max_attempts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_queue_jobs")),
    )
    op.create_index(
        "ix_queue_jobs_queue_dedupe_key",
        "queue_jobs",
        ["queue", "dedupe_key"],
        unique=True,
        **_partial(LIVE),
    )
    op.create_index(
        "ix_queue_jobs_claim",
        "queue_jobs",
        ["queue", sa.column("priority").desc(), "available_at", "created_at"],
        **_partial(QUEUED),
    )
    op.create_index(
        "ix_queue_jobs_lease", "queue_jobs", ["queue", "lease_expires_at"], **_partial(ACTIVE)
    )
    op.create_index(
        "ix_queue_jobs_finished", "queue_jobs", ["queue", "finished_at"], **_partial(FINISHED)
    )


def downgrade() -> None:
    """Drop ``queue_jobs``."""
    op.drop_index("ix_queue_jobs_finished", table_name="queue_jobs")
    op.drop_index("ix_queue_jobs_lease", table_name="queue_jobs")
    op.drop_index("ix_queue_jobs_claim", table_name="queue_jobs")
    op.drop_index("ix_queue_jobs_queue_dedupe_key", table_name="queue_jobs")
    op.drop_table("queue_jobs")
