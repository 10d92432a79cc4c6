"""The public view of one stored entry, as ``get_entry`` returns it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["MemoryEntry", "ScannedEntry"]


class MemoryEntry(BaseModel):
    """A live entry: its value plus partition, version, timestamps, expiry and metadata.

    ``version`` starts at 1 and grows with every write (store, increment, expire); an entry
    that expired and is written again starts over at 1. Timestamps are UTC and come from the
    server clock.
    """

    model_config = ConfigDict(frozen=True)

    key: str
    value: Any
    partition: str = "default"
    version: int
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class ScannedEntry(MemoryEntry):
    """A live entry as ``scan`` yields it: a :class:`MemoryEntry` plus its remaining TTL.

    ``ttl`` is the seconds the entry had left by the *server* clock when its page was read
    (PostgreSQL ``statement_timestamp()``, SQLite ``'now'``, Redis ``PTTL``), or None if it
    never expires. It is read in the same round trip as the row, so it does not depend on the
    application clock or on clock skew between this process and the server. ``read_at`` is
    this process's ``time.monotonic()`` when the page arrived, so a consumer that holds an
    entry for a while knows its remaining time later: ``ttl - (time.monotonic() - read_at)``.
    """

    ttl: float | None = None
    read_at: float = 0.0
