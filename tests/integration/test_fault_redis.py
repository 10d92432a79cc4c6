"""Redis behind a fault proxy: refused, frozen, slowed, reset or stalled mid-reply (SPEC §4, §11).

Every test runs a ``redis-server`` of its own on a free loopback port (never the shared one)
and reaches it only through :class:`~lionagi_qe.testing.faults.FaultProxy`, whose mode changes
while connections are live. PostgreSQL (the cache tier's source of truth) stays healthy.

The promises, for ``RedisMemory`` with ``socket_timeout = socket_connect_timeout = 0.25``:

- under any fault, every call either returns its own correct answer or raises
  :class:`BackendUnavailableError` (never a raw driver error) within ``FAIL_BOUND`` seconds.
  A call that gets a connection at once costs at most one connect (``socket_connect_timeout``)
  plus one read (``socket_timeout``): commands are never retried. A call queued behind a full
  pool also waits for a slot, each holder giving it back within those timeouts (and never
  longer than ``pool_timeout``). The tests run at most 1.5 calls per connection, so the bound
  is ``2 * 0.25`` plus scheduling slack for a shared 2-core machine: 1.0 s (measured: 0.25 s
  for a call with a connection, 0.51 s for a queued one; refused or reset: under 10 ms);
- once the fault clears, the same memory (no restart) succeeds again within ``RECOVER_BOUND``;
- no reply is ever delivered to the wrong call, also after a reply was cut mid-way and its
  rest arrived late; a write acknowledged before or after the fault is there; a write that
  failed during the fault is either absent or exactly what was written (its outcome is unknown:
  a request held by a hung server may still run once it thaws);
- a Redis restarted empty reads as empty (absent, never stale) and its indexes agree.

For ``CachedMemory`` (Redis faulty, database healthy), the modes ``test_cache_outage`` lacks
(it covers SIGSTOP freezes, kills and AOF/snapshot restarts): slowed, reset mid-reply, stalled
mid-reply and refused. Every call succeeds from the database within ``test_cache_outage``'s
bound, the breaker opens, and no pre-fault value is served after Redis is back.

Measured figures are printed (``pytest -s``) and asserted against the bounds.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import BlockingConnectionPool, Redis
from test_cache_outage import BOUND, Stopwatch, exercise_everything
from test_cache_support import (
    KEY,
    Factory,
    NaiveCacheAside,
    cached_value,
    factory,
    private_redis,
    until,
)

from lionagi_qe import BackendUnavailableError, RedisMemory
from lionagi_qe.backends.redis_support import ConnectionGate
from lionagi_qe.cache import BreakerState
from lionagi_qe.testing.faults import FaultProxy

pytestmark = [pytest.mark.integration, pytest.mark.redis]
__all__ = ["factory", "private_redis"]

TIMEOUT = 0.25  # socket_timeout and socket_connect_timeout of every RedisMemory here
SLACK = 0.5  # scheduling on a busy 2-core machine
FAIL_BOUND = 2 * TIMEOUT + SLACK  # one timeout waiting for a pool slot, one of its own
RECOVER_BOUND = 1.0  # from the fault's end to the first successful call
# Faults under which no reply can arrive in time.
HARD_FAULTS = ["refuse", "freeze", "slow", "reset", "stall"]


def apply(proxy: FaultProxy, fault: str) -> None:
    """Start ``fault`` on ``proxy`` (``refuse`` also drops live connections: a server down)."""
    if fault == "refuse":
        proxy.refuse()
        proxy.drop_connections()
    elif fault == "freeze":
        proxy.freeze()
    elif fault == "slow":
        proxy.slow(2 * TIMEOUT)  # each way: every reply arrives after the socket timeout
    elif fault == "reset":
        proxy.reset_mid_reply()
    elif fault == "stall":
        proxy.stall_mid_reply()
    else:  # pragma: no cover - a typo in a parameter
        raise AssertionError(fault)


@pytest_asyncio.fixture(loop_scope="session")
async def proxied(private_redis: Any) -> AsyncIterator[tuple[Any, FaultProxy]]:
    """A private redis-server and a fault proxy in front of it."""
    server = private_redis()
    proxy = await FaultProxy("127.0.0.1", server.port).start()
    try:
        yield server, proxy
    finally:
        if proxy.mode.value != "pass":
            proxy.pass_through()
        await proxy.aclose()


def proxy_url(proxy: FaultProxy) -> str:
    return f"redis://{proxy.host}:{proxy.port}/0"


@pytest_asyncio.fixture(loop_scope="session")
async def make_memory(
    proxied: tuple[Any, FaultProxy],
) -> AsyncIterator[Callable[..., RedisMemory]]:
    """RedisMemory through the proxy, with short timeouts and a prefix of the test's own."""
    made: list[RedisMemory] = []
    prefix = f"fault-{uuid.uuid4().hex[:8]}:"

    def make(**options: Any) -> RedisMemory:
        options.setdefault("socket_timeout", TIMEOUT)
        options.setdefault("socket_connect_timeout", TIMEOUT)
        options.setdefault("pool_timeout", 5.0)
        memory = RedisMemory(url=proxy_url(proxied[1]), prefix=prefix, **options)
        made.append(memory)
        return memory

    try:
        yield make
    finally:
        for memory in made:
            await memory.close()


class Outcomes:
    """Times calls; each must give its own expected answer or a typed error within the bound."""

    def __init__(self) -> None:
        self.ok: list[float] = []
        self.failed: list[float] = []

    async def check(self, call: Awaitable[Any], expected: Any = ..., label: str = "") -> Any:
        started = time.monotonic()
        try:
            result = await call
        except BackendUnavailableError:
            self.failed.append(time.monotonic() - started)
            return None
        except Exception as exc:  # a raw driver error, or anything else, is a failure
            raise AssertionError(f"{label}: untyped {type(exc).__name__}: {exc}") from exc
        self.ok.append(time.monotonic() - started)
        if expected is not ...:
            assert result == expected, f"{label}: got {result!r}, expected {expected!r}"
        return result

    @property
    def slowest(self) -> float:
        return max(self.ok + self.failed, default=0.0)


async def recovery_time(call: Callable[[], Awaitable[Any]], expected: Any) -> float:
    """Seconds until ``call()`` first returns ``expected`` (typed errors meanwhile)."""
    started = time.monotonic()
    while True:
        try:
            result = await call()
        except BackendUnavailableError:
            if time.monotonic() - started > RECOVER_BOUND:
                raise
            await asyncio.sleep(0.01)
            continue
        assert result == expected
        return time.monotonic() - started


async def own_answers(memory: RedisMemory, tag: str, count: int = 40) -> None:
    """Concurrent calls on distinct keys and values: each must get its own answer."""
    values = {f"aqe/own/{tag}/{i}": {"i": i, "pad": "x" * (i * 97 % 3000)} for i in range(count)}
    versions = await asyncio.gather(*(memory.store(k, v) for k, v in values.items()))
    assert all(version >= 1 for version in versions)
    got = await asyncio.gather(*(memory.retrieve(key) for key in values))
    assert got == list(values.values())
    entries = await asyncio.gather(*(memory.get_entry(key) for key in values))
    assert [entry.key if entry else None for entry in entries] == list(values)
    assert await memory.retrieve_many(list(values)) == values


def report(label: str, **figures: float) -> None:
    print(f"[fault-redis] {label}: " + ", ".join(f"{k}={v:.3f}" for k, v in figures.items()))


# -- RedisMemory ------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", HARD_FAULTS)
async def test_redis_memory_calls_fail_typed_and_bounded_then_heal(
    proxied: tuple[Any, FaultProxy], make_memory: Callable[..., RedisMemory], fault: str
) -> None:
    _, proxy = proxied
    memory = make_memory(max_connections=4)
    assert await memory.store("aqe/f/before", {"v": "before"}, partition="p") == 1
    await memory.store_many({f"aqe/f/m{i}": i for i in range(5)}, partition="p")
    assert await memory.retrieve("aqe/f/before") == {"v": "before"}  # connections pooled

    apply(proxy, fault)
    seen = Outcomes()
    written: dict[str, int] = {}
    for i in range(3):
        written[f"aqe/f/during/{i}"] = i
        await seen.check(memory.store(f"aqe/f/during/{i}", i), label="store")
        await seen.check(memory.retrieve("aqe/f/before"), {"v": "before"}, "retrieve")
    await seen.check(memory.list_keys("aqe/f/m"), [f"aqe/f/m{i}" for i in range(5)], "list_keys")
    await seen.check(memory.search("aqe/f/m*"), {f"aqe/f/m{i}": i for i in range(5)}, "search")
    await seen.check(memory.get_stats(), label="get_stats")
    await seen.check(memory.increment("aqe/f/n"), label="increment")
    # Several calls at once, more than the pool holds: each still bounded (the gate waits).
    await asyncio.gather(
        *(seen.check(memory.exists("aqe/f/before"), True, "exists") for _ in range(6))
    )
    assert seen.failed, f"{fault}: the fault was not felt"
    assert not seen.ok, f"{fault}: a call succeeded through a fault that lets no reply through"
    assert seen.slowest < FAIL_BOUND, (fault, seen.slowest)

    proxy.pass_through()
    recovered = await recovery_time(lambda: memory.retrieve("aqe/f/before"), {"v": "before"})
    report(
        f"RedisMemory {fault}",
        slowest_failure=max(seen.failed),
        median_failure=statistics.median(seen.failed),
        recovery=recovered,
    )
    assert recovered < RECOVER_BOUND
    await own_answers(memory, fault)
    for key, value in written.items():  # unknown outcome: absent or exactly what was sent
        assert await memory.retrieve(key) in (None, value)
    assert await memory.store("aqe/f/after", "after") == 1
    assert await memory.retrieve("aqe/f/after") == "after"
    assert await memory.retrieve("aqe/f/before") == {"v": "before"}
    stats = await memory.get_stats()
    keys = await memory.list_keys()
    assert stats["total_keys"] == len(keys) == len(await memory.search("aqe/*"))


async def test_redis_memory_under_a_slow_link_succeeds_with_the_added_latency(
    proxied: tuple[Any, FaultProxy], make_memory: Callable[..., RedisMemory]
) -> None:
    """A link slower than usual but inside the socket timeout: every call answers, correctly."""
    _, proxy = proxied
    memory = make_memory(max_connections=4)
    await memory.store("aqe/s/a", "a")
    delay = 0.04
    proxy.slow(delay)
    seen = Outcomes()
    for _ in range(5):
        await seen.check(memory.retrieve("aqe/s/a"), "a", "retrieve")
    await seen.check(memory.store("aqe/s/b", "b"), 1, "store")
    await seen.check(memory.list_keys("aqe/s/"), ["aqe/s/a", "aqe/s/b"], "list_keys")
    assert not seen.failed
    report("RedisMemory slow 40 ms/chunk", median_call=statistics.median(seen.ok))
    # One round trip costs the delay twice; a script call may need up to three round trips.
    assert 2 * delay <= statistics.median(seen.ok) < 3 * 2 * delay + SLACK
    proxy.pass_through()
    await own_answers(memory, "slow-ok")


async def test_pooled_connections_reset_while_idle_are_replaced_before_use(
    proxied: tuple[Any, FaultProxy], make_memory: Callable[..., RedisMemory]
) -> None:
    """A server (or a load balancer) that reset idle connections costs no call a failure:
    commands are never retried, so a reset socket must be replaced before it is used."""
    _, proxy = proxied
    memory = make_memory(max_connections=4)
    await memory.store("aqe/idle/a", "a")
    assert await asyncio.gather(*(memory.retrieve("aqe/idle/a") for _ in range(8))) == ["a"] * 8
    for _ in range(2):
        assert proxy.drop_connections() >= 1
        await asyncio.sleep(0.05)  # the resets have arrived; the pool still holds the sockets
        got = await asyncio.gather(*(memory.retrieve("aqe/idle/a") for _ in range(8)))
        assert got == ["a"] * 8
    assert await memory.store("aqe/idle/b", "b") == 1


@pytest.mark.parametrize("hold", ["stall", "freeze"])
async def test_a_late_reply_never_reaches_the_next_call(
    proxied: tuple[Any, FaultProxy], make_memory: Callable[..., RedisMemory], hold: str
) -> None:
    """One connection only: a reply cut (stall) or held (freeze) past the timeout, released
    afterwards, must not be read as the answer to the next call on that pool slot."""
    _, proxy = proxied
    memory = make_memory(max_connections=1)
    first = {"who": "first", "pad": "a" * 5000}
    second = {"who": "second", "pad": "b" * 5000}
    await memory.store("aqe/late/first", first)
    await memory.store("aqe/late/second", second)
    assert await memory.retrieve("aqe/late/first") == first
    if hold == "stall":
        proxy.stall_mid_reply(after=10)
    else:
        proxy.freeze()
    with pytest.raises(BackendUnavailableError):
        await memory.retrieve("aqe/late/first")
    proxy.pass_through()  # the held rest (or the whole reply) flows while we ask again
    for _ in range(3):
        assert await memory.retrieve("aqe/late/second") == second
        assert await memory.retrieve("aqe/late/first") == first
        assert await memory.exists("aqe/late/none") is False
    await own_answers(memory, f"late-{hold}", count=10)


@pytest.mark.parametrize("read_timeout", [TIMEOUT, 30.0, None])
@pytest.mark.parametrize("stage", ["command", "handshake"])
async def test_a_cancelled_call_ends_promptly_and_leaves_the_pool_clean(
    proxied: tuple[Any, FaultProxy],
    make_memory: Callable[..., RedisMemory],
    read_timeout: float | None,
    stage: str,
) -> None:
    """Cancelling a call stuck on a frozen server raises CancelledError at once, holds no
    connection and corrupts none (the one connection's next calls get their own answers)."""
    _, proxy = proxied
    memory = make_memory(max_connections=1, socket_timeout=read_timeout)
    await memory.store("aqe/c/a", "a")
    await memory.store("aqe/c/b", "b")
    if stage == "handshake":
        proxy.drop_connections()  # the next call connects, and its handshake hangs
        await asyncio.sleep(0.05)
    proxy.freeze()
    task = asyncio.create_task(memory.retrieve("aqe/c/a"))
    await asyncio.sleep(0.1)  # inside the command (or the handshake), waiting on the server
    assert not task.done()
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(2):  # a swallowed cancellation would hang here
            await task
    elapsed = time.monotonic() - started
    report(f"cancel {stage} socket_timeout={read_timeout}", cancel_latency=elapsed)
    assert elapsed < 0.1, elapsed
    assert task.cancelled(), "the task ended cancelled, not with a result or another error"
    pool = memory._pool
    assert pool is not None
    assert not list(pool._in_use_connections), "no connection is left checked out"
    gate = memory._gate
    assert gate is not None and not gate._semaphore.locked(), "the gate slot was given back"
    proxy.pass_through()
    await asyncio.sleep(0.05)  # whatever the frozen server still answers arrives now
    for _ in range(3):
        assert await memory.retrieve("aqe/c/b") == "b"
        assert await memory.retrieve("aqe/c/a") == "a"
    await own_answers(memory, f"cancel-{stage}-{read_timeout}", count=10)


def _cancel_noting(task: asyncio.Task[Any], reached: dict[asyncio.Task[Any], bool]) -> None:
    reached[task] = task.cancel()


async def cancellation_storm(
    start: Callable[[int], Awaitable[Any]], count: int, typed: type[Exception]
) -> tuple[int, list[str]]:
    """Start ``count`` calls and cancel each at a scattered moment (0-99 ms in).

    Returns how many cancellations reached an unfinished call, and a description of each such
    call that did not end cancelled (a swallowed cancellation). Calls that ended before their
    cancellation must have succeeded or raised ``typed``.
    """
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[Any]] = []
    reached: dict[asyncio.Task[Any], bool] = {}
    for i in range(count):
        task: asyncio.Task[Any] = asyncio.ensure_future(start(i))
        tasks.append(task)
        delay = (i * 7919 % 100) / 1000
        loop.call_later(delay, _cancel_noting, task, reached)
    async with asyncio.timeout(20):
        await asyncio.gather(*tasks, return_exceptions=True)
    swallowed: list[str] = []
    for task in tasks:
        if task.cancelled():
            continue
        error = task.exception()
        if reached.get(task):
            swallowed.append(repr(error) if error else f"result {task.result()!r}")
        elif error is not None:
            assert isinstance(error, typed), error
    return sum(reached.values()), swallowed


async def cancel_at_every_step(
    start: Callable[[int], Awaitable[Any]], steps: int, typed: type[Exception]
) -> tuple[int, list[str]]:
    """Run one call at a time and cancel the n-th after exactly n turns of the event loop, for
    n in ``range(steps)``: every await point of a call's path is hit, deterministically.

    Returns (cancellations that reached an unfinished call, swallowed ones as in
    :func:`cancellation_storm`).
    """
    loop = asyncio.get_running_loop()
    reached = 0
    swallowed: list[str] = []
    for step in range(steps):
        task: asyncio.Task[Any] = asyncio.ensure_future(start(step))
        hit: list[bool] = []

        def hop(left: int, task: asyncio.Task[Any] = task, hit: list[bool] = hit) -> None:
            if left:
                loop.call_soon(hop, left - 1)
            else:
                hit.append(task.cancel())

        loop.call_soon(hop, step)
        async with asyncio.timeout(5):
            await asyncio.gather(task, return_exceptions=True)
        if not hit or not hit[0]:
            continue
        reached += 1
        if not task.cancelled():
            error = task.exception()
            swallowed.append(
                f"step {step}: " + (repr(error) if error else f"result {task.result()!r}")
            )
    return reached, swallowed


async def test_cancellation_at_any_moment_is_never_swallowed(
    proxied: tuple[Any, FaultProxy], make_memory: Callable[..., RedisMemory]
) -> None:
    """Cancel calls at scattered moments (waiting for a slot, connecting, sending, reading,
    just as the reply lands, just as a timeout fires): a call that ``cancel()`` reached must
    end cancelled, never with a value or another error, and the pool stays clean.

    redis-py sends under ``asyncio.wait_for``, which on Python 3.11 drops a cancellation
    that lands as the send completes; ``ConnectionGate`` re-delivers it."""
    _, proxy = proxied
    memory = make_memory(max_connections=3, socket_timeout=0.05)
    await memory.store("aqe/cx/a", "a")
    for name, one in {
        "store": lambda i: memory.store(f"aqe/cx/s{i}", i),
        "retrieve": lambda i: memory.retrieve("aqe/cx/a"),
        "list_keys": lambda i: memory.list_keys("aqe/cx/a"),
    }.items():
        reached, swallowed = await cancel_at_every_step(one, 40, BackendUnavailableError)
        report(f"cancel at every step, RedisMemory.{name}", reached=reached)
        assert reached >= 3
        assert not swallowed, (name, swallowed[:5])
    proxy.slow(0.01)  # replies take ~20 ms, some calls time out (50 ms) while queued

    def call(i: int) -> Awaitable[Any]:
        return memory.retrieve("aqe/cx/a") if i % 3 == 0 else memory.store(f"aqe/cx/w{i}", i)

    reached, swallowed = await cancellation_storm(call, 300, BackendUnavailableError)
    report("cancellation storm, RedisMemory", reached=reached, swallowed=len(swallowed))
    assert reached > 100
    assert not swallowed, swallowed[:5]
    proxy.pass_through()
    await asyncio.sleep(0.1)
    pool = memory._pool
    assert pool is not None and not list(pool._in_use_connections)
    assert memory._gate is not None and not memory._gate._semaphore.locked()
    await own_answers(memory, "cancel-storm", count=10)


@pytest.mark.parametrize("swallow", ["returns", "raises"])
async def test_the_gate_redelivers_a_cancellation_its_call_swallowed(swallow: str) -> None:
    """The gate alone, with a call that swallows its cancellation the way a driver can (by
    returning, or by turning it into a driver error): the caller still ends cancelled."""
    gate = ConnectionGate(1, 1.0, "redis://test")
    inside = asyncio.Event()

    async def swallowing() -> str:
        inside.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            if swallow == "raises":
                raise OSError("connection closed while cancelling") from None
        return "result"

    task = asyncio.create_task(gate.run(swallowing()))
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not gate._semaphore.locked()

    async def plain() -> str:
        return "ok"

    assert await gate.run(plain()) == "ok", "an uncancelled call is untouched"


async def test_cancellation_is_never_swallowed_with_a_caller_client(
    proxied: tuple[Any, FaultProxy],
) -> None:
    _, proxy = proxied
    pool = BlockingConnectionPool.from_url(
        proxy_url(proxy), socket_timeout=0.05, max_connections=3, timeout=10
    )
    client = Redis(connection_pool=pool)
    memory = RedisMemory(client=client, prefix=f"fault-{uuid.uuid4().hex[:8]}:")
    try:
        await memory.store("aqe/cx/a", "a")
        reached, swallowed = await cancel_at_every_step(
            lambda i: memory.store(f"aqe/cx/w{i}", i), 40, BackendUnavailableError
        )
        report("cancel at every step, caller's client", reached=reached, swallowed=len(swallowed))
        assert not swallowed, swallowed[:5]
    finally:
        proxy.pass_through()
        await memory.close()
        await client.aclose()


@pytest.mark.postgres
async def test_cached_memory_never_swallows_a_cancellation(
    factory: Factory, proxied: tuple[Any, FaultProxy]
) -> None:
    _, proxy = proxied
    memory = factory.cached(redis_url=proxy_url(proxy))
    await memory.store(KEY, "v")
    assert await memory.retrieve(KEY) == "v"  # cached: the next reads are hits
    reached, swallowed = await cancel_at_every_step(
        lambda i: memory.retrieve(KEY), 40, BackendUnavailableError
    )
    report("cancel at every step, CachedMemory.retrieve", reached=reached, swallowed=len(swallowed))
    assert not swallowed, swallowed[:5]


async def test_redis_restarted_empty_reads_as_empty_and_indexes_agree(
    proxied: tuple[Any, FaultProxy], make_memory: Callable[..., RedisMemory]
) -> None:
    """A restart without persistence loses everything: reads say absent (never a stale value),
    and listing, search, statistics and partitions agree that nothing is there."""
    server, _ = proxied
    memory = make_memory(max_connections=4)
    await memory.store_many({f"aqe/r/{i}": i for i in range(20)}, partition="runs")
    await memory.store("aqe/r/entry", {"v": 3}, ttl=60, metadata={"by": "a"})
    await memory.increment("aqe/r/n", 5)
    assert (await memory.get_stats())["total_keys"] == 22

    server.kill()
    seen = Outcomes()
    await seen.check(memory.retrieve("aqe/r/1"), label="retrieve while down")
    await seen.check(memory.list_keys(), label="list_keys while down")
    assert len(seen.failed) == 2 and seen.slowest < FAIL_BOUND
    server.start()  # same port, no AOF, no snapshot: empty

    started = time.monotonic()
    assert await memory.retrieve("aqe/r/1") is None, "a stale pooled socket is replaced, not used"
    report("RedisMemory restarted empty", first_call=time.monotonic() - started)
    assert await memory.get_entry("aqe/r/entry") is None
    assert await memory.exists("aqe/r/entry") is False
    assert await memory.retrieve_many([f"aqe/r/{i}" for i in range(20)]) == {}
    assert await memory.list_keys() == []
    assert await memory.search("aqe/r/*") == {}
    assert await memory.search("r/1", regex=True) == {}
    stats = await memory.get_stats()
    assert stats["total_keys"] == 0 and stats["total_expired"] == 0
    assert stats["partitions"] == {}
    assert await memory.clear_partition("runs") == 0
    assert await memory.cleanup_expired() == 0
    # Writing again starts over, honestly: new entries, version 1, counters from the delta.
    assert await memory.store("aqe/r/entry", {"v": 4}) == 1
    assert await memory.increment("aqe/r/n", 2) == 2
    assert await memory.list_keys() == ["aqe/r/entry", "aqe/r/n"]
    assert (await memory.get_stats())["partitions"] == {"default": 2}


@pytest.mark.parametrize("kind", ["ours", "naive"])
async def test_redis_memory_with_driver_defaults_would_hang(
    proxied: tuple[Any, FaultProxy], make_memory: Callable[..., RedisMemory], kind: str
) -> None:
    """The bound comes from the socket timeouts: without them a frozen server holds each call
    until it thaws (here after 3 s; in production, indefinitely)."""
    _, proxy = proxied
    if kind == "ours":
        memory = make_memory()
    else:
        memory = make_memory(socket_timeout=None, socket_connect_timeout=None)
    await memory.store("aqe/d/a", "a")
    proxy.freeze()
    thaw = asyncio.get_running_loop().call_later(3, proxy.pass_through)
    started = time.monotonic()
    try:
        result = await memory.retrieve("aqe/d/a")
    except BackendUnavailableError:
        result = "unavailable"
    finally:
        thaw.cancel()
    elapsed = time.monotonic() - started
    report(f"frozen, {kind} timeouts", call=elapsed)
    if kind == "ours":
        assert result == "unavailable" and elapsed < FAIL_BOUND
    else:
        assert result == "a" and elapsed >= 2.9, "the naive call waited for the thaw"


# -- CachedMemory ---------------------------------------------------------------------------


CACHE_FAULTS = ["slow", "reset", "stall", "refuse"]


@pytest.mark.postgres
@pytest.mark.parametrize("fault", CACHE_FAULTS)
async def test_cached_memory_keeps_answering_from_the_database(
    factory: Factory, proxied: tuple[Any, FaultProxy], fault: str
) -> None:
    server, proxy = proxied
    url = proxy_url(proxy)
    writer = factory.cached(redis_url=url, breaker_reset=0.3)
    reader = factory.cached(redis_url=url, breaker_reset=0.3)
    raw = factory.raw(server.url)  # straight to the server, around the proxy
    await writer.store(KEY, "before")
    assert await reader.retrieve(KEY) == "before"
    assert await cached_value(raw, writer, KEY) == b'"before"'
    database = writer.database
    baseline = []
    for _ in range(20):
        started = time.monotonic()
        await database.retrieve(KEY)
        baseline.append(time.monotonic() - started)
    base = statistics.median(baseline)

    apply(proxy, fault)
    timed = Stopwatch()
    # This write's invalidation fails (its request may still reach Redis; the reply does not):
    # the breaker trips at once. The next write then sends nothing to Redis, which keeps
    # "before" cached: the value that must never be served again.
    await timed(writer.store("aqe/cache/other", 1), "store (trips)")
    assert writer.breaker_state is not BreakerState.CLOSED
    await timed(writer.store(KEY, "during"), "store (breaker open)")
    reads = Stopwatch()  # a pure reader: only its own failed lookups can open its breaker
    for _ in range(10):
        assert await reads(reader.retrieve(KEY)) == "during"
    paid = [t - base for t, _ in reads.timings if t - base > 0.1]
    assert len(paid) <= 3, f"more reads than breaker_failures paid a timeout: {paid}"
    concurrent = await asyncio.gather(*(timed(reader.retrieve(KEY)) for _ in range(20)))
    assert concurrent == ["during"] * 20
    await exercise_everything(writer, timed, f"{fault}-writer")
    await exercise_everything(reader, timed, f"{fault}-reader")
    # Once open, the breaker keeps calls off Redis: database latency only.
    open_reads = Stopwatch()
    for _ in range(10):
        assert await open_reads(reader.retrieve(KEY)) == "during"
    added_open = statistics.median(t for t, _ in open_reads.timings) - base
    first_reads = [t - base for t, _ in reads.timings[:3]]
    report(
        f"CachedMemory {fault}",
        database_median=base,
        slowest_call=max(timed.slowest[0], reads.slowest[0]),
        first_reads_added_max=max(first_reads),
        reads_that_paid=len(paid),
        added_once_open=added_open,
    )
    assert max(timed.slowest[0], reads.slowest[0]) < BOUND
    assert open_reads.slowest[0] - base < 0.1, open_reads.slowest
    assert reader.breaker_state is not BreakerState.CLOSED
    # Redis itself still holds the pre-fault record: the breaker-open write could not reach it.
    assert await cached_value(raw, writer, KEY) == b'"before"'

    proxy.pass_through()
    started = time.monotonic()
    await until(lambda: writer.breaker_state is BreakerState.CLOSED, within=5)
    await until(lambda: reader.breaker_state is BreakerState.CLOSED, within=5)
    report(f"CachedMemory {fault} recovery", breakers_closed=time.monotonic() - started)
    late = factory.cached(redis_url=server.url)  # never saw the fault
    for memory in (writer, reader, late):
        for _ in range(3):
            assert await memory.retrieve(KEY) == "during"
    stats = await late.get_stats()
    assert stats["cache_hits"] >= 2, "the cache is used again"
    values = {f"aqe/cache/own/{i}": {"i": i} for i in range(20)}
    await writer.store_many(values)
    got = await asyncio.gather(*(reader.retrieve(key) for key in values))
    assert got == list(values.values())
    got = await asyncio.gather(*(reader.retrieve(key) for key in values))  # now from Redis
    assert got == list(values.values())


@pytest.mark.postgres
async def test_cached_memory_on_a_slow_link_inside_the_timeout(
    factory: Factory, proxied: tuple[Any, FaultProxy]
) -> None:
    """Slow but answering in time: the breaker stays closed, answers stay right, and the added
    latency is a few round trips of the slowed link (measured, bounded)."""
    _, proxy = proxied
    memory = factory.cached(redis_url=proxy_url(proxy))
    await memory.store(KEY, "v")
    assert await memory.retrieve(KEY) == "v"
    delay = 0.04
    proxy.slow(delay)
    hits = Stopwatch()
    for _ in range(5):
        assert await hits(memory.retrieve(KEY)) == "v"
    writes = Stopwatch()
    misses = Stopwatch()
    for i in range(3):
        await writes(memory.store(KEY, f"v{i}"))
        assert await misses(memory.retrieve(KEY)) == f"v{i}"
    proxy.pass_through()
    report(
        "CachedMemory slow 40 ms/chunk",
        hit_median=statistics.median(t for t, _ in hits.timings),
        write_median=statistics.median(t for t, _ in writes.timings),
        miss_median=statistics.median(t for t, _ in misses.timings),
    )
    assert memory.breaker_state is BreakerState.CLOSED
    # A hit is one round trip; a write one unlink; a miss up to three (MGET, lease, fill).
    assert max(t for t, _ in hits.timings) < 2 * delay + SLACK
    assert max(t for t, _ in misses.timings) < 3 * 2 * delay + SLACK
    assert max(t for t, _ in writes.timings) < BOUND


@pytest.mark.postgres
@pytest.mark.parametrize(
    "kind",
    [
        "cached",
        pytest.param(
            "naive",
            marks=pytest.mark.xfail(
                strict=True, reason="its DEL never reached Redis: the old record is served"
            ),
        ),
    ],
)
async def test_a_write_while_refused_is_not_shadowed_once_redis_returns(
    factory: Factory, proxied: tuple[Any, FaultProxy], kind: str
) -> None:
    """Redis unreachable (refused, connections dropped) while a write commits; Redis comes back
    with the pre-write record still in it: no instance may serve that record."""
    _, proxy = proxied
    url = proxy_url(proxy)

    def make() -> Any:
        if kind == "cached":
            return factory.cached(redis_url=url, breaker_reset=0.3)
        return factory.naive(NaiveCacheAside, redis_url=url)

    writer, reader = make(), make()
    await writer.store(KEY, "before")
    assert await reader.retrieve(KEY) == "before"
    apply(proxy, "refuse")
    await writer.store(KEY, "during")
    proxy.pass_through()
    if kind == "cached":
        await until(lambda: writer.breaker_state is BreakerState.CLOSED, within=5)
    for memory in (reader, writer):
        for _ in range(3):
            assert await memory.retrieve(KEY) == "during"
