"""The public view of one stored entry, as ``get_entry`` returns it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["MemoryEntry"]


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
