"""Q-values: the TD update as one statement, upserts, reads that refresh expiry, peeks, cleanup.

The TD update is ``INSERT … ON CONFLICT … DO UPDATE`` with the arithmetic in SQL, so the
database applies it under the row lock: concurrent updates of one state-action pair queue on
that lock and each one sees the value the previous one wrote (no lost or doubled update). The
expression is the one :func:`lionagi_qe.learning.td.td_update` evaluates, operation for
operation, so both give the same double.

Rows whose ``expires_at`` has passed are treated as absent everywhere: reads skip them and
writes start them afresh (value from 0, one visit, new ``created_at``), as if cleanup had
already removed them.

Two kinds of read. The normal ones (:meth:`QValueRepository.get`, ``for_state``) are
``UPDATE … RETURNING``: using a value pushes its expiry ahead, so they write. The *peeks*
(``peek``, ``peek_state``) are plain ``SELECT``s of the same live rows that change nothing:
they can run on a read-only streaming replica, and, being ``select()`` constructs, they do
not count as writes for the replica router's read-your-writes bookkeeping (``text()`` would).
A peek orders in SQL exactly as ``for_state`` orders in Python (``action_hash`` by code
point: ``COLLATE "C"`` on PostgreSQL, SQLite's default BINARY), so both return the same list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    Double,
    Executable,
    Integer,
    Table,
    Text,
    and_,
    bindparam,
    case,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.sql.elements import BindParameter

from lionagi_qe.db.sql import is_live, server_now
from lionagi_qe.models.learning import QValue
from lionagi_qe.repositories.learning_base import (
    Bind,
    LearningRepository,
    dialect_insert,
    expired,
    expiry,
    json_text,
)

__all__ = ["QValueRepository", "TDUpdate", "statements"]

_t: Table = QValue.__table__  # type: ignore[assignment]
_c = _t.c
_KEY = [_c.agent_type, _c.state_hash, _c.action_hash]


@dataclass(frozen=True, slots=True)
class TDUpdate:
    """One temporal-difference update, validated; documents as JSON text (or None)."""

    agent_type: str
    state_hash: str
    action_hash: str
    reward: float
    next_max_q: float
    alpha: float
    gamma: float
    state_data: str | None = None
    action_data: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        """(agent_type, state_hash, action_hash)."""
        return (self.agent_type, self.state_hash, self.action_hash)

    def params(self) -> dict[str, Any]:
        """The statement's parameters (not ``dataclasses.asdict``: it deep-copies, slowly)."""
        return {
            "agent_type": self.agent_type,
            "state_hash": self.state_hash,
            "action_hash": self.action_hash,
            "reward": self.reward,
            "next_max_q": self.next_max_q,
            "alpha": self.alpha,
            "gamma": self.gamma,
            "state_data": self.state_data,
            "action_data": self.action_data,
        }


def _by_key() -> Any:
    # UPDATE statements may not reuse column names for parameters: "key_" ones select rows.
    return and_(
        _c.agent_type == bindparam("key_agent_type", type_=Text()),
        _c.state_hash == bindparam("key_state_hash", type_=Text()),
        _c.action_hash == bindparam("key_action_hash", type_=Text()),
    )


class _Statements:
    """Every Q-value statement for one dialect; ``[retain]`` variants refresh ``expires_at``."""

    def __init__(self, dialect: str) -> None:
        insert = dialect_insert(dialect)
        number: dict[str, BindParameter[float]] = {
            name: bindparam(name, type_=Double())
            for name in ("reward", "next_max_q", "alpha", "gamma", "q_value")
        }
        # Q + alpha * ((r + gamma * m) - Q): SQL's + and - are left-associative, so
        # "r + gamma * m - Q" groups as td_update's (r + gamma * m) - Q.
        target = number["reward"] + number["gamma"] * number["next_max_q"]
        gone = expired(_c.expires_at)
        now = server_now()

        self.td_update: dict[bool, Executable] = {}
        self.td_update_many: dict[bool, Executable] = {}
        self.upsert: dict[bool, Executable] = {}
        self.get: dict[bool, Executable] = {}
        self.touch_state: dict[bool, Executable] = {}
        # Code-point order of action hashes: the order Python sorts str in, and the order a
        # batch (sorted by key) takes row locks in.
        action_order = _c.action_hash.collate("C") if dialect == "postgresql" else _c.action_hash
        for retain in (False, True):
            row = {
                "agent_type": bindparam("agent_type", type_=Text()),
                "state_hash": bindparam("state_hash", type_=Text()),
                "action_hash": bindparam("action_hash", type_=Text()),
                "visit_count": 1,
                "state_data": json_text("state_data"),
                "action_data": json_text("action_data"),
                "created_at": now,
                "updated_at": now,
                "last_used_at": now,
                "expires_at": expiry(retain),
            }
            # A missing (or expired) pair starts from 0: 0 + alpha * (target - 0) is alpha * target.
            fresh = insert(_t).values(q_value=number["alpha"] * target, **row)
            changes = _write_changes(fresh.excluded, gone)
            changes["q_value"] = case(
                (gone, fresh.excluded.q_value),
                else_=_c.q_value + number["alpha"] * (target - _c.q_value),
            )
            td = fresh.on_conflict_do_update(index_elements=_KEY, set_=changes)
            self.td_update[retain] = td.returning(_c.q_value)
            # executemany cannot return rows; each row still runs as its own statement, in order.
            self.td_update_many[retain] = td

            put = insert(_t).values(q_value=number["q_value"], **row)
            changes = _write_changes(put.excluded, gone)
            changes["q_value"] = put.excluded.q_value
            self.upsert[retain] = put.on_conflict_do_update(
                index_elements=_KEY, set_=changes
            ).returning(_c.id)

            refresh = {"last_used_at": now, "expires_at": expiry(retain)}
            self.get[retain] = (
                update(_t)
                .where(_by_key(), is_live(_c.expires_at))
                .values(refresh)
                .returning(_c.q_value)
            )
            # Lock the state's rows in action order, the order a batch (sorted by key) takes
            # them in too: two writers never wait for each other in a cycle.
            rows_of_state = (
                select(_c.id)
                .where(
                    _c.agent_type == bindparam("key_agent_type", type_=Text()),
                    _c.state_hash == bindparam("key_state_hash", type_=Text()),
                    is_live(_c.expires_at),
                )
                .order_by(action_order)
                .with_for_update()
            )
            self.touch_state[retain] = (
                update(_t)
                .where(_c.id.in_(rows_of_state.scalar_subquery()))
                .values(refresh)
                .returning(_c.action_hash, _c.q_value, _c.visit_count, _c.action_data)
            )

        # Read-only peeks (no expiry refresh): safe on a replica, no write for the router.
        self.peek: Executable = select(_c.q_value).where(_by_key(), is_live(_c.expires_at))
        state_rows = (
            select(_c.action_hash, _c.q_value, _c.visit_count, _c.action_data)
            .where(
                _c.agent_type == bindparam("key_agent_type", type_=Text()),
                _c.state_hash == bindparam("key_state_hash", type_=Text()),
                is_live(_c.expires_at),
            )
            .order_by(_c.q_value.desc(), _c.visit_count.desc(), action_order)
        )
        self.peek_state: dict[bool, Executable] = {False: state_rows, True: state_rows.limit(1)}

        victims = select(_c.id).where(gone).limit(bindparam("batch", type_=Integer()))
        if dialect == "postgresql":
            victims = victims.with_for_update(skip_locked=True)
        self.delete_expired = delete(_t).where(_c.id.in_(victims.scalar_subquery()), gone)


def _write_changes(excluded: Any, gone: Any) -> dict[str, Any]:
    """The ``SET`` of a write that found the row: refresh it, or start it afresh if expired."""
    return {
        "visit_count": case((gone, 1), else_=_c.visit_count + 1),
        "state_data": case(
            (gone, excluded.state_data), else_=func.coalesce(excluded.state_data, _c.state_data)
        ),
        "action_data": case(
            (gone, excluded.action_data),
            else_=func.coalesce(excluded.action_data, _c.action_data),
        ),
        "created_at": case((gone, excluded.created_at), else_=_c.created_at),
        "updated_at": excluded.updated_at,
        "last_used_at": excluded.last_used_at,
        "expires_at": excluded.expires_at,
    }


@lru_cache(maxsize=4)
def statements(dialect: str) -> _Statements:
    """The Q-value statements for ``dialect`` ("postgresql" or "sqlite"), built on first use."""
    return _Statements(dialect)


class QValueRepository(LearningRepository):
    """Q-values over a session or connection.

    ``retention`` (seconds, or None for never) is how long a value lives after its last use;
    every call that reads or writes a value pushes its ``expires_at`` that far ahead.
    """

    def __init__(self, bind: Bind, dialect: str) -> None:
        super().__init__(bind, dialect)
        self._sql = statements(dialect)

    @staticmethod
    def _retention(params: dict[str, Any], retention: float | None) -> bool:
        if retention is None:
            return False
        params["retention"] = retention
        return True

    async def td_update(self, update_: TDUpdate, retention: float | None) -> float:
        """Apply one TD update in one statement; return the new Q-value."""
        params = update_.params()
        retain = self._retention(params, retention)
        result = await self._execute(self._sql.td_update[retain], params)
        return float(result.scalar_one())

    async def td_update_many(self, updates: Sequence[TDUpdate], retention: float | None) -> None:
        """Apply many TD updates in order (one round trip; executemany).

        Each row runs the single-update statement after the previous one, so a pair that
        appears twice is updated twice, in the order given. Callers sort by key (stably) to
        take row locks in one global order.
        """
        if not updates:
            return
        rows = [u.params() for u in updates]
        retain = retention is not None
        if retain:
            for row in rows:
                row["retention"] = retention
        await self._execute(self._sql.td_update_many[retain], rows)

    async def upsert(
        self,
        agent_type: str,
        state_hash: str,
        action_hash: str,
        q_value: float,
        *,
        state_data: str | None,
        action_data: str | None,
        retention: float | None,
    ) -> int:
        """Set a Q-value (one more visit); return the row id."""
        params: dict[str, Any] = {
            "agent_type": agent_type,
            "state_hash": state_hash,
            "action_hash": action_hash,
            "q_value": q_value,
            "state_data": state_data,
            "action_data": action_data,
        }
        retain = self._retention(params, retention)
        result = await self._execute(self._sql.upsert[retain], params)
        return int(result.scalar_one())

    async def get(
        self, agent_type: str, state_hash: str, action_hash: str, retention: float | None
    ) -> float | None:
        """The live Q-value (refreshing its expiry), or None."""
        params: dict[str, Any] = {
            "key_agent_type": agent_type,
            "key_state_hash": state_hash,
            "key_action_hash": action_hash,
        }
        retain = self._retention(params, retention)
        value = (await self._execute(self._sql.get[retain], params)).scalar()
        return None if value is None else float(value)

    async def for_state(
        self, agent_type: str, state_hash: str, retention: float | None
    ) -> list[dict[str, Any]]:
        """Every live action of a state, best first (refreshing each one's expiry).

        Order: highest ``q_value``, then most visits, then ``action_hash`` (code points).
        """
        params: dict[str, Any] = {"key_agent_type": agent_type, "key_state_hash": state_hash}
        retain = self._retention(params, retention)
        rows = await self._rows(self._sql.touch_state[retain], params, floats=("q_value",))
        # UPDATE … RETURNING has no ORDER BY (and SQLite returns rows in no promised order).
        rows.sort(key=lambda r: (-r["q_value"], -r["visit_count"], r["action_hash"]))
        return rows

    async def peek(self, agent_type: str, state_hash: str, action_hash: str) -> float | None:
        """The live Q-value, or None, read without refreshing its expiry (replica-safe)."""
        params = {
            "key_agent_type": agent_type,
            "key_state_hash": state_hash,
            "key_action_hash": action_hash,
        }
        value = (await self._execute(self._sql.peek, params)).scalar()
        return None if value is None else float(value)

    async def peek_state(
        self, agent_type: str, state_hash: str, *, best_only: bool = False
    ) -> list[dict[str, Any]]:
        """Every live action of a state (or only the best one), best first, read without
        refreshing expiries (replica-safe). Items and order are those of :meth:`for_state`."""
        params = {"key_agent_type": agent_type, "key_state_hash": state_hash}
        return await self._rows(self._sql.peek_state[best_only], params, floats=("q_value",))

    async def delete_expired(self, batch: int) -> int:
        """Delete up to ``batch`` expired rows; return how many."""
        result = await self._execute(self._sql.delete_expired, {"batch": batch})
        return int(result.rowcount)
