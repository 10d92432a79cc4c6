"""A loopback TCP fault proxy for tests: put it between a client and a server, then break things.

:class:`FaultProxy` listens on a free loopback port and forwards every connection to a target
(a Redis, a PostgreSQL, anything TCP). While connections are live a test switches its mode:

- :meth:`~FaultProxy.pass_through` — forward everything (the default; also ends every fault);
- :meth:`~FaultProxy.refuse` — new connections are refused (nothing listens: ``ECONNREFUSED``);
  live connections keep working, so combine with :meth:`~FaultProxy.drop_connections` for a
  server that is down;
- :meth:`~FaultProxy.freeze` — accept and read, forward nothing, in both directions (a hung or
  ``SIGSTOP``-ed server); the bytes held are forwarded when the mode changes;
- :meth:`~FaultProxy.slow` — forward every chunk after ``delay`` seconds, in both directions;
- :meth:`~FaultProxy.reset_mid_reply` — forward the first part of the next reply chunk on each
  connection, then reset the connection (``RST``) both ways;
- :meth:`~FaultProxy.stall_mid_reply` — forward the first part of the next reply chunk, then hold
  the rest until the mode changes (the trap for clients that reuse a connection after a timeout:
  the held rest of an old reply arrives when the next call reads);
- :meth:`~FaultProxy.drop_connections` — reset every live connection now (any mode).

The listening socket keeps its port for the proxy's whole life, also while refusing (it is
bound to an explicit port and only stops listening), so a URL built from :attr:`FaultProxy.port`
stays valid and no other program can take the port in between.

Usage from a pytest-asyncio test::

    async with FaultProxy("127.0.0.1", 6379) as proxy:
        memory = RedisMemory(url=f"redis://{proxy.host}:{proxy.port}/0", socket_timeout=0.2)
        proxy.freeze()
        ...  # calls time out
        proxy.pass_through()

All methods must be called from the event loop the proxy was started on. "Reply" means the
direction from the target to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from enum import StrEnum
from types import TracebackType
from typing import Self

__all__ = ["FaultMode", "FaultProxy"]

logger = logging.getLogger(__name__)

#: Bytes read per chunk, in each direction.
CHUNK = 65536


class FaultMode(StrEnum):
    """What the proxy does to traffic (see :class:`FaultProxy`)."""

    PASS = "pass"
    REFUSE = "refuse"
    FREEZE = "freeze"
    SLOW = "slow"
    RESET = "reset"
    STALL = "stall"


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close ``writer``'s socket with an ``RST`` (linger 0) rather than an orderly ``FIN``."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    """One proxied connection: the client's stream, the target's stream and two pumps."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.closed = False

    def reset(self) -> None:
        """Reset both sides now (the client sees ``ECONNRESET``)."""
        if self.closed:
            return
        self.closed = True
        _reset(self.client)
        if self.upstream is not None:
            _reset(self.upstream)

    def close(self) -> None:
        """Close both sides in order (``FIN``)."""
        if self.closed:
            return
        self.closed = True
        self.client.close()
        if self.upstream is not None:
            self.upstream.close()


class FaultProxy:
    """A loopback TCP proxy to ``target_host:target_port`` whose faults switch while it runs.

    Args:
        target_host, target_port: where connections are forwarded.
        host: the loopback address to listen on.
        connect_timeout: seconds to reach the target for a new connection (else the client's
            connection is reset).

    Start it with ``await proxy.start()`` or ``async with``; :meth:`aclose` stops listening,
    resets every connection and waits for its tasks. :attr:`accepted` and :attr:`resets`
    count connections accepted and connections reset by a fault; :attr:`live` is the number
    of connections open now.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        host: str = "127.0.0.1",
        connect_timeout: float = 5.0,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.connect_timeout = connect_timeout
        self.accepted = 0
        self.resets = 0
        self._port = 0
        self._mode = FaultMode.PASS
        self._delay = 0.0
        self._cut: int | None = None
        self._listener: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._links: set[_Link] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._changed = asyncio.Event()
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the proxy listens on (0 before :meth:`start`)."""
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` to connect to instead of the target."""
        return self.host, self._port

    @property
    def mode(self) -> FaultMode:
        """The current mode."""
        return self._mode

    @property
    def live(self) -> int:
        """Connections open now."""
        return sum(1 for link in self._links if not link.closed)

    async def start(self) -> Self:
        """Bind a free loopback port and start accepting; returns the proxy.

        The port is found by binding port 0 and then bound again *explicitly*, which keeps it
        reserved while :meth:`refuse` has stopped listening.
        """
        if self._listener is not None or self._closed:
            raise RuntimeError("the proxy was already started")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as finder:
            finder.bind((self.host, 0))
            port: int = finder.getsockname()[1]
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, port))
            listener.setblocking(False)
            listener.listen(128)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self._port = port
        self._start_accepting()
        return self

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening, reset every connection and wait for the proxy's tasks to end."""
        if self._closed:
            return
        self._closed = True
        await self._stop_accepting()
        if self._listener is not None:
            self._listener.close()
        tasks = [task for link in self._links for task in link.tasks]
        for link in list(self._links):
            link.reset()
        self._set_flowing(True)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._links.clear()

    # -- modes ----------------------------------------------------------------------------------

    def pass_through(self) -> None:
        """Forward everything again: listen if refused, release held bytes, end any fault."""
        self._switch(FaultMode.PASS)

    def refuse(self) -> None:
        """Refuse new connections (nothing listens); live connections keep working."""
        self._switch(FaultMode.REFUSE)

    def freeze(self) -> None:
        """Hold every byte in both directions (connections are still accepted)."""
        self._switch(FaultMode.FREEZE)

    def slow(self, delay: float) -> None:
        """Forward each chunk (either direction) ``delay`` seconds after it arrived."""
        if not delay >= 0:
            raise ValueError("delay must be >= 0")
        self._delay = float(delay)
        self._switch(FaultMode.SLOW)

    def reset_mid_reply(self, after: int | None = None) -> None:
        """On every connection, forward ``after`` bytes of the next reply chunk, then reset it.

        ``after=None`` forwards half of the chunk (at least one byte, never all of it when the
        chunk has more than one). New connections are reset at their first reply too.
        """
        self._cut = self._check_cut(after)
        self._switch(FaultMode.RESET)

    def stall_mid_reply(self, after: int | None = None) -> None:
        """Forward ``after`` bytes of the next reply chunk, hold the rest until the mode changes.

        ``after`` as for :meth:`reset_mid_reply`. The rest is forwarded when the mode changes
        to anything but ``freeze``, unless the connection was closed meanwhile.
        """
        self._cut = self._check_cut(after)
        self._switch(FaultMode.STALL)

    def drop_connections(self) -> int:
        """Reset every live connection now (the mode stays); returns how many were reset."""
        dropped = 0
        for link in list(self._links):
            if not link.closed:
                link.reset()
                dropped += 1
        self.resets += dropped
        return dropped

    @staticmethod
    def _check_cut(after: int | None) -> int | None:
        if after is not None and (isinstance(after, bool) or not isinstance(after, int)):
            raise TypeError("after must be an int or None")
        if after is not None and after < 0:
            raise ValueError("after must be >= 0")
        return after

    def _switch(self, mode: FaultMode) -> None:
        if self._closed:
            raise RuntimeError("the proxy is closed")
        if self._listener is None:
            raise RuntimeError("start the proxy first")
        previous, self._mode = self._mode, mode
        if mode is FaultMode.REFUSE and previous is not FaultMode.REFUSE:
            self._unlisten()
        elif mode is not FaultMode.REFUSE and previous is FaultMode.REFUSE:
            self._listener.listen(128)
            self._start_accepting()
        self._set_flowing(mode is not FaultMode.FREEZE)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        logger.debug("fault proxy :%d: %s -> %s", self._port, previous, mode)

    def _set_flowing(self, flowing: bool) -> None:
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    def _unlisten(self) -> None:
        """Stop listening but keep the port bound (Linux: ``shutdown`` of a listening socket)."""
        assert self._listener is not None
        if self._acceptor is not None:
            self._acceptor.cancel()
            self._acceptor = None
        try:
            self._listener.shutdown(socket.SHUT_RD)
        except OSError as exc:  # pragma: no cover - platforms without un-listening
            raise RuntimeError(f"cannot stop listening on this platform: {exc}") from exc

    # -- forwarding -------------------------------------------------------------------------

    def _start_accepting(self) -> None:
        self._acceptor = asyncio.get_running_loop().create_task(self._accept_loop())

    async def _stop_accepting(self) -> None:
        acceptor, self._acceptor = self._acceptor, None
        if acceptor is not None:
            acceptor.cancel()
            await asyncio.gather(acceptor, return_exceptions=True)

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        listener = self._listener
        assert listener is not None
        while True:
            try:
                connection, _ = await loop.sock_accept(listener)
            except OSError:  # un-listened under us: the mode switch restarts the loop
                return
            self.accepted += 1
            connection.setblocking(False)
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reader, writer = await asyncio.open_connection(sock=connection, limit=CHUNK)
            link = _Link(writer)
            self._links.add(link)
            task = loop.create_task(self._serve(link, reader))
            link.tasks.append(task)

    async def _serve(self, link: _Link, client_reader: asyncio.StreamReader) -> None:
        try:
            try:
                async with asyncio.timeout(self.connect_timeout):
                    up_reader, up_writer = await asyncio.open_connection(
                        self.target_host, self.target_port, limit=CHUNK
                    )
            except (OSError, TimeoutError):
                link.reset()
                return
            if link.closed:
                up_writer.close()
                return
            link.upstream = up_writer
            with contextlib.suppress(OSError):
                up_writer.get_extra_info("socket").setsockopt(
                    socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
                )
            replies = asyncio.get_running_loop().create_task(
                self._pump(link, up_reader, link.client, reply=True)
            )
            link.tasks.append(replies)
            await self._pump(link, client_reader, up_writer, reply=False)
            await asyncio.gather(replies, return_exceptions=True)
        finally:
            link.close()
            self._links.discard(link)

    async def _pump(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        reply: bool,
    ) -> None:
        """Copy ``reader`` to ``writer`` chunk by chunk, applying the mode to each chunk."""
        try:
            while not link.closed:
                data = await reader.read(CHUNK)
                if not data:
                    break
                await self._flowing.wait()
                if self._mode is FaultMode.SLOW and self._delay:
                    await asyncio.sleep(self._delay)
                    await self._flowing.wait()
                if link.closed:
                    return
                mode = self._mode
                if reply and mode in (FaultMode.RESET, FaultMode.STALL):
                    cut = self._cut if self._cut is not None else len(data) // 2
                    cut = min(cut, len(data) - 1) if len(data) > 1 else min(cut, len(data))
                    writer.write(data[:cut])
                    await writer.drain()
                    if mode is FaultMode.RESET:
                        self.resets += 1
                        link.reset()
                        return
                    data = data[cut:]
                    while self._mode is FaultMode.STALL and not link.closed:
                        await self._changed.wait()
                    await self._flowing.wait()
                    if link.closed:
                        return
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            link.reset()
            return
        # Orderly end of this direction: pass the FIN on and let the other pump finish.
        if not link.closed:
            with contextlib.suppress(OSError, RuntimeError):
                if writer.can_write_eof():
                    writer.write_eof()

    def __repr__(self) -> str:
        return (
            f"<FaultProxy 127.0.0.1:{self._port} -> {self.target_host}:{self.target_port} "
            f"{self._mode.value} live={self.live}>"
        )
