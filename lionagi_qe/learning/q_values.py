"""Q-value methods of :class:`~lionagi_qe.DatabaseManager`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from lionagi_qe.errors import InvalidArgumentError
from lionagi_qe.learning.store import LearningStore, check_stale_ok
from lionagi_qe.learning.td import td_target
from lionagi_qe.learning.validation import (
    MAX_MAGNITUDE,
    check_document,
    check_hash,
    check_name,
    check_number,
    check_session_id,
    check_unit_interval,
)
from lionagi_qe.repositories.learning import QValueRepository, TDUpdate

__all__ = ["QValueMethods", "make_td_update"]

_REQUIRED = ("agent_type", "state_hash", "action_hash", "reward", "next_max_q", "alpha", "gamma")
_OPTIONAL = ("state_data", "action_data")

#: Updates validated between two yields to the event loop. Validating one costs about 6 us.
#: Fifty tasks that each submit a batch all become ready in the same loop iteration, so batches
#: validated in one go stalled the loop for tasks * batch * 6 us (50 tasks of 100 updates:
#: about 35 ms of the 48 ms stall the benchmark saw). In steps of 10 an iteration holds at most
#: 50 * 10 validations (about 3 ms).
VALIDATION_STEP = 10


def make_td_update(
    agent_type: object,
    state_hash: object,
    action_hash: object,
    reward: object,
    next_max_q: object,
    alpha: object,
    gamma: object,
    state_data: Any = None,
    action_data: Any = None,
) -> TDUpdate:
    """Validate one TD update's arguments (no I/O).

    Raises:
        InvalidArgumentError: empty or over-long names/hashes, non-finite numbers, ``alpha``
            or ``gamma`` outside [0, 1], numbers or a target ``r + gamma * next_max_q`` beyond
            ±1e100 (so no update or statistic can overflow).
        SerializationError: ``state_data``/``action_data`` with no JSON form.
    """
    checked_reward = check_number(reward, "reward")
    checked_next = check_number(next_max_q, "next_max_q")
    checked_gamma = check_unit_interval(gamma, "gamma")
    target = td_target(checked_reward, checked_next, checked_gamma)
    if abs(target) > MAX_MAGNITUDE:
        raise InvalidArgumentError(f"reward + gamma * next_max_q must be within ±{MAX_MAGNITUDE:g}")
    return TDUpdate(
        agent_type=check_name(agent_type, "agent_type"),
        state_hash=check_hash(state_hash, "state_hash"),
        action_hash=check_hash(action_hash, "action_hash"),
        reward=checked_reward,
        next_max_q=checked_next,
        alpha=check_unit_interval(alpha, "alpha"),
        gamma=checked_gamma,
        state_data=check_document(state_data),
        action_data=check_document(action_data),
    )


async def _batch(updates: object) -> list[TDUpdate]:
    """Validate a batch, yielding to the event loop every :data:`VALIDATION_STEP` updates."""
    if isinstance(updates, str | bytes | Mapping) or not isinstance(updates, Iterable):
        raise InvalidArgumentError("updates must be an iterable of mappings")
    checked = []
    for index, item in enumerate(updates):
        if index and index % VALIDATION_STEP == 0:
            await asyncio.sleep(0)
        if not isinstance(item, Mapping):
            raise InvalidArgumentError(f"updates[{index}] must be a mapping")
        missing = [name for name in _REQUIRED if name not in item]
        unknown = sorted(str(name) for name in item if name not in _REQUIRED + _OPTIONAL)
        problems = ([f"missing {missing}"] if missing else []) + (
            [f"unknown {unknown}"] if unknown else []
        )
        if problems:
            raise InvalidArgumentError(f"updates[{index}]: " + "; ".join(problems))
        try:
            checked.append(
                make_td_update(
                    **{name: item[name] for name in _REQUIRED},
                    state_data=item.get("state_data"),
                    action_data=item.get("action_data"),
                )
            )
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"updates[{index}]: {exc}") from None
    return checked


class QValueMethods(LearningStore):
    """Q-values: the atomic TD update, batches, upserts and reads that keep values alive."""

    async def update_q_value(
        self,
        agent_type: str,
        state_hash: str,
        action_hash: str,
        reward: float,
        next_max_q: float,
        alpha: float,
        gamma: float,
        *,
        state_data: Any = None,
        action_data: Any = None,
    ) -> float:
        """Apply ``Q += alpha * (r + gamma * next_max_q - Q)`` in one SQL statement; return Q.

        ``INSERT … ON CONFLICT … DO UPDATE`` with the arithmetic in SQL: concurrent updates of
        one pair queue on its row lock, so none is lost or applied twice. A pair with no live
        value starts from 0 (its first update stores ``alpha * (r + gamma * next_max_q)``).
        The visit count goes up by one and the value's expiry moves ``q_value_retention`` ahead.
        ``state_data``/``action_data`` are stored when given (kept otherwise).

        Raises:
            InvalidArgumentError: bad arguments (see :func:`make_td_update`), an unknown agent
                type.
        """
        update = make_td_update(
            agent_type,
            state_hash,
            action_hash,
            reward,
            next_max_q,
            alpha,
            gamma,
            state_data,
            action_data,
        )
        async with self._bind(agent_type=update.agent_type) as conn:
            return await QValueRepository(conn, self.dialect).td_update(
                update, self.q_value_retention
            )

    async def batch_update_q_values(self, updates: Iterable[Mapping[str, Any]]) -> int:
        """Apply many TD updates in one round trip, all or nothing; return how many.

        Each mapping holds :meth:`update_q_value`'s arguments (``agent_type``, ``state_hash``,
        ``action_hash``, ``reward``, ``next_max_q``, ``alpha``, ``gamma``, optionally
        ``state_data``/``action_data``). The result is exactly that of calling
        :meth:`update_q_value` for each mapping in order: every mapping runs the same statement
        (pipelined, one round trip), so a pair that appears twice is updated twice, the second
        time from the value the first one wrote. Updates are sent sorted by pair (stably, so
        one pair's updates keep their order) to take row locks in one global order: concurrent
        batches never deadlock. Every mapping is validated before anything is sent.
        """
        batch = await _batch(updates)
        if not batch:
            return 0
        batch.sort(key=lambda u: u.key)
        agent_types = ", ".join(sorted({u.agent_type for u in batch}))[:200]
        # One executemany: atomic in autocommit on asyncpg; SQLite runs it in a transaction.
        async with self._bind(agent_type=agent_types) as conn:
            await QValueRepository(conn, self.dialect).td_update_many(batch, self.q_value_retention)
        return len(batch)

    async def upsert_q_value(
        self,
        agent_type: str,
        state_hash: str,
        action_hash: str,
        q_value: float,
        state_data: Any = None,
        action_data: Any = None,
        session_id: str | None = None,
    ) -> int:
        """Set a Q-value outright (one more visit, expiry refreshed); return the row id.

        For learning, prefer :meth:`update_q_value`: a value computed in Python from an earlier
        read overwrites whatever other agents wrote in between. ``session_id`` is accepted for
        compatibility with the original API and checked, but Q-values are shared per agent
        type, not per session, so it is not stored.
        """
        checked_type = check_name(agent_type, "agent_type")
        checked_state = check_hash(state_hash, "state_hash")
        checked_action = check_hash(action_hash, "action_hash")
        value = check_number(q_value, "q_value")
        state_json, action_json = check_document(state_data), check_document(action_data)
        if session_id is not None:
            check_session_id(session_id)
        async with self._bind(agent_type=checked_type) as conn:
            return await QValueRepository(conn, self.dialect).upsert(
                checked_type,
                checked_state,
                checked_action,
                value,
                state_data=state_json,
                action_data=action_json,
                retention=self.q_value_retention,
            )

    async def get_q_value(
        self, agent_type: str, state_hash: str, action_hash: str, *, stale_ok: bool = False
    ) -> float | None:
        """The live Q-value of a state-action pair, or None; reading it refreshes its expiry.

        ``stale_ok=True``: the caller accepts a value up to ``replica_max_lag`` seconds old
        (never older than its own writes through this store), so a read replica may answer
        when one is configured. Such a read is a pure ``SELECT``: it does *not* refresh the
        expiry, wherever it runs (a replica cannot write, and a refresh on the primary would
        make every stale-ok read a write). Values kept in use by updates or by normal reads
        stay alive; one that is only ever peeked at expires ``q_value_retention`` after its
        last write. Without replicas it reads the primary and returns the same value.
        """
        checked = (
            check_name(agent_type, "agent_type"),
            check_hash(state_hash, "state_hash"),
            check_hash(action_hash, "action_hash"),
        )
        if check_stale_ok(stale_ok):
            return await self._read_only(
                lambda conn: QValueRepository(conn, self.dialect).peek(*checked), stale_ok=True
            )
        async with self._bind() as conn:
            return await QValueRepository(conn, self.dialect).get(*checked, self.q_value_retention)

    async def get_all_q_values_for_state(
        self, agent_type: str, state_hash: str, *, stale_ok: bool = False
    ) -> list[dict[str, Any]]:
        """Every live action of a state, best first, refreshing each one's expiry.

        Each item: ``{"action_hash": str, "q_value": float, "visit_count": int,
        "action_data": Any}``, ordered by ``q_value`` (highest first), then ``visit_count``
        (most first), then ``action_hash``. ``stale_ok=True`` may read a replica and refreshes
        nothing (see :meth:`get_q_value`); the items and their order are the same.
        """
        checked_type = check_name(agent_type, "agent_type")
        checked_state = check_hash(state_hash, "state_hash")
        if check_stale_ok(stale_ok):
            return await self._read_only(
                lambda conn: QValueRepository(conn, self.dialect).peek_state(
                    checked_type, checked_state
                ),
                stale_ok=True,
            )
        async with self._bind() as conn:
            return await QValueRepository(conn, self.dialect).for_state(
                checked_type, checked_state, self.q_value_retention
            )

    async def get_best_action(
        self, agent_type: str, state_hash: str, *, stale_ok: bool = False
    ) -> dict[str, Any] | None:
        """The best known action of a state, or None if it has no live Q-values.

        Returns the first item of :meth:`get_all_q_values_for_state`:
        ``{"action_hash", "q_value", "visit_count", "action_data"}`` (ties go to the most
        visited action, then the smallest hash). Every action of the state was compared, so
        every one counts as used: all of their expiries are refreshed. ``stale_ok=True`` may
        read a replica, refreshes nothing (see :meth:`get_q_value`) and fetches one row only.
        """
        if check_stale_ok(stale_ok):
            checked_type = check_name(agent_type, "agent_type")
            checked_state = check_hash(state_hash, "state_hash")
            best = await self._read_only(
                lambda conn: QValueRepository(conn, self.dialect).peek_state(
                    checked_type, checked_state, best_only=True
                ),
                stale_ok=True,
            )
            return best[0] if best else None
        actions = await self.get_all_q_values_for_state(agent_type, state_hash)
        return actions[0] if actions else None
