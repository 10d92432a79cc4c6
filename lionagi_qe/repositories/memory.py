"""SQL for the memory table: statements built once per dialect, run over a session or connection.

The repository speaks in already-validated, already-encoded values (JSON text) and raw rows;
:class:`~lionagi_qe.backends.sql.PostgresMemory` does validation, encoding and error mapping.
It never commits: over a session it joins the caller's unit of work, over an autocommit
connection each statement is its own transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Double,
    Executable,
    Integer,
    LargeBinary,
    Table,
    Text,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.types import TypeEngine

from lionagi_qe.db.direct import BoundRunner, DirectRunner
from lionagi_qe.db.sql import is_live, json_param, seconds_from_now, seconds_until, server_now
from lionagi_qe.models.memory import MemoryEntry, Partition

__all__ = ["EntryRow", "MemoryRepository", "StoreRow", "UpsertRow"]

#: Rows per statement of ``store_many`` on PostgreSQL (all of them in one transaction).
STORE_MANY_CHUNK = 2000
#: Rows per executemany of ``store_many`` on SQLite (see ``store_many``).
SQLITE_STORE_MANY_CHUNK = 400

_t: Table = MemoryEntry.__table__  # type: ignore[assignment]
_p: Table = Partition.__table__  # type: ignore[assignment]
_c = _t.c


@dataclass(frozen=True, slots=True)
class EntryRow:
    """A live row as read from the table (value still JSON text)."""

    key: str
    value_json: str
    partition: str
    metadata_json: str
    version: int
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    #: Seconds the entry had left by the database clock when read; None: it never expires.
    remaining: float | None = None


@dataclass(frozen=True, slots=True)
class StoreRow:
    """One row for ``store_many``."""

    key: str
    value_json: str
    size_bytes: int


def _utc(moment: datetime | None) -> datetime | None:
    # SQLite hands back naive UTC; PostgreSQL aware datetimes.
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _entry_row(row: Any) -> EntryRow:
    return EntryRow(
        key=row[0],
        value_json=row[1],
        partition=row[2],
        metadata_json=row[3],
        version=int(row[4]),
        created_at=_utc(row[5]) or row[5],
        updated_at=_utc(row[6]) or row[6],
        expires_at=_utc(row[7]),
        remaining=None if row[8] is None else max(float(row[8]), 0.0),
    )


def _ttl_expr(with_ttl: bool) -> Any:
    return seconds_from_now(bindparam("ttl", type_=Double())) if with_ttl else None


def _expired() -> Any:
    return and_(_c.expires_at.is_not(None), _c.expires_at <= server_now())


def _in_range(with_upper: bool) -> Any:
    lower = _c.key >= bindparam("lower", type_=Text())
    return and_(lower, _c.key < bindparam("upper", type_=Text())) if with_upper else lower


class _Statements:
    """Every statement the repository runs, built once for one dialect."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        value_text = cast(_c.value, Text())
        self.ensure_partition = (
            insert(_p).values(name=bindparam("b_partition")).on_conflict_do_nothing()
        )

        self.upsert: dict[tuple[bool, bool], Executable] = {}
        self.upsert_many: dict[bool, Executable] = {}
        self.update_if_version: dict[bool, Executable] = {}
        for with_ttl in (False, True):
            ins = insert(_t).values(
                key=bindparam("b_key"),
                value=json_param(bindparam("b_value", type_=Text())),
                partition=bindparam("b_partition"),
                metadata=json_param(bindparam("b_metadata", type_=Text())),
                version=1,
                size_bytes=bindparam("b_size_bytes", type_=Integer()),
                created_at=server_now(),
                updated_at=server_now(),
                expires_at=_ttl_expr(with_ttl),
            )
            excluded = ins.excluded
            changes = {
                "value": excluded.value,
                "partition": excluded.partition,
                "metadata": excluded.metadata,
                "size_bytes": excluded.size_bytes,
                "version": case((_expired(), 1), else_=_c.version + 1),
                "created_at": case((_expired(), excluded.created_at), else_=_c.created_at),
                "updated_at": excluded.updated_at,
                "expires_at": excluded.expires_at,
            }
            for if_absent in (False, True):
                upsert = ins.on_conflict_do_update(
                    index_elements=[_c.key],
                    set_=changes,
                    where=_expired() if if_absent else None,
                )
                self.upsert[with_ttl, if_absent] = upsert.returning(_c.version)
                if not if_absent:
                    # executemany (SQLite's store_many) cannot return rows.
                    self.upsert_many[with_ttl] = upsert
            self.update_if_version[with_ttl] = (
                update(_t)
                .where(
                    _c.key == bindparam("b_key"),
                    _c.version == bindparam("expected_version", type_=BigInteger()),
                    is_live(_c.expires_at),
                )
                .values(
                    value=json_param(bindparam("b_value", type_=Text())),
                    partition=bindparam("b_partition"),
                    metadata=json_param(bindparam("b_metadata", type_=Text())),
                    size_bytes=bindparam("b_size_bytes", type_=Integer()),
                    version=_c.version + 1,
                    updated_at=server_now(),
                    expires_at=_ttl_expr(with_ttl),
                )
                .returning(_c.version)
            )

        by_key = _c.key == bindparam("b_key")
        live = is_live(_c.expires_at)
        self.get_value = select(value_text).where(by_key, live)
        entry_columns = (
            _c.key,
            value_text,
            _c.partition,
            cast(_c.metadata, Text()),
            _c.version,
            _c.created_at,
            _c.updated_at,
            _c.expires_at,
            seconds_until(_c.expires_at),
        )
        self.get_entry = select(*entry_columns).where(by_key, live)
        # scan: keyset pages over [lower, upper), the first from ``lower``, each next one after
        # the last key seen; the remaining TTL comes from the database clock in the same row.
        self.scan: dict[bool, Executable] = {}
        for after in (False, True):
            start = (
                _c.key > bindparam("after", type_=Text())
                if after
                else _c.key >= bindparam("lower", type_=Text())
            )
            self.scan[after] = (
                select(*entry_columns)
                .where(start, _c.key < bindparam("upper", type_=Text()), live)
                .order_by(_c.key)
                .limit(bindparam("limit", type_=Integer()))
            )
        self.exists = select(literal(1)).where(by_key, live)
        self.ttl = select(_c.expires_at.is_(None), seconds_until(_c.expires_at)).where(by_key, live)
        self.expire = (
            update(_t)
            .where(by_key, live)
            .values(expires_at=_ttl_expr(True), version=_c.version + 1, updated_at=server_now())
            .returning(_c.version)
        )
        # Only a live row counts as deleted; an expired one is left for cleanup_expired. (SQLite
        # 3.40 also evaluates "expires_at IS NULL" wrongly in a DELETE's RETURNING clause.)
        self.delete = delete(_t).where(by_key, live).returning(literal(1))

        self.search: dict[tuple[bool, str | None, bool], Executable] = {}
        self.list_keys: dict[bool, Executable] = {}
        matchers = {
            None: None,
            "regex": _c.key.regexp_match(bindparam("match", type_=Text())),
            "glob": _c.key.op("GLOB")(bindparam("match", type_=Text())),
        }
        for with_upper in (False, True):
            where = and_(_in_range(with_upper), live)
            self.list_keys[with_upper] = select(_c.key).where(where).order_by(_c.key)
            for kind, matcher in matchers.items():
                if dialect != "postgresql" and kind == "regex":
                    continue
                for with_limit in (False, True):
                    stmt = select(_c.key, value_text).where(where)
                    if matcher is not None:
                        stmt = stmt.where(matcher)
                    stmt = stmt.order_by(_c.key)
                    if with_limit:
                        stmt = stmt.limit(bindparam("limit", type_=Integer()))
                    self.search[with_upper, kind, with_limit] = stmt

        if dialect == "postgresql":
            among_keys = _c.key == func.any(bindparam("keys", type_=ARRAY(Text())))
        else:
            among_keys = _c.key.in_(bindparam("keys", expanding=True))
        self.retrieve_many: Executable = select(_c.key, value_text).where(among_keys, live)
        self.get_entries: Executable = select(*entry_columns).where(among_keys, live)

        partition_expired = and_(_c.partition == bindparam("b_partition"), _in_range(True))
        self.clear_expired_in_partition = delete(_t).where(partition_expired, _expired())
        self.clear_live_in_partition = delete(_t).where(partition_expired, live)

        in_ns = _in_range(True)
        self.count_live = select(func.count(), func.coalesce(func.sum(_c.size_bytes), 0)).where(
            in_ns, live
        )
        self.count_expired = select(func.count()).where(in_ns, _expired())
        self.partition_counts = (
            select(_c.partition, func.count()).where(in_ns, live).group_by(_c.partition)
        )
        victims = select(_c.key).where(in_ns, _expired()).limit(bindparam("batch", type_=Integer()))
        if dialect == "postgresql":
            victims = victims.with_for_update(skip_locked=True)
        self.cleanup_batch = delete(_t).where(_c.key.in_(victims.scalar_subquery()))
        self.set_counter_text = (
            update(_t)
            .where(by_key)
            .values(
                value=json_param(bindparam("b_value", type_=Text())),
                size_bytes=func.length(cast(_c.key, LargeBinary()))
                + func.length(cast(bindparam("b_value", type_=Text()), LargeBinary())),
            )
        )
        self.increment = {is_int: _increment_statement(dialect, is_int) for is_int in (False, True)}
        self.increment_ttl = {
            is_int: _increment_statement(dialect, is_int, with_ttl=True) for is_int in (False, True)
        }


def _increment_statement(dialect: str, delta_is_int: bool, *, with_ttl: bool = False) -> Executable:
    """The atomic counter upsert: one statement, arithmetic done by the database.

    Integers stay integers (int + int); any float makes the result a float rendered so that it
    reads back as the same double. The ``WHERE`` refuses a live non-numeric value: no row comes
    back and the caller raises.
    """
    expired = "(qe_memory.expires_at IS NOT NULL AND qe_memory.expires_at <= {now})"
    if dialect == "postgresql":
        now = "statement_timestamp()"
        expires = "statement_timestamp() + make_interval(secs => :ttl)" if with_ttl else "NULL"
        as_float = (
            "(CAST(qe_memory.value::text AS DOUBLE PRECISION) + CAST(:delta AS DOUBLE PRECISION))"
        )
        # Python's repr of the sum: float8 text has the same shortest digits, but PostgreSQL
        # writes exponents from 1e15 where Python does from 1e16, and no ".0" on integers.
        plain = f"CAST(CAST({as_float}::text AS NUMERIC) AS TEXT)"
        render_float = (
            f"CASE WHEN {as_float} = trunc({as_float}) AND abs({as_float}) < 1e15 "
            f"THEN CAST({as_float}::text || '.0' AS JSON) "
            f"WHEN abs({as_float}) >= 1e15 AND abs({as_float}) < 1e16 "
            f"THEN CAST({plain} || CASE WHEN strpos({plain}, '.') = 0 THEN '.0' ELSE '' END "
            "AS JSON) "
            f"ELSE to_json({as_float}) END"
        )
        if delta_is_int:
            added = (
                "CASE WHEN qe_memory.value::text ~ '^-?[0-9]+$' "
                "THEN to_json(CAST(qe_memory.value::text AS NUMERIC) + CAST(:delta AS NUMERIC)) "
                f"ELSE {render_float} END"
            )
        else:
            added = render_float
        numeric = "json_typeof(qe_memory.value) = 'number'"
        if delta_is_int:
            # Counters are 64-bit on every backend: refuse a sum that leaves the range.
            numeric += (
                " AND (qe_memory.value::text !~ '^-?[0-9]+$' OR"
                " CAST(qe_memory.value::text AS NUMERIC) + CAST(:delta AS NUMERIC)"
                " BETWEEN -9223372036854775808 AND 9223372036854775807)"
            )
        initial = "CAST(:initial AS JSON)"
        returning = "CAST(qe_memory.value AS TEXT), qe_memory.version"
    else:
        now = "strftime('%Y-%m-%d %H:%M:%f', 'now')"
        expires = (
            "strftime('%Y-%m-%d %H:%M:%f', 'now', printf('%+.6f seconds', :ttl))"
            if with_ttl
            else "NULL"
        )
        as_float = "(CAST(qe_memory.value AS REAL) + :delta)"
        render_float = f"printf('%!.17g', {as_float})"
        if delta_is_int:
            added = (
                "CASE WHEN json_type(qe_memory.value) = 'integer' "
                "THEN CAST(CAST(qe_memory.value AS INTEGER) + :delta AS TEXT) "
                f"ELSE {render_float} END"
            )
        else:
            added = render_float
        numeric = (
            "json_type(qe_memory.value) IN ('integer', 'real') "
            f"AND abs({as_float}) <= 1.7976931348623157e308"
        )
        if delta_is_int:
            # SQLite turns an overflowing integer sum into a REAL: refuse it instead.
            numeric += (
                " AND (json_type(qe_memory.value) <> 'integer'"
                " OR typeof(CAST(qe_memory.value AS INTEGER) + :delta) = 'integer')"
            )
        initial = ":initial"
        returning = "qe_memory.value, qe_memory.version"
    expired = expired.format(now=now)
    keep_ttl = "excluded.expires_at" if with_ttl else "qe_memory.expires_at"
    # size_bytes stays exact: key plus the new value's JSON, in UTF-8 bytes.
    if dialect == "postgresql":
        new_size = f"octet_length(qe_memory.key) + octet_length(CAST(({added}) AS TEXT))"
    else:
        new_size = f"length(CAST(qe_memory.key AS BLOB)) + length(CAST(({added}) AS BLOB))"
    sql = f"""
        INSERT INTO qe_memory (key, value, partition, metadata, version, size_bytes,
                               created_at, updated_at, expires_at)
        VALUES (:key, {initial}, 'default', '{{}}', 1, :size_bytes, {now}, {now}, {expires})
        ON CONFLICT (key) DO UPDATE SET
            value = CASE WHEN {expired} THEN excluded.value ELSE {added} END,
            partition = CASE WHEN {expired} THEN excluded.partition ELSE qe_memory.partition END,
            metadata = CASE WHEN {expired} THEN excluded.metadata ELSE qe_memory.metadata END,
            version = CASE WHEN {expired} THEN 1 ELSE qe_memory.version + 1 END,
            created_at = CASE WHEN {expired} THEN excluded.created_at
                              ELSE qe_memory.created_at END,
            expires_at = CASE WHEN {expired} THEN excluded.expires_at ELSE {keep_ttl} END,
            size_bytes = CASE WHEN {expired} THEN excluded.size_bytes ELSE {new_size} END,
            updated_at = excluded.updated_at
        WHERE {expired} OR ({numeric})
        RETURNING {returning}
    """
    delta_type: TypeEngine[Any] = BigInteger() if delta_is_int else Double()
    params: list[BindParameter[Any]] = [
        bindparam("key", type_=Text()),
        bindparam("initial", type_=Text()),
        bindparam("size_bytes", type_=Integer()),
        bindparam("delta", type_=delta_type),
    ]
    if with_ttl:
        params.append(bindparam("ttl", type_=Double()))
    return text(sql).bindparams(*params)


@lru_cache(maxsize=4)
def statements(dialect: str) -> _Statements:
    """The statements for ``dialect`` ("postgresql" or "sqlite"), built on first use."""
    return _Statements(dialect)


_PG_STORE_MANY = text(
    """
    INSERT INTO qe_memory AS m (key, value, partition, metadata, version, size_bytes,
                                created_at, updated_at, expires_at)
    SELECT k, CAST(v AS JSON), :partition, '{}', 1, s,
           statement_timestamp(), statement_timestamp(),
           CASE WHEN CAST(:ttl AS DOUBLE PRECISION) IS NULL THEN NULL
                ELSE statement_timestamp() + make_interval(secs => CAST(:ttl AS DOUBLE PRECISION))
           END
    FROM unnest(CAST(:keys AS TEXT[]), CAST(:values AS TEXT[]), CAST(:sizes AS INTEGER[]))
         AS batch(k, v, s)
    ON CONFLICT (key) DO UPDATE SET
        value = excluded.value,
        partition = excluded.partition,
        metadata = excluded.metadata,
        size_bytes = excluded.size_bytes,
        version = CASE WHEN m.expires_at IS NOT NULL AND m.expires_at <= statement_timestamp()
                       THEN 1 ELSE m.version + 1 END,
        created_at = CASE WHEN m.expires_at IS NOT NULL AND m.expires_at <= statement_timestamp()
                          THEN excluded.created_at ELSE m.created_at END,
        updated_at = excluded.updated_at,
        expires_at = excluded.expires_at
    """
).bindparams(
    bindparam("keys", type_=ARRAY(Text())),
    bindparam("values", type_=ARRAY(Text())),
    bindparam("sizes", type_=ARRAY(Integer())),
    bindparam("partition", type_=Text()),
    bindparam("ttl", type_=Double()),
)


_PG_UPSERT_ROWS = text(
    """
    INSERT INTO qe_memory AS m (key, value, partition, metadata, version, size_bytes,
                                created_at, updated_at, expires_at)
    SELECT k, CAST(v AS JSON), p, CAST(md AS JSON), 1, s,
           statement_timestamp(), statement_timestamp(),
           CASE WHEN t IS NULL THEN NULL
                ELSE statement_timestamp() + make_interval(secs => t) END
    FROM unnest(CAST(:keys AS TEXT[]), CAST(:values AS TEXT[]), CAST(:partitions AS TEXT[]),
                CAST(:metadata AS TEXT[]), CAST(:sizes AS INTEGER[]),
                CAST(:ttls AS DOUBLE PRECISION[]))
         AS batch(k, v, p, md, s, t)
    ON CONFLICT (key) DO UPDATE SET
        value = excluded.value,
        partition = excluded.partition,
        metadata = excluded.metadata,
        size_bytes = excluded.size_bytes,
        version = CASE WHEN m.expires_at IS NOT NULL AND m.expires_at <= statement_timestamp()
                       THEN 1 ELSE m.version + 1 END,
        created_at = CASE WHEN m.expires_at IS NOT NULL AND m.expires_at <= statement_timestamp()
                          THEN excluded.created_at ELSE m.created_at END,
        updated_at = excluded.updated_at,
        expires_at = excluded.expires_at
    RETURNING m.key, m.version
    """
).bindparams(
    bindparam("keys", type_=ARRAY(Text())),
    bindparam("values", type_=ARRAY(Text())),
    bindparam("partitions", type_=ARRAY(Text())),
    bindparam("metadata", type_=ARRAY(Text())),
    bindparam("sizes", type_=ARRAY(Integer())),
    bindparam("ttls", type_=ARRAY(Double())),
)


@dataclass(frozen=True, slots=True)
class UpsertRow:
    """One unconditional ``store`` of a coalesced batch."""

    key: str
    value_json: str
    partition: str
    metadata_json: str
    size_bytes: int
    ttl: float | None


class MemoryRepository:
    """Memory-table SQL over an :class:`AsyncSession`, an :class:`AsyncConnection` or a
    :class:`~lionagi_qe.db.direct.DirectRunner` (autocommit statements on the driver)."""

    def __init__(
        self, bind: AsyncSession | AsyncConnection | DirectRunner | BoundRunner, dialect: str
    ) -> None:
        self._bind = bind
        self._sql = statements(dialect)
        self.dialect = dialect

    async def _execute(self, statement: Executable, params: Any = None) -> Any:
        if isinstance(self._bind, AsyncSession):
            conn = await self._bind.connection()
            return await conn.execute(statement, params)
        return await self._bind.execute(statement, params)

    async def ensure_partition(self, partition: str) -> None:
        """Create the partition label if it does not exist yet."""
        await self._execute(self._sql.ensure_partition, {"b_partition": partition})

    async def upsert(
        self,
        key: str,
        value_json: str,
        *,
        partition: str,
        metadata_json: str,
        size_bytes: int,
        ttl: float | None,
        if_absent: bool = False,
        expected_version: int | None = None,
    ) -> int | None:
        """Write one entry; return its new version, or None if the condition failed."""
        params: dict[str, Any] = {
            "b_key": key,
            "b_value": value_json,
            "b_partition": partition,
            "b_metadata": metadata_json,
            "b_size_bytes": size_bytes,
        }
        with_ttl = ttl is not None
        if with_ttl:
            params["ttl"] = ttl
        if expected_version is not None:
            params["expected_version"] = expected_version
            statement = self._sql.update_if_version[with_ttl]
        else:
            statement = self._sql.upsert[with_ttl, if_absent]
        result = await self._execute(statement, params)
        version = result.scalar()
        return None if version is None else int(version)

    async def get_value(self, key: str) -> str | None:
        """The live value's JSON text, or None."""
        result = await self._execute(self._sql.get_value, {"b_key": key})
        value: str | None = result.scalar()
        return value

    async def get_entry(self, key: str) -> EntryRow | None:
        """The whole live row, or None."""
        result = await self._execute(self._sql.get_entry, {"b_key": key})
        row = result.first()
        return None if row is None else _entry_row(row)

    async def get_entries(self, keys: Sequence[str]) -> list[EntryRow]:
        """The whole live rows among ``keys`` (one statement), with their remaining TTLs."""
        result = await self._execute(self._sql.get_entries, {"keys": list(keys)})
        return [_entry_row(row) for row in result]

    async def scan_page(
        self, lower: str, upper: str, after: str | None, limit: int
    ) -> list[EntryRow]:
        """Up to ``limit`` live rows in [lower, upper) (after ``after`` if given), by key."""
        params: dict[str, Any] = {"upper": upper, "limit": limit}
        if after is None:
            params["lower"] = lower
        else:
            params["after"] = after
        result = await self._execute(self._sql.scan[after is not None], params)
        return [_entry_row(row) for row in result]

    async def exists(self, key: str) -> bool:
        """True if the key has a live entry."""
        result = await self._execute(self._sql.exists, {"b_key": key})
        return result.first() is not None

    async def ttl(self, key: str) -> tuple[bool, float | None]:
        """(found, remaining seconds or None for no expiry)."""
        result = await self._execute(self._sql.ttl, {"b_key": key})
        row = result.first()
        if row is None:
            return False, None
        if row[0]:
            return True, None
        return True, max(float(row[1]), 0.0)

    async def expire(self, key: str, ttl: float) -> bool:
        """Set the TTL of a live entry; False if there is none."""
        result = await self._execute(self._sql.expire, {"b_key": key, "ttl": ttl})
        return result.first() is not None

    async def delete(self, key: str) -> bool:
        """Delete the live row; True if there was one."""
        result = await self._execute(self._sql.delete, {"b_key": key})
        return result.first() is not None

    async def search(
        self,
        lower: str,
        upper: str | None,
        match: str | None,
        kind: str | None,
        limit: int | None,
    ) -> list[tuple[str, str]]:
        """(key, JSON) of live rows in [lower, upper), ordered by key.

        ``kind`` says how ``match`` applies: ``"regex"`` (PostgreSQL ``~``), ``"glob"`` (SQLite
        ``GLOB``) or None (no filter).
        """
        params: dict[str, Any] = {"lower": lower}
        if upper is not None:
            params["upper"] = upper
        if kind is not None:
            params["match"] = match
        if limit is not None:
            params["limit"] = limit
        statement = self._sql.search[upper is not None, kind, limit is not None]
        result = await self._execute(statement, params)
        return [(row[0], row[1]) for row in result]

    async def list_keys(self, lower: str, upper: str | None) -> list[str]:
        """Live keys in [lower, upper), ordered by code point."""
        params: dict[str, Any] = {"lower": lower}
        if upper is not None:
            params["upper"] = upper
        result = await self._execute(self._sql.list_keys[upper is not None], params)
        return list(result.scalars())

    async def retrieve_many(self, keys: Sequence[str]) -> dict[str, str]:
        """JSON text of the live entries among ``keys``."""
        result = await self._execute(self._sql.retrieve_many, {"keys": list(keys)})
        return {row[0]: row[1] for row in result}

    async def store_many(
        self, rows: Sequence[StoreRow], *, partition: str, ttl: float | None
    ) -> None:
        """Upsert many rows (keys unique) in one statement (PostgreSQL) or one transaction."""
        if self.dialect == "postgresql":
            # Statements of STORE_MANY_CHUNK rows: the driver encodes each one in a single
            # synchronous block, so the chunk size bounds the event-loop stall.
            for start in range(0, len(rows), STORE_MANY_CHUNK):
                chunk = rows[start : start + STORE_MANY_CHUNK]
                await self._execute(
                    _PG_STORE_MANY,
                    {
                        "keys": [row.key for row in chunk],
                        "values": [row.value_json for row in chunk],
                        "sizes": [row.size_bytes for row in chunk],
                        "partition": partition,
                        "ttl": ttl,
                    },
                )
            return
        # SQLite: executemany in slices of SQLITE_STORE_MANY_CHUNK inside the caller's
        # transaction; SQLAlchemy processes each slice's parameters in one synchronous block,
        # so the slice bounds the event-loop stall (10,000 rows at once: ~50 ms busy; 400: < 10 ms).
        statement = self._sql.upsert_many[ttl is not None]
        extra = {"ttl": ttl} if ttl is not None else {}
        for start in range(0, len(rows), SQLITE_STORE_MANY_CHUNK):
            params = [
                {
                    "b_key": row.key,
                    "b_value": row.value_json,
                    "b_partition": partition,
                    "b_metadata": "{}",
                    "b_size_bytes": row.size_bytes,
                    **extra,
                }
                for row in rows[start : start + SQLITE_STORE_MANY_CHUNK]
            ]
            await self._execute(statement, params)

    async def upsert_rows(self, rows: Sequence[UpsertRow]) -> dict[str, int]:
        """Unconditional upserts of distinct keys in one statement (PostgreSQL); new versions."""
        result = await self._execute(
            _PG_UPSERT_ROWS,
            {
                "keys": [row.key for row in rows],
                "values": [row.value_json for row in rows],
                "partitions": [row.partition for row in rows],
                "metadata": [row.metadata_json for row in rows],
                "sizes": [row.size_bytes for row in rows],
                "ttls": [row.ttl for row in rows],
            },
        )
        return {row[0]: int(row[1]) for row in result}

    async def increment(
        self, key: str, delta: int | float, *, ttl: float | None, initial_json: str, size_bytes: int
    ) -> tuple[str, int] | None:
        """Add ``delta`` atomically; (new JSON, version), or None if the live value is no number."""
        is_int = isinstance(delta, int)
        params: dict[str, Any] = {
            "key": key,
            "initial": initial_json,
            "size_bytes": size_bytes,
            "delta": delta,
        }
        if ttl is not None:
            params["ttl"] = ttl
            statement = self._sql.increment_ttl[is_int]
        else:
            statement = self._sql.increment[is_int]
        result = await self._execute(statement, params)
        row = result.first()
        if row is None:
            return None
        text_value, version = str(row[0]), int(row[1])
        if self.dialect == "sqlite":
            text_value = await self._canonical_float(key, text_value)
        return text_value, version

    async def _canonical_float(self, key: str, text_value: str) -> str:
        """SQLite renders a float sum with 17 digits (``0.59999999999999998``); store Python's
        shortest form instead (``0.6``), as the other backends do. Runs in the increment's own
        transaction: SQLite holds the write lock from the first write, so no one sees between."""
        try:
            int(text_value)
            return text_value
        except ValueError:
            canonical = repr(float(text_value))
        if canonical != text_value:
            await self._execute(self._sql.set_counter_text, {"b_key": key, "b_value": canonical})
        return canonical

    async def clear_partition(self, partition: str, lower: str, upper: str) -> int:
        """Delete every entry of ``partition`` in the key range; return how many were live."""
        params = {"b_partition": partition, "lower": lower, "upper": upper}
        await self._execute(self._sql.clear_expired_in_partition, params)
        result = await self._execute(self._sql.clear_live_in_partition, params)
        return int(result.rowcount)

    async def stats(self, lower: str, upper: str) -> dict[str, Any]:
        """Counts and sizes of the key range."""
        params = {"lower": lower, "upper": upper}
        live_count, size = (await self._execute(self._sql.count_live, params)).one()
        expired = (await self._execute(self._sql.count_expired, params)).scalar_one()
        partitions = {
            row[0]: int(row[1]) for row in await self._execute(self._sql.partition_counts, params)
        }
        return {
            "total_keys": int(live_count),
            "total_expired": int(expired),
            "partitions": dict(sorted(partitions.items())),
            "size_bytes": int(size),
        }

    async def cleanup_batch(self, lower: str, upper: str, batch: int) -> int:
        """Delete up to ``batch`` expired rows; return how many."""
        params = {"lower": lower, "upper": upper, "batch": batch}
        result = await self._execute(self._sql.cleanup_batch, params)
        return int(result.rowcount)
