"""Declarative base: one ``MetaData`` with a naming convention and a small type map."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Dialect, Double, MetaData, String, Text
from sqlalchemy.dialects.postgresql import JSON, JSONB
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator, TypeEngine

__all__ = ["Base", "CodePointString", "JSONDocument", "Timestamp"]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class JSONDocument(TypeDecorator[Any]):
    """A JSON document: ``jsonb`` (or ``json`` when ``exact``) on PostgreSQL, TEXT on SQLite.

    Not SQLite's ``JSON``: a column declared ``JSON`` has NUMERIC affinity there, which would
    turn the stored text ``0.30000000000000004`` into a REAL and read it back as ``0.3``.

    ``exact=True`` keeps the document's text as written (PostgreSQL ``json``): ``jsonb`` rewrites
    numbers (``1e16`` reads back as the integer ``10000000000000000``, the largest double as a
    309-digit integer) and reorders keys, so stored values could not round-trip exactly.
    """

    impl = Text
    cache_ok = True

    def __init__(self, exact: bool = False) -> None:
        super().__init__()
        self.exact = exact

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        """``jsonb``/``json`` on PostgreSQL, TEXT elsewhere."""
        if dialect.name == "postgresql":
            return dialect.type_descriptor(JSON() if self.exact else JSONB())
        return dialect.type_descriptor(Text())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        """Encode to JSON text where the dialect stores text."""
        if dialect.name == "postgresql" or value is None:
            return value
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        """Decode JSON text where the dialect stores text."""
        if dialect.name == "postgresql" or value is None:
            return value
        return json.loads(value)


#: Timestamps are always timezone-aware UTC.
Timestamp = DateTime(timezone=True)


def CodePointString(length: int) -> TypeEngine[str]:
    """A string ordered by code point: ``COLLATE "C"`` on PostgreSQL, SQLite's BINARY default."""
    return String(length).with_variant(String(length, collation="C"), "postgresql")


class Base(DeclarativeBase):
    """Base class of every lionagi_qe table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {  # noqa: RUF012 - SQLAlchemy reads this class attribute
        datetime: Timestamp,
        float: Double(),
        dict[str, Any]: JSONDocument(),
    }
