"""Plumbing for :class:`~lionagi_qe.backends.redis.RedisMemory`: keyspace, pool, gate, batches.

No I/O happens here: a pool connects on its first command, so a memory built anywhere (even
outside a running loop) connects lazily, and concurrent first calls share its one pool.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from lionagi_qe.backends.base import EncodedItem
from lionagi_qe.config import mask_url
from lionagi_qe.errors import BackendUnavailableError, InvalidArgumentError
from lionagi_qe.keys import GlobPattern

__all__ = [
    "ConnectionGate",
    "HealingPool",
    "cancellable",
    "encode_batch",
    "keyspace",
    "make_pool",
    "ttl_millis",
    "whole_range",
]

T = TypeVar("T")

#: Entries validated between two yields to the event loop in ``encode_batch``.
ENCODE_CHUNK = 250


def keyspace(prefix: str) -> str:
    """The start of every key a store with ``prefix`` writes: ``prefix`` plus a hash tag.

    ``lionagi:`` gives ``lionagi:{lionagi}:``. A prefix that already holds a hash tag keeps
    deciding the slot (Redis hashes the first ``{…}`` of a key).

    Raises:
        InvalidArgumentError: ``prefix`` is not a non-empty str, or holds an empty hash tag
            (``{}``), which would make Redis Cluster hash each key on its own.
    """
    if not isinstance(prefix, str) or not prefix:
        raise InvalidArgumentError("prefix must be a non-empty str")
    tag = prefix.replace("{", "").replace("}", "").strip(":") or "lionagi"
    space = f"{prefix}{{{tag}}}:"
    start = space.find("{")
    if space.find("}", start + 1) == start + 1:
        raise InvalidArgumentError("prefix must not contain an empty hash tag '{}'")
    return space


class HealingPool(ConnectionPool):
    """A ``ConnectionPool`` that also replaces pooled connections the server *reset*.

    redis-py checks a pooled connection before use (``ensure_connection``) for unread data or
    an orderly close (EOF), but not for a reset (``RST``: a crashed or restarted server, a
    proxy or load balancer dropping idle connections): the stream then holds an error, not an
    EOF, and the next command fails on it. Commands are never retried here, so every pooled
    connection would cost one failed call after the server is back. This pool reconnects such
    a connection before handing it out (nothing was sent on it yet, so this is safe).
    """

    async def ensure_connection(self, connection: AbstractConnection) -> None:
        reader: asyncio.StreamReader | None = getattr(connection, "_reader", None)
        if reader is not None and reader.exception() is not None:
            await connection.disconnect()
        await super().ensure_connection(connection)


def make_pool(
    *,
    host: str,
    port: int,
    db: int,
    password: str | None,
    url: str | None,
    max_connections: int,
    **options: Any,
) -> ConnectionPool:
    """A connection pool of at most ``max_connections``, from ``url`` or host/port/db/password.

    Commands are never retried: one that timed out may have run, and a retried increment or
    store would apply twice. (A stale pooled socket, closed or reset by the server, is
    replaced before it is used: see :class:`HealingPool`.)

    Raises:
        InvalidArgumentError: ``max_connections`` is not a positive int, or ``url`` is not a
            Redis URL (named masked, without the driver's message, which may quote it).
    """
    if isinstance(max_connections, bool) or not isinstance(max_connections, int):
        raise InvalidArgumentError("max_connections must be an int")
    if max_connections < 1:
        raise InvalidArgumentError("max_connections must be positive")
    options.update(max_connections=max_connections, retry=Retry(NoBackoff(), 0))
    if url is None:
        return HealingPool(host=host, port=port, db=db, password=password, **options)
    try:
        return HealingPool.from_url(url, **options)
    except (ValueError, TypeError):
        raise InvalidArgumentError(f"not a valid Redis URL: {mask_url(url)}") from None


class ConnectionGate:
    """At most ``size`` calls in flight, each waiting at most ``timeout`` seconds to start.

    The pool never has to open more than ``size`` connections: a command holds one connection
    and gives it back before its call leaves the gate. A semaphore costs a few microseconds
    where redis-py's ``BlockingConnectionPool`` costs tens (a condition and a timeout per call).
    """

    def __init__(self, size: int, timeout: float | None, location: str) -> None:
        self.size = size
        self.timeout = timeout
        self._location = location
        self._semaphore = asyncio.Semaphore(size)

    async def run(self, call: Awaitable[T]) -> T:
        """Await ``call`` once a slot is free.

        A cancellation the driver swallowed is delivered here: redis-py sends each command
        under ``asyncio.wait_for``, which on Python 3.11 runs the send as a task of its own and,
        when a cancellation lands while it runs and the send finishes first, returns the send's
        result instead of raising (CPython gh-86296). The task would go on as if never
        cancelled: a cancelled worker loop would never stop, an ``asyncio.timeout`` around the
        call would never fire. So a cancellation request that arrived during the call and is
        still pending (``Task.cancelling()`` grew) becomes a ``CancelledError`` when the call
        returns or fails.

        Raises:
            BackendUnavailableError: no slot came free within ``timeout``.
            asyncio.CancelledError: the task was cancelled during the call.
        """
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else 0
        semaphore = self._semaphore
        try:
            if semaphore.locked():
                async with asyncio.timeout(self.timeout):
                    await semaphore.acquire()
            else:
                await semaphore.acquire()  # free: returns at once
        except BaseException as exc:
            if isinstance(call, Coroutine):
                call.close()  # never started: no "never awaited" warning
            if isinstance(exc, TimeoutError):
                raise BackendUnavailableError(
                    f"no connection to Redis at {self._location} came free within "
                    f"{self.timeout} s ({self.size} in use)"
                ) from None
            raise
        try:
            return await cancellable(call, task, cancelling)
        finally:
            semaphore.release()


async def cancellable(
    call: Awaitable[T], task: asyncio.Task[Any] | None = None, cancelling: int | None = None
) -> T:
    """Await a redis-py call and deliver a cancellation the driver swallowed (see
    :meth:`ConnectionGate.run`): if the task was asked to cancel while the call ran, raise
    ``CancelledError`` instead of returning the call's result or error."""
    if task is None:
        task = asyncio.current_task()
    if cancelling is None:
        cancelling = task.cancelling() if task is not None else 0
    try:
        result = await call
    except Exception as exc:
        if task is not None and task.cancelling() > cancelling:
            raise asyncio.CancelledError from exc
        raise
    if task is not None and task.cancelling() > cancelling:
        raise asyncio.CancelledError
    return result


def ttl_millis(seconds: float | None) -> str:
    """A validated TTL as the scripts take it: milliseconds, ``""`` for none."""
    # Native expiry has millisecond precision; a positive TTL never rounds down to "now".
    return "" if seconds is None else str(max(1, round(seconds * 1000)))


def whole_range(glob: GlobPattern) -> bool:
    """True if ``glob`` is its literal prefix followed by one ``*``: it matches its whole range."""
    return glob.regex.pattern == re.escape(glob.literal_prefix) + ".*"


async def encode_batch(
    items: Mapping[str, Any] | Iterable[tuple[str, Any]],
    encode: Callable[[Any], list[EncodedItem]],
) -> dict[str, str]:
    """Validate and encode a batch with ``encode`` (``MemoryBase._items``): key → value JSON.

    The last value of a repeated key wins. Encoding 10,000 values is tens of milliseconds of
    CPU, so it runs in chunks with a yield to the loop between them. The batch is snapshotted
    first (the caller may change it meanwhile), and only strings outlive a chunk, which spares
    the garbage collector a full collection over thousands of survivors.
    """
    chunks: Iterator[Iterable[Any]]
    if isinstance(items, Mapping):
        keys, values = list(items), list(items.values())
        chunks = (
            zip(keys[at : at + ENCODE_CHUNK], values[at : at + ENCODE_CHUNK], strict=True)
            for at in range(0, len(keys), ENCODE_CHUNK)
        )
    elif isinstance(items, str | bytes) or not isinstance(items, Iterable):
        chunks = iter([items])  # ``encode`` refuses the shape with its usual error
    else:
        pairs = list(items)
        chunks = (pairs[at : at + ENCODE_CHUNK] for at in range(0, len(pairs), ENCODE_CHUNK))
    batch: dict[str, str] = {}
    for number, chunk in enumerate(chunks):
        if number:
            await asyncio.sleep(0)
        for item in encode(chunk):
            batch[item.key] = item.value_json
    return batch
