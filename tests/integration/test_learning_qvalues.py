"""Q-values: the one-statement TD update, batches, reads and expiry (SPEC §5, §11).

Tables are shared within a worker, so every test works under state hashes of its own.
"""

from __future__ import annotations

import asyncio
import math
import random
import uuid
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select, text

from lionagi_qe import DatabaseManager
from lionagi_qe.errors import InvalidArgumentError
from lionagi_qe.learning.td import repeated_td_update, td_target, td_update
from lionagi_qe.models import QValue
from lionagi_qe.testing import run_concurrently

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

AGENT = "test-generator"


def new_state() -> str:
    return f"s-{uuid.uuid4().hex}"


async def stored_row(db: DatabaseManager, state: str, action: str) -> Any:
    async with db.engine.connect() as conn:
        result = await conn.execute(
            select(QValue.q_value, QValue.visit_count, QValue.expires_at).where(
                QValue.agent_type == AGENT, QValue.state_hash == state, QValue.action_hash == action
            )
        )
        return result.first()


async def seconds_to_expiry(db: DatabaseManager, state: str, action: str) -> float:
    """How far ahead ``expires_at`` is, by the database clock."""
    if db.dialect == "postgresql":
        sql = "SELECT EXTRACT(EPOCH FROM expires_at - statement_timestamp())"
    else:
        sql = "SELECT (julianday(expires_at) - julianday('now')) * 86400.0"
    async with db.engine.connect() as conn:
        value = await conn.scalar(
            text(f"{sql} FROM q_values WHERE state_hash = :s AND action_hash = :a"),
            {"s": state, "a": action},
        )
    return float(value)


async def set_expiry(db: DatabaseManager, state: str, seconds: float) -> None:
    """Move every Q-value of ``state`` to expire ``seconds`` from now (negative: expired)."""
    if db.dialect == "postgresql":
        moment = "statement_timestamp() + make_interval(secs => :secs)"
    else:
        moment = "strftime('%Y-%m-%d %H:%M:%f', 'now', printf('%+.6f seconds', :secs))"
    async with db.engine.begin() as conn:
        await conn.execute(
            text(f"UPDATE q_values SET expires_at = {moment} WHERE state_hash = :s"),
            {"secs": seconds, "s": state},
        )


# --- the TD update ----------------------------------------------------------------------------


async def test_first_update_starts_from_zero_and_each_update_matches_td_update(
    manager: DatabaseManager,
) -> None:
    state = new_state()
    steps = [
        (1.0, 0.5, 0.1, 0.9),
        (-2.5, 3.0, 0.3, 0.95),
        (0.1, 0.2, 1.0, 0.0),
        (7.0, 0.0, 0.0, 1.0),
    ]
    expected = 0.0
    for reward, next_max_q, alpha, gamma in steps:
        expected = td_update(expected, reward, next_max_q, alpha, gamma)
        got = await manager.update_q_value(AGENT, state, "a", reward, next_max_q, alpha, gamma)
        assert type(got) is float
        assert got == expected, "the database must compute exactly what td_update computes"

    stored = await manager.get_q_value(AGENT, state, "a")
    assert type(stored) is float and stored == expected
    row = await stored_row(manager, state, "a")
    assert row.visit_count == len(steps)


async def test_update_accepts_ints_and_decimals_and_returns_floats(
    manager: DatabaseManager,
) -> None:
    state = new_state()
    got = await manager.update_q_value(AGENT, state, "a", 2, Decimal("1.5"), Decimal("0.5"), 1)
    assert type(got) is float and got == td_update(0.0, 2.0, 1.5, 0.5, 1.0)


async def test_update_stores_state_and_action_data_and_keeps_them(
    manager: DatabaseManager,
) -> None:
    state = new_state()
    await manager.update_q_value(
        AGENT, state, "a", 1.0, 0.0, 0.5, 0.9, state_data={"cov": 0.8}, action_data={"k": "unit"}
    )
    await manager.update_q_value(AGENT, state, "a", 1.0, 0.0, 0.5, 0.9)

    [item] = await manager.get_all_q_values_for_state(AGENT, state)
    assert item["action_data"] == {"k": "unit"}
    async with manager.engine.connect() as conn:
        data = await conn.scalar(select(QValue.state_data).where(QValue.state_hash == state))
    assert data == {"cov": 0.8}


def test_the_closed_form_matches_repeated_updates() -> None:
    q = 0.0
    for n in range(1, 60):
        q = td_update(q, 1.0, 2.0, 0.1, 0.9)
        assert q == pytest.approx(repeated_td_update(td_target(1.0, 2.0, 0.9), 0.1, n), rel=1e-12)
    assert repeated_td_update(5.0, 0.3, 0, q0=2.0) == 2.0
    with pytest.raises(ValueError):
        repeated_td_update(1.0, 0.5, -1)


async def test_values_at_the_magnitude_limit_never_overflow(manager: DatabaseManager) -> None:
    """Inputs are bounded to ±1e100, so even the widest swing stays a finite double, and so do
    the statistics over it (sums of squares)."""
    state = new_state()
    await manager.upsert_q_value(AGENT, state, "a", 1e100)
    value = await manager.update_q_value(AGENT, state, "a", -1e100, 1e100, 0.5, 0.0)
    assert value == td_update(1e100, -1e100, 1e100, 0.5, 0.0) == 0.0
    value = await manager.update_q_value(AGENT, state, "a", -1e100, 0.0, 1.0, 1.0)
    assert value == -1e100
    await manager.upsert_q_value(AGENT, new_state(), "a", 1e100)
    await manager.store_trajectory(AGENT, state, "a", -1e100)
    stats = await manager.get_learning_statistics(AGENT)
    assert math.isfinite(stats["q_values"]["avg_q_value"])
    assert math.isfinite(stats["trajectories"]["std_reward"] or 0.0)
    with pytest.raises(InvalidArgumentError, match="within"):
        await manager.update_q_value(AGENT, state, "a", 1e100, 1e100, 0.5, 1.0)


# --- concurrency: no lost, no doubled update --------------------------------------------------

N_CONCURRENT = 200
ALPHA, GAMMA, REWARD, NEXT_MAX = 0.05, 0.9, 1.0, 2.0
TARGET = td_target(REWARD, NEXT_MAX, GAMMA)


def sequential(n: int, q: float = 0.0) -> list[float]:
    """The values ``n`` sequential updates toward TARGET pass through."""
    values = []
    for _ in range(n):
        q = td_update(q, REWARD, NEXT_MAX, ALPHA, GAMMA)
        values.append(q)
    return values


async def naive_update_q_value(db: DatabaseManager, state: str, action: str) -> float:
    """The original's read-modify-write in Python: read, compute, write back."""
    current = await db.get_q_value(AGENT, state, action) or 0.0
    await asyncio.sleep(0)  # other agents run here, as they do between two round trips
    new = td_update(current, REWARD, NEXT_MAX, ALPHA, GAMMA)
    await db.upsert_q_value(AGENT, state, action, new)
    return new


async def test_concurrent_updates_land_exactly_on_the_closed_form(
    manager: DatabaseManager,
) -> None:
    state = new_state()
    report = await run_concurrently(
        [
            lambda: manager.update_q_value(AGENT, state, "a", REWARD, NEXT_MAX, ALPHA, GAMMA)
            for _ in range(N_CONCURRENT)
        ],
        limit=50,
    )
    report.raise_first()
    assert report.max_in_flight > 1

    chain = sequential(N_CONCURRENT)
    final = await manager.get_q_value(AGENT, state, "a")
    assert final == chain[-1], "not exactly N sequential updates: one was lost or doubled"
    assert final == pytest.approx(repeated_td_update(TARGET, ALPHA, N_CONCURRENT), rel=1e-12)
    assert final != pytest.approx(repeated_td_update(TARGET, ALPHA, N_CONCURRENT - 1), rel=1e-9)
    # Each call saw the value the previous one wrote: the returns are the whole chain.
    assert sorted(v for v in report.results if v is not None) == chain
    assert (await stored_row(manager, state, "a")).visit_count == N_CONCURRENT


# PostgreSQL only: SQLite serialises writers, so the race needs PostgreSQL's concurrency.
@pytest.mark.parametrize("learning_url", ["aqe_database_url"], indirect=True)
async def test_naive_read_modify_write_does_lose_updates(manager: DatabaseManager) -> None:
    """The same workload through a read-then-write helper fails the exactness check above."""
    state = new_state()
    report = await run_concurrently(
        [lambda: naive_update_q_value(manager, state, "a") for _ in range(N_CONCURRENT)],
        limit=50,
    )
    report.raise_first()

    final = await manager.get_q_value(AGENT, state, "a")
    assert final is not None
    assert final != sequential(N_CONCURRENT)[-1]
    lost_at_least = N_CONCURRENT // 4
    assert final < repeated_td_update(TARGET, ALPHA, N_CONCURRENT - lost_at_least), (
        "read-modify-write should have lost many updates"
    )


# --- batches ----------------------------------------------------------------------------------


def update(state: str, action: str, reward: float, alpha: float = 0.3, **kw: Any) -> dict[str, Any]:
    return {
        "agent_type": AGENT,
        "state_hash": state,
        "action_hash": action,
        "reward": reward,
        "next_max_q": kw.get("next_max_q", 0.5),
        "alpha": alpha,
        "gamma": kw.get("gamma", 0.9),
    }


def apply_in_order(updates: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    values: dict[tuple[str, str], float] = {}
    for u in updates:
        key = (u["state_hash"], u["action_hash"])
        values[key] = td_update(
            values.get(key, 0.0), u["reward"], u["next_max_q"], u["alpha"], u["gamma"]
        )
    return values


async def test_batch_applies_duplicates_in_order(manager: DatabaseManager) -> None:
    """A pair that appears several times is updated several times, in the given order."""
    s1, s2 = new_state(), new_state()
    updates = [
        update(s1, "b", 1.0),
        update(s1, "a", 5.0, alpha=0.5),
        update(s2, "a", -1.0),
        update(s1, "a", -3.0, alpha=0.2),  # second generation of (s1, a): order matters
        update(s1, "b", 2.0, next_max_q=4.0),
        update(s1, "a", 0.25, alpha=0.9, gamma=0.5),
    ]
    assert await manager.batch_update_q_values(updates) == len(updates)

    for (state, action), expected in apply_in_order(updates).items():
        assert await manager.get_q_value(AGENT, state, action) == expected
    # The same updates in another order give another value: the order was really kept.
    swapped = [updates[i] for i in (0, 3, 2, 1, 4, 5)]
    assert apply_in_order(swapped)[s1, "a"] != apply_in_order(updates)[s1, "a"]
    assert (await stored_row(manager, s1, "a")).visit_count == 3
    assert (await stored_row(manager, s1, "b")).visit_count == 2


async def test_batch_equals_the_same_updates_one_by_one(manager: DatabaseManager) -> None:
    rng = random.Random(7)
    by_batch, by_call = new_state(), new_state()
    plan = [(f"a{rng.randrange(4)}", rng.uniform(-5, 5), rng.uniform(0, 1)) for _ in range(40)]

    await manager.batch_update_q_values([update(by_batch, a, r, alpha=al) for a, r, al in plan])
    for action, reward, alpha in plan:
        await manager.update_q_value(AGENT, by_call, action, reward, 0.5, alpha, 0.9)

    batched = await manager.get_all_q_values_for_state(AGENT, by_batch)
    called = await manager.get_all_q_values_for_state(AGENT, by_call)
    assert batched == called


async def test_concurrent_batches_and_reads_are_exact_and_never_deadlock(
    manager: DatabaseManager,
) -> None:
    """Batches naming the same pairs in different orders, beside best-action reads that lock a
    state's rows: no deadlock, and every pair lands on the closed form of its update count."""
    state = new_state()
    actions = [f"a{i}" for i in range(10)]
    rng = random.Random(11)
    batches = []
    for _ in range(20):
        order = actions * 2
        rng.shuffle(order)
        batches.append([update(state, a, REWARD, alpha=ALPHA, next_max_q=NEXT_MAX) for a in order])
    calls = [lambda b=b: manager.batch_update_q_values(b) for b in batches]
    calls += [lambda: manager.get_best_action(AGENT, state) for _ in range(20)]

    report = await run_concurrently(calls, limit=40)
    report.raise_first()

    expected = sequential(40)[-1]
    for item in await manager.get_all_q_values_for_state(AGENT, state):
        assert item["q_value"] == expected, item["action_hash"]
        assert item["visit_count"] == 40


async def test_a_batch_is_all_or_nothing(manager: DatabaseManager) -> None:
    state = new_state()
    bad = update(state, "b", 1.0) | {"agent_type": f"no-such-agent-{uuid.uuid4().hex[:8]}"}
    with pytest.raises(InvalidArgumentError, match="agent type"):
        await manager.batch_update_q_values([update(state, "a", 1.0), bad, update(state, "c", 1.0)])
    assert await manager.get_all_q_values_for_state(AGENT, state) == []


@pytest.mark.parametrize(
    ("updates", "match"),
    [
        ({"agent_type": AGENT}, "iterable of mappings"),
        ("not updates", "iterable of mappings"),
        (42, "iterable of mappings"),
        ([("a", "b")], r"updates\[0\] must be a mapping"),
        ([{"agent_type": AGENT}], r"updates\[0\]: missing"),
        ([{**update("s", "a", 1.0), "rewrd": 1}], r"unknown \['rewrd'\]"),
        ([update("s", "a", 1.0), update("s", "a", 1.0, alpha=2.0)], r"updates\[1\]: alpha"),
        ([update("s", "a", math.nan)], r"updates\[0\]: reward must be finite"),
    ],
    ids=["mapping", "str", "int", "tuple-item", "missing", "unknown", "alpha", "nan"],
)
async def test_a_bad_batch_is_refused_before_anything_is_written(
    manager: DatabaseManager, updates: Any, match: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        await manager.batch_update_q_values(updates)
    assert await manager.get_q_value(AGENT, "s", "a") is None


async def test_an_empty_batch_does_nothing(manager: DatabaseManager) -> None:
    assert await manager.batch_update_q_values([]) == 0
    assert await manager.batch_update_q_values(iter(())) == 0


# --- upsert, reads, best action ---------------------------------------------------------------


async def test_upsert_sets_the_value_and_keeps_one_row(manager: DatabaseManager) -> None:
    state = new_state()
    first = await manager.upsert_q_value(
        AGENT, state, "a", Decimal("0.75"), {"s": 1}, {"a": 1}, session_id=str(uuid.uuid4())
    )
    second = await manager.upsert_q_value(AGENT, state, "a", -1.5)
    assert isinstance(first, int) and first == second

    value = await manager.get_q_value(AGENT, state, "a")
    assert type(value) is float and value == -1.5
    [item] = await manager.get_all_q_values_for_state(AGENT, state)
    assert item == {"action_hash": "a", "q_value": -1.5, "visit_count": 2, "action_data": {"a": 1}}


async def test_best_action_and_all_actions_of_a_state(manager: DatabaseManager) -> None:
    state = new_state()
    assert await manager.get_best_action(AGENT, state) is None
    assert await manager.get_all_q_values_for_state(AGENT, state) == []
    assert await manager.get_q_value(AGENT, state, "missing") is None

    await manager.upsert_q_value(AGENT, state, "low", -1.0)
    await manager.upsert_q_value(AGENT, state, "tie-b", 2.0, action_data={"name": "b"})
    await manager.upsert_q_value(AGENT, state, "tie-a", 2.0)
    await manager.upsert_q_value(AGENT, state, "tie-c", 2.0)
    await manager.upsert_q_value(AGENT, state, "tie-c", 2.0)  # two visits: wins the tie

    ranked = await manager.get_all_q_values_for_state(AGENT, state)
    assert [r["action_hash"] for r in ranked] == ["tie-c", "tie-a", "tie-b", "low"]
    assert all(type(r["q_value"]) is float for r in ranked)
    best = await manager.get_best_action(AGENT, state)
    assert best == {"action_hash": "tie-c", "q_value": 2.0, "visit_count": 2, "action_data": None}
    assert await manager.get_best_action(AGENT, new_state()) is None


# --- expiry: knowledge in use never expires ---------------------------------------------------


@pytest.mark.parametrize(
    "use",
    ["get_q_value", "get_best_action", "get_all_q_values_for_state", "update", "upsert", "batch"],
)
async def test_using_a_q_value_moves_its_expiry_ahead(learning_url: str, use: str) -> None:
    db = DatabaseManager(learning_url, min_connections=1, q_value_retention=3600)
    try:
        state = new_state()
        await db.upsert_q_value(AGENT, state, "a", 1.0)
        assert await seconds_to_expiry(db, state, "a") == pytest.approx(3600, abs=60)
        await set_expiry(db, state, 5)

        calls = {
            "get_q_value": lambda: db.get_q_value(AGENT, state, "a"),
            "get_best_action": lambda: db.get_best_action(AGENT, state),
            "get_all_q_values_for_state": lambda: db.get_all_q_values_for_state(AGENT, state),
            "update": lambda: db.update_q_value(AGENT, state, "a", 1.0, 0.0, 0.1, 0.9),
            "upsert": lambda: db.upsert_q_value(AGENT, state, "a", 2.0),
            "batch": lambda: db.batch_update_q_values([update(state, "a", 1.0)]),
        }
        await calls[use]()

        assert await seconds_to_expiry(db, state, "a") == pytest.approx(3600, abs=60)
    finally:
        await db.close()


async def test_an_expired_q_value_is_gone_for_reads_and_starts_afresh(
    manager: DatabaseManager,
) -> None:
    state = new_state()
    await manager.upsert_q_value(AGENT, state, "a", 9.0, action_data={"old": True})
    await manager.upsert_q_value(AGENT, state, "b", 1.0)
    await set_expiry(manager, state, -1)

    assert await manager.get_q_value(AGENT, state, "a") is None
    assert await manager.get_best_action(AGENT, state) is None
    assert await manager.get_all_q_values_for_state(AGENT, state) == []

    # Updating it starts from 0 with one visit, as if cleanup had already removed it.
    value = await manager.update_q_value(AGENT, state, "a", 1.0, 0.0, 0.5, 0.9)
    assert value == td_update(0.0, 1.0, 0.0, 0.5, 0.9)
    [item] = await manager.get_all_q_values_for_state(AGENT, state)
    assert item == {"action_hash": "a", "q_value": 0.5, "visit_count": 1, "action_data": None}


async def test_retention_none_keeps_q_values_for_ever(learning_url: str) -> None:
    db = DatabaseManager(learning_url, min_connections=1, q_value_retention=None)
    try:
        state = new_state()
        await db.update_q_value(AGENT, state, "a", 1.0, 0.0, 0.5, 0.9)
        row = await stored_row(db, state, "a")
        assert row.expires_at is None
    finally:
        await db.close()


async def test_validating_a_big_batch_lets_other_tasks_run(manager: DatabaseManager) -> None:
    """Fifty tasks submitting batches at once used to validate all of them in one event-loop
    iteration (a 48 ms stall in the benchmark): validation now yields every few updates.

    Counted, not timed: how many times another task ran while the batch was being read.
    """
    ticks = 0
    running = True

    async def other_task() -> None:
        nonlocal ticks
        while running:
            ticks += 1
            await asyncio.sleep(0)

    seen: list[int] = []
    state = new_state()

    def updates() -> Any:
        for i in range(200):
            seen.append(ticks)
            yield {
                "agent_type": AGENT,
                "state_hash": state,
                "action_hash": f"a{i}",
                "reward": 1.0,
                "next_max_q": 0.0,
                "alpha": 0.5,
                "gamma": 0.9,
            }

    ticker = asyncio.create_task(other_task())
    await asyncio.sleep(0)
    try:
        assert await manager.batch_update_q_values(updates()) == 200
    finally:
        running = False
        await ticker
    # The other task ran between the first update read and the last one, many times over.
    assert seen[-1] - seen[0] >= 10
    assert await manager.get_q_value(AGENT, state, "a199") == 0.5
