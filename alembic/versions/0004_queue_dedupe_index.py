"""Work queue: the dedupe index covers only jobs that have a dedupe key.

The unique index on ``(queue, dedupe_key)`` for live jobs also matched every claim (its predicate,
``state IN ('queued', 'active')``, is implied by the claim's ``state = 'queued'``). On a queue
filled faster than autovacuum analyses it, the planner estimated one row, took that index and
sorted the whole queue on each claim (7 ms per claim at 10,000 jobs). With ``dedupe_key IS NOT
NULL`` in its predicate the index no longer applies to claims, and it is smaller.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_queue_jobs_queue_dedupe_key"
LIVE = "state IN ('queued', 'active')"
LIVE_WITH_KEY = "dedupe_key IS NOT NULL AND state IN ('queued', 'active')"


def _create(where: str) -> None:
    predicate = sa.text(where)
    op.create_index(
        INDEX,
        "queue_jobs",
        ["queue", "dedupe_key"],
        unique=True,
        postgresql_where=predicate,
        sqlite_where=predicate,
    )


def upgrade() -> None:
    """Rebuild the dedupe index with ``dedupe_key IS NOT NULL`` in its predicate."""
    op.drop_index(INDEX, table_name="queue_jobs")
    _create(LIVE_WITH_KEY)


def downgrade() -> None:
    """Back to the 0003 predicate."""
    op.drop_index(INDEX, table_name="queue_jobs")
    _create(LIVE)
