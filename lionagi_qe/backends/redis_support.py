"""Plumbing for :class:`~lionagi_qe.backends.redis.RedisMemory`: keyspace, pool, gate, batches,
and the client itself, on one server or a Redis Cluster (:class:`RedisConnector`).

No I/O happens at construction: a pool connects on its first command, so a memory built
anywhere (even outside a running loop) connects lazily, and concurrent first calls share its
one pool. Whether the server is a cluster is told (``cluster=True/False``, or a list of nodes)
or found out by the first call (``INFO cluster``), under a lock, so concurrent first calls build
one cluster client, never two.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, TypeAlias, TypeVar
from urllib.parse import urlsplit

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ClusterDownError, RedisClusterException, ResponseError

from lionagi_qe.backends.base import EncodedItem
from lionagi_qe.config import mask_url
from lionagi_qe.errors import BackendUnavailableError, InvalidArgumentError
from lionagi_qe.keys import GlobPattern

__all__ = [
    "Client",
    "ConnectionGate",
    "HealingConnection",
    "HealingPool",
    "HealingSSLConnection",
    "RedisConnector",
    "cancellable",
    "connection_option",
    "encode_batch",
    "info_for_key",
    "is_cluster",
    "keyspace",
    "make_cluster",
    "make_pool",
    "set_connection_option",
    "ttl_millis",
    "whole_range",
]

T = TypeVar("T")

#: A client of one Redis server or of a Redis Cluster (both speak the same commands).
Client: TypeAlias = Redis | RedisCluster

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
    _check_max_connections(max_connections)
    options.update(max_connections=max_connections, retry=Retry(NoBackoff(), 0))
    if url is None:
        return HealingPool(host=host, port=port, db=db, password=password, **options)
    try:
        return HealingPool.from_url(url, **options)
    except (ValueError, TypeError):
        raise InvalidArgumentError(f"not a valid Redis URL: {mask_url(url)}") from None


async def _reconnect_if_reset(connection: AbstractConnection) -> None:
    """Disconnect ``connection`` if the server closed or reset it; it reconnects at once.

    The cluster client keeps its connections per node, outside any ``ConnectionPool``, so
    neither redis-py's own check of a pooled connection (unread data, an orderly close) nor
    :class:`HealingPool`'s (a reset) runs there: a node that restarted, or closed idle clients
    (``timeout``, ``CLIENT KILL``), would cost one failed call per pooled connection. The
    connection classes below make both checks where every command starts, on the stream's
    state alone (no I/O). Nothing was sent yet, so reconnecting is safe.
    """
    reader: asyncio.StreamReader | None = getattr(connection, "_reader", None)
    if reader is not None and (reader.exception() is not None or reader.at_eof()):
        await connection.disconnect()


class HealingConnection(Connection):
    """A TCP connection that replaces itself when the server reset it."""

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        await _reconnect_if_reset(self)
        await super().send_packed_command(command, check_health)


class HealingSSLConnection(SSLConnection):
    """A TLS connection that replaces itself when the server reset it."""

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        await _reconnect_if_reset(self)
        await super().send_packed_command(command, check_health)


def make_cluster(
    *,
    url: str | None = None,
    nodes: Sequence[str] = (),
    host: str = "localhost",
    port: int = 6379,
    password: str | None = None,
    max_connections: int,
    **options: Any,
) -> RedisCluster:
    """A ``RedisCluster`` client from a node's URL, a list of nodes, or host/port. No I/O.

    Decisions, the same as for one server (:func:`make_pool`):

    - Commands are never retried (``Retry(NoBackoff(), 0)``): redis-py's cluster client retries
      a command on a connection error *or a timeout*, and a timed-out script may have run, so a
      retried increment or store would apply twice. A redirection is still followed (``MOVED``
      and ``ASK`` say the command did not run there): after a failover or a resharding the next
      call reaches the slot's new owner. A call that fails on a dead node raises at once and
      makes the client reload the slot map before its next call.
    - ``max_connections`` bounds the connections to each node (redis-py raises
      ``MaxConnectionsError`` beyond it, never waits); the memory's gate keeps the calls in
      flight below it, so that never happens.
    - Connections replace themselves when the server reset them (:class:`HealingConnection`).

    ``nodes`` are ``host:port`` pairs or ``redis://`` URLs of some of the cluster's nodes (any
    one that answers reveals the rest); a URL's password is used for every node.

    Raises:
        InvalidArgumentError: ``max_connections`` is not a positive int, a node or ``url`` is
            not a Redis address, or it names a database other than 0 (a cluster has only 0).
    """
    _check_max_connections(max_connections)
    options.update(max_connections=max_connections, retry=Retry(NoBackoff(), 0))
    try:
        if nodes:
            startup = [_cluster_node(node) for node in nodes]
            first = urlsplit(nodes[0]) if "://" in nodes[0] else None
            if password is None and first is not None and first.password:
                password = first.password
            if first is not None and first.scheme == "rediss":
                options.setdefault("ssl", True)
            client = RedisCluster(startup_nodes=startup, password=password, **options)
        elif url is not None:
            client = RedisCluster.from_url(url, **options)
        else:
            client = RedisCluster(host=host, port=port, password=password, **options)
    except InvalidArgumentError:
        raise
    except (ValueError, TypeError, RedisClusterException):
        # The driver's message may quote the URL (and its password): name it masked instead.
        where = mask_url(url) if url is not None else host
        if nodes:
            where = ", ".join(str(mask_url(node)) if "://" in node else node for node in nodes)
        raise InvalidArgumentError(f"not a usable Redis Cluster address: {where}") from None
    _heal_cluster_connections(client)
    return client


def _cluster_node(address: str) -> ClusterNode:
    if not isinstance(address, str):
        raise InvalidArgumentError("each cluster node must be a str ('host:port' or a URL)")
    if "://" in address:
        parts = urlsplit(address)
        if parts.scheme not in {"redis", "rediss"} or not parts.hostname:
            raise InvalidArgumentError(f"not a Redis node URL: {mask_url(address)}")
        return ClusterNode(parts.hostname, parts.port or 6379)
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InvalidArgumentError(f"not a 'host:port' cluster node: {address!r}")
    return ClusterNode(host, int(port))


def _heal_cluster_connections(client: RedisCluster) -> None:
    """Make every node connection of ``client`` a healing one (TLS stays TLS).

    redis-py builds each node from ``client.connection_kwargs`` (its startup nodes already
    exist, so they are switched too); it takes no connection class as an argument.
    """
    kwargs = client.connection_kwargs
    healing = HealingSSLConnection if kwargs.get("connection_class") is SSLConnection else None
    kwargs["connection_class"] = healing or HealingConnection
    for node in client.nodes_manager.startup_nodes.values():
        node.connection_class = kwargs["connection_class"]


def set_connection_option(client: Client, name: str, value: Any) -> None:
    """Set a connection option (e.g. ``redis_connect_func``) for every future connection.

    On one server that is the pool's ``connection_kwargs``; on a cluster it is the client's
    (every node discovered later is built from them) and each known node's own copy. Call it
    before the first command: connections already open keep their options.
    """
    if isinstance(client, RedisCluster):
        client.connection_kwargs[name] = value
        nodes = [*client.nodes_manager.startup_nodes.values(), *client.get_nodes()]
        for node in nodes:
            node.connection_kwargs[name] = value
    else:
        client.connection_pool.connection_kwargs[name] = value


def connection_option(client: Client, name: str) -> Any:
    """The connection option ``name`` new connections of ``client`` get (None if unset)."""
    if isinstance(client, RedisCluster):
        return client.connection_kwargs.get(name)
    return client.connection_pool.connection_kwargs.get(name)


def _check_max_connections(max_connections: object) -> None:
    if isinstance(max_connections, bool) or not isinstance(max_connections, int):
        raise InvalidArgumentError("max_connections must be an int")
    if max_connections < 1:
        raise InvalidArgumentError("max_connections must be positive")


async def is_cluster(client: Redis) -> bool:
    """Whether the server behind ``client`` runs in cluster mode (``INFO cluster``).

    A server that refuses ``INFO`` (an ACL) is taken for a single server.
    """
    try:
        info = await client.info("cluster")
    except ResponseError:
        return False
    return str(info.get("cluster_enabled", 0)) == "1"


async def info_for_key(client: Client, key: str, *sections: str) -> tuple[dict[str, Any], str]:
    """``INFO`` of the server that holds ``key``, and that server's ``host:port``.

    On a cluster that is the master of the key's slot (redis-py would otherwise send ``INFO``
    to every node and return one reply per node); the slot map is loaded first if it is not
    yet (``initialize`` returns at once when it is). Without a cluster it is the one server.
    """
    if isinstance(client, RedisCluster):
        await client.initialize()
        node = client.get_node_from_key(key)
        if node is None:
            raise ClusterDownError(f"no node serves the slot of {key!r}")
        info: dict[str, Any] = await client.info(*sections, target_nodes=node)
        return info, node.name
    kwargs = client.connection_pool.connection_kwargs
    info = await client.info(*sections)
    return info, f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


class RedisConnector:
    """The client of a Redis-backed memory: one server's pool, or a Redis Cluster client.

    Told (``cluster=True``/``False``, or ``nodes``) or found out: with ``cluster=None`` the
    first call asks the server (``INFO cluster``, through the gate) and, on a cluster, replaces
    the single-server pool by a :class:`RedisCluster` built from the same address and options,
    once (under a lock: concurrent first calls wait for the one answer). A server that cannot be
    asked raises like any call, and the next call asks again.

    Every call passes one :class:`ConnectionGate` of ``max_connections`` slots, whichever the
    client: a call holds one connection at a time, so neither the pool nor any cluster node
    ever needs more than ``max_connections``.

    Raises:
        InvalidArgumentError: see :func:`make_pool` and :func:`make_cluster`; also ``cluster``
            that is not a bool or None, and ``nodes`` with ``cluster=False``.
    """

    def __init__(
        self,
        *,
        host: str = "localhost",
        port: int = 6379,
        db: int = 0,
        password: str | None = None,
        url: str | None = None,
        nodes: Sequence[str] | None = None,
        cluster: bool | None = None,
        max_connections: int = 10,
        pool_timeout: float | None = 10.0,
        **options: Any,
    ) -> None:
        if cluster is not None and not isinstance(cluster, bool):
            raise InvalidArgumentError("cluster must be True, False or None")
        if isinstance(nodes, str):
            raise InvalidArgumentError("nodes must be a list of 'host:port' or URLs, not a str")
        node_list = list(nodes or ())
        if node_list and cluster is False:
            raise InvalidArgumentError("nodes are for a cluster; drop cluster=False")
        _check_max_connections(max_connections)
        self._host, self._port, self._password, self._url = host, port, password, url
        self._options = options
        self._max_connections = max_connections
        self.pool: ConnectionPool | None = None
        self.client: Client
        if node_list or cluster:
            if db:
                raise InvalidArgumentError("a Redis Cluster has only database 0")
            self.client = make_cluster(
                url=url,
                nodes=node_list,
                host=host,
                port=port,
                password=password,
                max_connections=max_connections,
                **options,
            )
            first = node_list[0] if node_list else url
            if first is None:
                first = f"{host}:{port}"
            self.location = f"{mask_url(first) if '://' in first else 'redis://' + first} (cluster)"
        else:
            self.pool = make_pool(
                host=host,
                port=port,
                db=db,
                password=password,
                url=url,
                max_connections=max_connections,
                **options,
            )
            self.client = Redis(connection_pool=self.pool)
            self.location = str(mask_url(url)) if url else f"redis://{host}:{port}/{db}"
        #: True once the client is ready: known to be one server, or a cluster client with its
        #: slot map loaded.
        self.decided = cluster is False
        self.gate = ConnectionGate(max_connections, pool_timeout, self.location)
        self._deciding: asyncio.Lock | None = None

    @property
    def is_cluster(self) -> bool:
        """Whether the client is a cluster client (False until found out)."""
        return isinstance(self.client, RedisCluster)

    async def resolve(self) -> Client:
        """The client, after finding out (once) whether the server is a cluster."""
        if self.decided:
            return self.client
        if self._deciding is None:
            self._deciding = asyncio.Lock()
        deciding = self._deciding
        if deciding.locked():
            # Another call is asking through the gate's one slot: wait no longer than for a
            # slot of the gate (the same bound and error as a full gate).
            try:
                async with asyncio.timeout(self.gate.timeout):
                    await deciding.acquire()
            except TimeoutError:
                raise BackendUnavailableError(
                    f"no connection to Redis at {self.location} came free within "
                    f"{self.gate.timeout} s (finding out whether it is a cluster)"
                ) from None
        else:
            await deciding.acquire()
        try:
            if not self.decided:
                if isinstance(self.client, RedisCluster):
                    await self._initialize(self.client)
                    self.decided = True
                    return self.client
                plain = self.client
                if await self.gate.run(is_cluster(plain)):
                    if int(self.pool.connection_kwargs.get("db", 0) if self.pool else 0):
                        raise InvalidArgumentError("a Redis Cluster has only database 0")
                    self.client = make_cluster(
                        url=self._url,
                        host=self._host,
                        port=self._port,
                        password=self._password,
                        max_connections=self._max_connections,
                        **self._options,
                    )
                    self.location += " (cluster)"
                    self.gate = ConnectionGate(
                        self._max_connections, self.gate.timeout, self.location
                    )
                    pool, self.pool = self.pool, None
                    await plain.aclose()
                    if pool is not None:
                        await pool.aclose()
                    await self._initialize(self.client)
                self.decided = True
        finally:
            deciding.release()
        return self.client

    async def _initialize(self, client: RedisCluster) -> None:
        """Load the slot map before the first command.

        redis-py loads it on the first command otherwise, and concurrent first commands on a
        cold client break each other's connections while it does (redis-py 8.1: a connection
        being set up is disconnected under it, ``AttributeError`` on its writer).
        """
        await self.gate.run(client.initialize())

    async def aclose(self) -> None:
        """Close the client and its connections (a pool built here too)."""
        await self.client.aclose()
        if self.pool is not None:
            await self.pool.aclose()


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
