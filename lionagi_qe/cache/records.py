"""The cache record format: pure byte handling, no I/O.

A record is one Redis string, so that a cache hit is a single ordinary command
(``MGET <generation> <record>``, atomic across both keys) and needs no script. Its first byte
says what it is, then comes the generation it was written under:

- ``V<gen>:<deadline>:<header length>:<header><value>`` — a value. ``deadline`` is the entry's
  expiry in ms on the Redis clock (empty: none); ``header`` is a JSON array ``[version,
  partition, created_at, updated_at, expires_at, metadata]``; ``value`` is the value's JSON
  text exactly as the database holds it (never a pickle), last so that it may hold anything.
- ``A<gen>:`` — the database had no live entry (a cached absence, distinct from a cached JSON
  ``null``, which is a ``V`` record whose value is ``null``).
- ``L<gen>:<token>`` — a lease: a reader is loading the key from the database, and only the
  holder of ``token`` may fill it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lionagi_qe import codec
from lionagi_qe.cache.source import SourceRow
from lionagi_qe.entry import MemoryEntry

__all__ = [
    "ABSENT_HIT",
    "Hit",
    "as_bytes",
    "entry_of",
    "entry_of_row",
    "header_of",
    "parse_hit",
    "value_of",
]

_VALUE = ord("V")
_ABSENT = ord("A")


@dataclass(frozen=True, slots=True)
class Hit:
    """A usable record: a value (``found``) or a cached absence.

    ``left_ms`` is set by a TTL lookup only: the ms the entry has left on the Redis clock
    (None: it never expires).
    """

    found: bool
    header: bytes = b""
    value: bytes = b""
    left_ms: int | None = None


ABSENT_HIT = Hit(False)


def as_bytes(raw: bytes | str) -> bytes:
    """Replies are bytes, unless a caller's client decodes responses."""
    return raw if isinstance(raw, bytes) else raw.encode()


def parse_hit(record: bytes | None, generation: bytes | None) -> Hit | None:
    """The record as a hit if it is a value or an absence of ``generation``; else None.

    ``generation`` None skips that check (for records a script has checked already).
    """
    if not record:
        return None
    kind = record[0]
    if kind != _VALUE and kind != _ABSENT:
        return None
    gen_end = record.find(b":", 1)
    if generation is not None and record[1:gen_end] != generation:
        return None
    if kind == _ABSENT:
        return ABSENT_HIT
    deadline_end = record.find(b":", gen_end + 1)
    length_end = record.find(b":", deadline_end + 1)
    value_start = length_end + 1 + int(record[deadline_end + 1 : length_end])
    return Hit(True, record[length_end + 1 : value_start], record[value_start:])


def header_of(row: SourceRow) -> str:
    """The header of ``row``'s value record (the metadata is embedded as the JSON it is)."""
    expires = "null" if row.expires_at is None else f'"{row.expires_at.isoformat()}"'
    partition = json.dumps(row.partition, ensure_ascii=False)
    created, updated = row.created_at.isoformat(), row.updated_at.isoformat()
    return f'[{row.version},{partition},"{created}","{updated}",{expires},{row.metadata_json}]'


def entry_of(key: str, hit: Hit) -> MemoryEntry:
    """The :class:`MemoryEntry` a value record describes."""
    version, partition, created, updated, expires, metadata = json.loads(hit.header)
    return MemoryEntry(
        key=key,
        value=codec.decode(hit.value),
        partition=partition,
        version=version,
        created_at=datetime.fromisoformat(created),
        updated_at=datetime.fromisoformat(updated),
        expires_at=None if expires is None else datetime.fromisoformat(expires),
        metadata=metadata,
    )


def entry_of_row(row: SourceRow) -> MemoryEntry:
    """The :class:`MemoryEntry` of a database row."""
    return MemoryEntry(
        key=row.key,
        value=codec.decode(row.value_json),
        partition=row.partition,
        version=row.version,
        created_at=row.created_at,
        updated_at=row.updated_at,
        expires_at=row.expires_at,
        metadata=codec.decode(row.metadata_json),
    )


def value_of(hit: Hit) -> Any:
    """The decoded value of a value record."""
    return codec.decode(hit.value)
