"""What the Q-learning repositories share: the bind, per-dialect pieces, row conversion.

Repositories run Core statements over an :class:`AsyncSession` (joining the caller's unit of
work: pending ORM objects are flushed first) or an :class:`AsyncConnection`. They never commit.
They take already-validated arguments and JSON documents already encoded as text.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Double, Executable, Text, and_, bindparam, cast
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from lionagi_qe.db.sql import seconds_from_now, server_now
from lionagi_qe.models.base import JSONDocument

__all__ = [
    "Bind",
    "LearningRepository",
    "dialect_insert",
    "expired",
    "expiry",
    "json_text",
    "plain",
]

Bind = AsyncSession | AsyncConnection


def dialect_insert(dialect: str) -> Any:
    """``insert`` with ``on_conflict_do_update`` for ``dialect``."""
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


def json_text(name: str) -> ColumnElement[Any]:
    """A bound parameter holding JSON text, stored as ``jsonb`` (PostgreSQL) or TEXT (SQLite)."""
    return cast(bindparam(name, type_=Text()), JSONDocument())


def expired(expires_at: ColumnElement[datetime | None]) -> ColumnElement[bool]:
    """True for a row whose expiry has passed (server clock)."""
    return and_(expires_at.is_not(None), expires_at <= server_now())


def expiry(retain: bool) -> Any:
    """``now + :retention`` seconds, or NULL (never expires)."""
    return seconds_from_now(bindparam("retention", type_=Double())) if retain else None


def _utc(moment: datetime) -> datetime:
    # SQLite hands back naive UTC, PostgreSQL aware datetimes.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def plain(value: Any) -> Any:
    """A column value as the API returns it: aware datetimes, session ids as str."""
    if isinstance(value, datetime):
        return _utc(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


class LearningRepository:
    """Base of the Q-learning repositories: one bind, one dialect."""

    def __init__(self, bind: Bind, dialect: str) -> None:
        self._bind = bind
        self.dialect = dialect

    async def _execute(
        self, statement: Executable, params: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    ) -> Any:
        return await self._bind.execute(statement, params)

    async def _rows(
        self,
        statement: Executable,
        params: Mapping[str, Any],
        floats: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        """Rows as dicts; ``floats`` name the columns returned as ``float`` (never Decimal)."""
        result = await self._execute(statement, params)
        rows = []
        for row in result.mappings():
            item = {name: plain(value) for name, value in row.items()}
            for name in floats:
                if item[name] is not None:
                    item[name] = float(item[name])
            rows.append(item)
        return rows
