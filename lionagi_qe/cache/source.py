"""What a cache fill reads from the database: live rows with the time they have left.

A fill needs, in one statement, the row *and* how long it has left by the database clock
(``seconds_until(expires_at)``): reading ``expires_at`` and comparing it with the application's
clock would let a cache entry outlive the row when the clocks disagree, and two statements
(``get_entry`` then ``ttl``) could straddle a write. No public method of
:class:`~lionagi_qe.backends.sql.PostgresMemory` returns both, so this module runs its own
statement through the memory's repository context (which brings connect-on-first-use, the
schema check, the session mode and the translation of driver errors). Once the repository offers
``get_entries_with_remaining(keys)`` this module shrinks to a call of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import ARRAY, Executable, Table, Text, bindparam, cast, func, select

from lionagi_qe.backends.sql import PostgresMemory
from lionagi_qe.db.sql import is_live, seconds_until
from lionagi_qe.models.memory import MemoryEntry as MemoryRow

__all__ = ["SourceRow", "read_rows"]

_t: Table = MemoryRow.__table__  # type: ignore[assignment]
_c = _t.c


@dataclass(frozen=True, slots=True)
class SourceRow:
    """A live row as the database returned it (value and metadata still JSON text)."""

    key: str
    value_json: str
    partition: str
    metadata_json: str
    version: int
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    #: Seconds the entry had left by the database clock when read; None: it never expires.
    remaining: float | None


@dataclass(frozen=True, slots=True)
class _Statements:
    one: Executable
    many: Executable


@lru_cache(maxsize=4)
def _statements(dialect: str) -> _Statements:
    columns = (
        _c.key,
        cast(_c.value, Text()),
        _c.partition,
        cast(_c.metadata, Text()),
        _c.version,
        _c.created_at,
        _c.updated_at,
        _c.expires_at,
        seconds_until(_c.expires_at),
    )
    live = is_live(_c.expires_at)
    one = select(*columns).where(_c.key == bindparam("b_key", type_=Text()), live)
    if dialect == "postgresql":
        many = select(*columns).where(
            _c.key == func.any(bindparam("keys", type_=ARRAY(Text()))), live
        )
    else:
        many = select(*columns).where(_c.key.in_(bindparam("keys", expanding=True)), live)
    return _Statements(one, many)


def _utc(moment: datetime) -> datetime:
    # SQLite hands back naive UTC; PostgreSQL aware datetimes.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _row(row: Any) -> SourceRow:
    remaining = None if row[8] is None else max(float(row[8]), 0.0)
    return SourceRow(
        key=row[0],
        value_json=row[1],
        partition=row[2],
        metadata_json=row[3],
        version=int(row[4]),
        created_at=_utc(row[5]),
        updated_at=_utc(row[6]),
        expires_at=None if row[7] is None else _utc(row[7]),
        remaining=remaining,
    )


async def read_rows(database: PostgresMemory, keys: Sequence[str]) -> dict[str, SourceRow]:
    """The live rows among ``keys`` (validated keys), in one statement.

    Raises what :class:`PostgresMemory` raises for the same failure (``ClosedError``,
    ``BackendUnavailableError``, ``SchemaMissingError``…).
    """
    if not keys:
        return {}
    sql = _statements(database.dialect)
    async with database._repository() as repo:
        connection = await repo._connection()
        if len(keys) == 1:
            result = await connection.execute(sql.one, {"b_key": keys[0]})
        else:
            result = await connection.execute(sql.many, {"keys": list(keys)})
        rows = [_row(row) for row in result]
    return {row.key: row for row in rows}
