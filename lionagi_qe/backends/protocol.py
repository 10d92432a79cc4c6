"""``MemoryBackend``: the contract every backend satisfies (SPEC §3)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar, overload, runtime_checkable

from lionagi_qe.entry import MemoryEntry, ScannedEntry
from lionagi_qe.errors import InvalidArgumentError

__all__ = ["DEFAULT_SCAN_BATCH", "MemoryBackend", "ScannedEntry", "StoreItems", "scan_batch_size"]

T = TypeVar("T")

#: What ``store_many`` takes: a mapping or an iterable of ``(key, value)`` pairs.
StoreItems = Mapping[str, Any] | Iterable[tuple[str, Any]]

#: Entries ``scan`` reads per round trip unless told otherwise.
DEFAULT_SCAN_BATCH = 1000


def scan_batch_size(batch_size: object) -> int:
    """Return ``batch_size`` if it is an int >= 1, else raise InvalidArgumentError."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError("batch_size must be an int >= 1")
    return batch_size


@runtime_checkable
class MemoryBackend(Protocol):
    """An async key-value memory with TTLs, partitions, versions and glob search."""

    async def store(
        self,
        key: str,
        value: Any,
        ttl: float | None = None,
        partition: str = "default",
        *,
        metadata: Mapping[str, Any] | None = None,
        if_absent: bool = False,
        expected_version: int | None = None,
    ) -> int:
        """Upsert ``value`` under ``key``; return the entry's new version."""
        ...

    @overload
    async def retrieve(self, key: str, *, as_type: None = None, default: Any = None) -> Any: ...

    @overload
    async def retrieve(self, key: str, *, as_type: type[T], default: Any = None) -> T | Any: ...

    async def retrieve(self, key: str, *, as_type: Any = None, default: Any = None) -> Any:
        """The live value of ``key`` (validated into ``as_type``), or ``default``."""
        ...

    async def get_entry(self, key: str) -> MemoryEntry | None:
        """The live entry with its metadata, or None."""
        ...

    async def exists(self, key: str) -> bool:
        """True if ``key`` has a live entry."""
        ...

    async def ttl(self, key: str) -> float | None:
        """Seconds until ``key`` expires (None: never); KeyNotFoundError if missing."""
        ...

    async def expire(self, key: str, ttl: float) -> bool:
        """Set or replace the TTL of a live entry; False if there is none."""
        ...

    async def delete(self, key: str) -> bool:
        """Delete ``key``; True if a live entry was removed."""
        ...

    async def search(
        self, pattern: str, *, regex: bool = False, limit: int | None = None
    ) -> dict[str, Any]:
        """Live entries whose keys match ``pattern`` (glob, or ``re.search`` if ``regex``)."""
        ...

    async def list_keys(self, prefix: str | None = None) -> list[str]:
        """Live keys starting with the literal ``prefix``, in code-point order."""
        ...

    def scan(
        self, prefix: str | None = None, *, batch_size: int = DEFAULT_SCAN_BATCH
    ) -> AsyncIterator[ScannedEntry]:
        """Every live entry whose key starts with the literal ``prefix``, in code-point order.

        An async iterator that reads ``batch_size`` entries per round trip (keyset pagination on
        the key, never OFFSET), so memory stays bounded however large the store. Arguments are
        validated when ``scan`` is called (InvalidKeyError, InvalidArgumentError), before any
        I/O. Each page is a consistent read of its own; entries written or deleted while a scan
        runs may or may not be seen, but no key is yielded twice and none is expired when read.
        """
        ...

    async def store_many(
        self, items: StoreItems, ttl: float | None = None, partition: str = "default"
    ) -> int:
        """Store many entries at once (all or nothing); return how many."""
        ...

    async def retrieve_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The live entries among ``keys``."""
        ...

    async def increment(self, key: str, delta: int | float = 1, ttl: float | None = None) -> Any:
        """Add ``delta`` to a numeric entry atomically (creating it at ``delta``)."""
        ...

    async def clear_partition(self, partition: str) -> int:
        """Delete every live entry labelled ``partition``; return how many."""
        ...

    async def get_stats(self) -> dict[str, Any]:
        """Counts, sizes and backend details."""
        ...

    async def cleanup_expired(self) -> int:
        """Physically remove expired entries; return how many."""
        ...

    async def close(self) -> None:
        """Release connections; later calls raise ClosedError."""
        ...

    async def __aenter__(self) -> Self:
        """Enter ``async with``."""
        ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close on leaving ``async with``."""
        ...
