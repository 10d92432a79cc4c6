"""The export file format: JSON Lines, one entry per line, validated line by line.

Each line is one JSON object with exactly these fields::

    {"key": "aqe/gen-1/tests", "value": {"count": 42}, "partition": "agent_results",
     "ttl": 12.5, "metadata": {"agent": "gen-1"}}

- ``key`` (required): a key of the target's namespace (``aqe/`` by default).
- ``value`` (required): any JSON value, ``null`` included. Floats are written with Python's
  shortest round-trip form, so they read back equal (``==``); NaN and ±Infinity are refused.
- ``partition`` (default ``"default"``), ``metadata`` (an object; ``null`` or absent: ``{}``).
- ``ttl``: the seconds the entry had left *by the source server's clock* when it was exported,
  or ``null`` (never expires). Import gives the entry that much time again, counted from the
  moment it is written: a file holds no absolute expiry, so neither clock skew between machines
  nor the time a file spends on disk can kill or resurrect an entry by accident.

Lines are UTF-8, separated by ``\\n`` (JSON escapes every newline inside strings); blank lines
are ignored; an unknown field is an error (a typo would otherwise drop data silently). Every
error names its line: ``line 7: Key 'x/1' must start with 'aqe/' namespace``, raised as the
same typed error the store would raise (:class:`InvalidKeyError`, :class:`SerializationError`,
:class:`InvalidTTLError`, :class:`InvalidPartitionError`, :class:`ValueTooLargeError`, or
:class:`InvalidArgumentError` for a line that is not an object or misses a field).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lionagi_qe import codec
from lionagi_qe.entry import MemoryEntry
from lionagi_qe.errors import (
    InvalidArgumentError,
    PersistenceError,
    SerializationError,
)
from lionagi_qe.keys import validate_key, validate_partition, validate_ttl

__all__ = ["FIELDS", "Record", "decode_line", "encode_entry", "encode_record"]

#: The fields of a line, in the order they are written.
FIELDS = ("key", "value", "partition", "ttl", "metadata")
_REQUIRED = ("key", "value")

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Record:
    """One validated line: an entry to write, with its remaining TTL in seconds."""

    key: str
    value: Any
    partition: str = "default"
    ttl: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def encode_record(record: Record) -> str:
    """The line (without its newline) for ``record``.

    Raises:
        SerializationError: the value or metadata holds NaN/±Infinity or a non-JSON object.
    """
    document = {
        "key": record.key,
        "value": record.value,
        "partition": record.partition,
        "ttl": record.ttl,
        "metadata": record.metadata,
    }
    try:
        return _encoder.encode(document)
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"{record.key!r} cannot be written as JSON: {exc}") from exc


def encode_entry(entry: MemoryEntry, ttl: float | None) -> str:
    """The line (without its newline) for a stored entry with ``ttl`` seconds left."""
    return encode_record(Record(entry.key, entry.value, entry.partition, ttl, entry.metadata))


def _reject_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity; JSON (and the store) has no such values.
    raise SerializationError(f"{name} is not a JSON value")


def _at(line_number: int, exc: PersistenceError) -> PersistenceError:
    """The same error type, its message prefixed with the line number."""
    return type(exc)(f"line {line_number}: {exc}")


def decode_line(
    line: str | bytes,
    line_number: int,
    *,
    namespace: str = "aqe/",
    max_value_bytes: int | None = None,
) -> Record | None:
    """Parse and validate one line; None for a blank line.

    Everything the store would check is checked here, without I/O: the key against
    ``namespace``, the value's JSON form (and its size against ``max_value_bytes``), the
    partition label, the TTL and the metadata.

    Raises:
        PersistenceError: a typed error (see the module docstring) naming ``line_number``.
    """
    try:
        text = line.decode("utf-8") if isinstance(line, bytes) else line
        if not text.strip():
            return None
        try:
            document = json.loads(text, parse_constant=_reject_constant)
        except json.JSONDecodeError as exc:
            raise SerializationError(f"not valid JSON: {exc.msg} at column {exc.colno}") from exc
        except RecursionError as exc:
            raise SerializationError("JSON nested too deeply") from exc
        if not isinstance(document, dict):
            raise InvalidArgumentError(f"expected a JSON object, not {type(document).__name__}")
        unknown = sorted(set(document) - set(FIELDS))
        if unknown:
            raise InvalidArgumentError(
                f"unknown field {unknown[0]!r} (fields: {', '.join(FIELDS)})"
            )
        for name in _REQUIRED:
            if name not in document:
                raise InvalidArgumentError(f"missing field {name!r}")
        key = validate_key(document["key"], namespace)
        value = document["value"]
        codec.encode(value, max_value_bytes)
        partition = validate_partition(document.get("partition", "default"))
        ttl = validate_ttl(document.get("ttl"))
        metadata = document.get("metadata")
        codec.encode_metadata(metadata)
    except UnicodeDecodeError as exc:
        raise SerializationError(f"line {line_number}: not UTF-8 ({exc.reason})") from exc
    except PersistenceError as exc:
        raise _at(line_number, exc) from exc
    return Record(key, value, partition, ttl, metadata or {})
