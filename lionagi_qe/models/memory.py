"""Memory tables: ``partitions`` (labels) and ``qe_memory`` (one row per key)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column

from lionagi_qe.models.base import Base, CodePointString, JSONDocument

__all__ = ["MemoryEntry", "Partition"]


class Partition(Base):
    """A partition label that memory entries reference."""

    __tablename__ = "partitions"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class MemoryEntry(Base):
    """One stored value; a row whose ``expires_at`` has passed is dead even before it is swept."""

    __tablename__ = "qe_memory"

    key: Mapped[str] = mapped_column(CodePointString(255), primary_key=True)
    value: Mapped[Any] = mapped_column(JSONDocument(exact=True))
    partition: Mapped[str] = mapped_column(
        String(64),
        ForeignKey("partitions.name", onupdate="CASCADE"),
        server_default=text("'default'"),
    )
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONDocument(exact=True), server_default=text("'{}'")
    )
    version: Mapped[int] = mapped_column(BigInteger, server_default=text("1"))
    size_bytes: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
    expires_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        Index("ix_qe_memory_partition", "partition"),
        Index(
            "ix_qe_memory_expires_at",
            "expires_at",
            postgresql_where=text("expires_at IS NOT NULL"),
            sqlite_where=text("expires_at IS NOT NULL"),
        ),
    )
