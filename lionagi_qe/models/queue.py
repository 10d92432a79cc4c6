"""The work queue table: ``queue_jobs``, one row per job (PostgreSQL, or SQLite on one machine)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, Index, Integer, String, Text, Uuid, column, func, text
from sqlalchemy.orm import Mapped, mapped_column

from lionagi_qe.models.base import Base, JSONDocument

__all__ = ["JOB_STATES", "LIVE_STATES", "QueueJob"]

#: Every state a job can be in.
JOB_STATES = ("queued", "active", "done", "failed", "dead")
#: States in which a dedupe key is taken.
LIVE_STATES = ("queued", "active")

_LIVE_WITH_KEY = text("dedupe_key IS NOT NULL AND state IN ('queued', 'active')")
_QUEUED = text("state = 'queued'")
_ACTIVE = text("state = 'active'")
_FINISHED = text("state IN ('done', 'dead')")


class QueueJob(Base):
    """A job in a named queue: payload, priority, lease and outcome."""

    __tablename__ = "queue_jobs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True, default=uuid.uuid4)
    queue: Mapped[str] = mapped_column(String(255))
    payload: Mapped[Any] = mapped_column(JSONDocument())
    priority: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    state: Mapped[str] = mapped_column(String(16), server_default=text("'queued'"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    max_attempts: Mapped[int] = mapped_column(Integer, server_default=text("5"))
    dedupe_key: Mapped[str | None] = mapped_column(String(255))
    available_at: Mapped[datetime] = mapped_column(server_default=func.now())
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    result: Mapped[Any | None] = mapped_column(JSONDocument())
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        CheckConstraint("state IN ('queued', 'active', 'done', 'failed', 'dead')", name="state"),
        CheckConstraint("max_attempts >= 1", name="max_attempts"),
        # A live job's dedupe key is taken; once it finishes the key may be enqueued again.
        # Only jobs with a key are in it, so claims (state = 'queued') never match it.
        Index(
            "ix_queue_jobs_queue_dedupe_key",
            "queue",
            "dedupe_key",
            unique=True,
            postgresql_where=_LIVE_WITH_KEY,
            sqlite_where=_LIVE_WITH_KEY,
        ),
        # claim: the next queued job in order, however many finished jobs the table holds.
        Index(
            "ix_queue_jobs_claim",
            "queue",
            column("priority").desc(),
            "available_at",
            "created_at",
            postgresql_where=_QUEUED,
            sqlite_where=_QUEUED,
        ),
        # claim of lapsed leases: only active jobs, by lease expiry.
        Index(
            "ix_queue_jobs_lease",
            "queue",
            "lease_expires_at",
            postgresql_where=_ACTIVE,
            sqlite_where=_ACTIVE,
        ),
        # purge: finished jobs by age.
        Index(
            "ix_queue_jobs_finished",
            "queue",
            "finished_at",
            postgresql_where=_FINISHED,
            sqlite_where=_FINISHED,
        ),
    )
