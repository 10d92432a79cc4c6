"""What every backend shares: argument validation, encoding, search planning and lifecycle.

Everything here runs before any I/O, so bad input is refused with a typed error and changes
nothing.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from lionagi_qe import codec
from lionagi_qe.errors import (
    ClosedError,
    InvalidArgumentError,
    InvalidKeyError,
    VersionConflictError,
)
from lionagi_qe.keys import (
    GlobPattern,
    compile_glob,
    compile_regex,
    prefix_upper_bound,
    validate_key,
    validate_partition,
    validate_prefix,
    validate_ttl,
)

__all__ = ["DEFAULT_MAX_VALUE_BYTES", "EncodedItem", "KeyRange", "MemoryBase", "StoreRequest"]

DEFAULT_MAX_VALUE_BYTES = 8 * 1024 * 1024
#: Values validated and encoded between two yields to the event loop in big batches.
ENCODE_SLICE = 256
#: Integers a counter can hold on every backend (Redis and SQLite are 64-bit).
_INT64 = 2**63


@dataclass(frozen=True, slots=True)
class KeyRange:
    """A half-open key range ``[lower, upper)`` in code-point order."""

    lower: str
    upper: str


@dataclass(frozen=True, slots=True)
class EncodedItem:
    """A validated key with its value's JSON text and stored size."""

    key: str
    value_json: str
    size_bytes: int


@dataclass(frozen=True, slots=True)
class StoreRequest:
    """A validated ``store`` call: what every backend writes, and how a failed condition reads."""

    item: EncodedItem
    ttl: float | None
    partition: str
    metadata_json: str
    if_absent: bool
    expected_version: int | None

    def conflict(self) -> VersionConflictError:
        """The error for a write whose condition did not hold."""
        if self.if_absent:
            return VersionConflictError(f"{self.item.key!r} already has a live entry")
        return VersionConflictError(
            f"{self.item.key!r} is not at version {self.expected_version} (or has no live entry)"
        )


def entry_size(key: str, value_json: str) -> int:
    """Bytes an entry counts for in ``size_bytes``: its key plus its value's JSON, UTF-8."""
    key_bytes = len(key) if key.isascii() else len(key.encode("utf-8"))
    value_bytes = len(value_json) if value_json.isascii() else len(value_json.encode("utf-8"))
    return key_bytes + value_bytes


class MemoryBase:
    """Validation and lifecycle shared by the SQL, Redis and cached backends."""

    backend_name = "base"

    def __init__(self, *, namespace: str = "aqe/", max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES):
        if not isinstance(namespace, str) or not namespace:
            raise InvalidKeyError("namespace must be a non-empty str")
        upper = prefix_upper_bound(namespace)
        if upper is None:
            raise InvalidKeyError("namespace has no upper bound")
        if max_value_bytes < 1:
            raise InvalidArgumentError("max_value_bytes must be positive")
        self.namespace = namespace
        self.max_value_bytes = max_value_bytes
        self._namespace_range = KeyRange(namespace, upper)
        self._closed = False

    # -- validation -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"this {type(self).__name__} is closed")

    def _key(self, key: object) -> str:
        return validate_key(key, self.namespace)

    def _encode(self, value: Any) -> str:
        return codec.encode(value, self.max_value_bytes)

    def _item(self, key: object, value: Any) -> EncodedItem:
        checked = self._key(key)
        value_json = self._encode(value)
        return EncodedItem(checked, value_json, entry_size(checked, value_json))

    def _items(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> list[EncodedItem]:
        """Validate and encode a batch; the last value of a repeated key wins."""
        shape = "items must be a mapping or an iterable of (key, value)"
        if isinstance(items, Mapping):
            pairs: Iterable[Any] = items.items()
        elif isinstance(items, str | bytes):
            raise InvalidArgumentError(shape)
        else:
            try:
                pairs = iter(items)
            except TypeError:
                raise InvalidArgumentError(shape) from None
        batch: dict[str, EncodedItem] = {}
        for pair in pairs:
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise InvalidArgumentError(shape)
            item = self._item(pair[0], pair[1])
            batch.pop(item.key, None)
            batch[item.key] = item
        return list(batch.values())

    async def _items_yielding(
        self, items: Mapping[str, Any] | Iterable[tuple[str, Any]]
    ) -> list[EncodedItem]:
        """:meth:`_items` for big batches: lets the event loop run between slices of
        ``ENCODE_SLICE`` items, so encoding 10,000 values never stalls other tasks."""
        if isinstance(items, Mapping):
            pairs: list[Any] = list(items.items())
        elif isinstance(items, str | bytes):
            return self._items(items)  # raises the shape error
        else:
            try:
                pairs = list(items)
            except TypeError:
                return self._items(items)
        if len(pairs) <= ENCODE_SLICE:
            return self._items(pairs)
        batch: dict[str, EncodedItem] = {}
        for start in range(0, len(pairs), ENCODE_SLICE):
            if start:
                await asyncio.sleep(0)
            for item in self._items(pairs[start : start + ENCODE_SLICE]):
                batch.pop(item.key, None)
                batch[item.key] = item
        return list(batch.values())

    def _store_request(
        self,
        key: object,
        value: Any,
        ttl: object,
        partition: object,
        metadata: Any,
        if_absent: object,
        expected_version: object,
    ) -> StoreRequest:
        """Validate and encode every argument of ``store`` (before any I/O)."""
        item = self._item(key, value)
        seconds = self._ttl(ttl)
        label = self._partition(partition)
        metadata_json = self._metadata(metadata)
        expected = self._conditions(if_absent, expected_version)
        return StoreRequest(item, seconds, label, metadata_json, bool(if_absent), expected)

    def _keys(self, keys: Iterable[str]) -> list[str]:
        if isinstance(keys, str | bytes):
            raise InvalidArgumentError("keys must be an iterable of keys, not a single str")
        try:
            iterator = iter(keys)
        except TypeError:
            raise InvalidArgumentError("keys must be an iterable of keys") from None
        return list(dict.fromkeys(self._key(key) for key in iterator))

    @staticmethod
    def _ttl(ttl: object) -> float | None:
        return validate_ttl(ttl)

    @staticmethod
    def _required_ttl(ttl: object) -> float:
        seconds = validate_ttl(ttl, allow_none=False)
        assert seconds is not None
        return seconds

    @staticmethod
    def _partition(partition: object) -> str:
        return validate_partition(partition)

    @staticmethod
    def _metadata(metadata: Any) -> str:
        return codec.encode_metadata(metadata)

    @staticmethod
    def _conditions(if_absent: object, expected_version: object) -> int | None:
        if not isinstance(if_absent, bool):
            raise InvalidArgumentError("if_absent must be a bool")
        if expected_version is None:
            return None
        if isinstance(expected_version, bool) or not isinstance(expected_version, int):
            raise InvalidArgumentError("expected_version must be an int")
        if expected_version < 1:
            raise InvalidArgumentError("expected_version must be >= 1")
        if if_absent:
            raise InvalidArgumentError("if_absent and expected_version cannot be combined")
        return expected_version

    @staticmethod
    def _delta(delta: object) -> int | float:
        if isinstance(delta, bool) or not isinstance(delta, int | float):
            raise InvalidArgumentError(f"delta must be an int or float, not {type(delta).__name__}")
        if isinstance(delta, int):
            if not -_INT64 <= delta < _INT64:
                raise InvalidArgumentError("integer delta must fit in 64 bits")
        elif not math.isfinite(delta):
            raise InvalidArgumentError("delta must be finite")
        return delta

    @staticmethod
    def _limit(limit: object) -> int | None:
        if limit is None:
            return None
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise InvalidArgumentError("limit must be a non-negative int or None")
        return limit

    @staticmethod
    def _as_number(value: Any) -> int | float:
        """Decode a counter value read back from the store."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidArgumentError("counter value is not a number")
        return value

    # -- key ranges -------------------------------------------------------------------------

    def _prefix_range(self, prefix: str) -> KeyRange | None:
        """The key range of ``prefix`` within the namespace, or None if they do not overlap."""
        if prefix.startswith(self.namespace):
            upper = prefix_upper_bound(prefix)
            return KeyRange(prefix, upper) if upper is not None else None
        if self.namespace.startswith(prefix):
            return self._namespace_range
        return None

    def _list_range(self, prefix: object) -> KeyRange | None:
        return self._prefix_range(validate_prefix(prefix))

    def _glob(self, pattern: object) -> tuple[GlobPattern, KeyRange | None]:
        glob = compile_glob(pattern)  # type: ignore[arg-type,unused-ignore]
        return glob, self._prefix_range(glob.literal_prefix)

    @staticmethod
    def _regex(pattern: object) -> Any:
        return compile_regex(pattern)  # type: ignore[arg-type,unused-ignore]

    # -- lifecycle --------------------------------------------------------------------------

    async def close(self) -> None:
        """Release resources; every later call raises ClosedError."""
        self._closed = True

    async def __aenter__(self) -> Self:
        """Enter ``async with``."""
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close on leaving ``async with``."""
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} namespace={self.namespace!r} {state}>"
