"""The fault proxy of the test kit against a tiny echo server: every mode, switched live."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from lionagi_qe.testing.faults import FaultMode, FaultProxy

WAIT = 2.0  # seconds any single read in these tests may take


class Echo:
    """A loopback echo server that counts its connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()


@pytest_asyncio.fixture(loop_scope="session")
async def proxy() -> AsyncIterator[FaultProxy]:
    echo = Echo()
    await echo.start()
    async with FaultProxy("127.0.0.1", echo.port) as running:
        yield running
    await echo.close()


async def connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*proxy.address)


async def roundtrip(
    stream: tuple[asyncio.StreamReader, asyncio.StreamWriter], data: bytes, wait: float = WAIT
) -> bytes:
    reader, writer = stream
    writer.write(data)
    await writer.drain()
    async with asyncio.timeout(wait):
        return await reader.readexactly(len(data))


async def test_passes_bytes_through(proxy: FaultProxy) -> None:
    assert proxy.mode is FaultMode.PASS and proxy.port > 0
    stream = await connect(proxy)
    assert await roundtrip(stream, b"hello") == b"hello"
    big = bytes(range(256)) * 4096  # 1 MiB: many chunks each way
    assert await roundtrip(stream, big, wait=10) == big
    assert proxy.live == 1
    stream[1].close()


async def test_refuse_stops_new_connections_and_keeps_live_ones(proxy: FaultProxy) -> None:
    live = await connect(proxy)
    proxy.refuse()
    with pytest.raises(ConnectionRefusedError):
        await connect(proxy)
    assert await roundtrip(live, b"still here") == b"still here"
    # The port stays reserved while refusing: nobody else can listen on it.
    with socket.socket() as other, pytest.raises(OSError):
        other.bind(proxy.address)
    proxy.pass_through()
    assert await roundtrip(await connect(proxy), b"back") == b"back"
    proxy.refuse()
    proxy.refuse()  # idempotent
    proxy.pass_through()
    assert await roundtrip(await connect(proxy), b"again") == b"again"


async def test_freeze_holds_bytes_until_thawed(proxy: FaultProxy) -> None:
    stream = await connect(proxy)
    proxy.freeze()
    reader, writer = stream
    writer.write(b"held")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await reader.readexactly(4)
    late = await connect(proxy)  # still accepted while frozen
    late[1].write(b"late")
    proxy.pass_through()
    async with asyncio.timeout(WAIT):
        assert await reader.readexactly(4) == b"held"
        assert await late[0].readexactly(4) == b"late"


async def test_slow_adds_latency_per_chunk(proxy: FaultProxy) -> None:
    stream = await connect(proxy)
    await roundtrip(stream, b"warm")
    proxy.slow(0.2)
    started = time.monotonic()
    assert await roundtrip(stream, b"slow") == b"slow"
    elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 0.4 + WAIT, "0.2 s each way"
    proxy.pass_through()
    started = time.monotonic()
    await roundtrip(stream, b"fast")
    assert time.monotonic() - started < 0.2
    with pytest.raises(ValueError):
        proxy.slow(-1)


async def test_reset_mid_reply_sends_part_then_rst(proxy: FaultProxy) -> None:
    stream = await connect(proxy)
    reader, writer = stream
    proxy.reset_mid_reply(after=3)
    writer.write(b"abcdefgh")
    async with asyncio.timeout(WAIT):
        assert await reader.read(3) == b"abc"
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await reader.readexactly(5)
    assert proxy.resets >= 1
    # A new connection is reset at its first reply too; then pass-through heals.
    fresh = await connect(proxy)
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await roundtrip(fresh, b"xy")
    proxy.pass_through()
    assert await roundtrip(await connect(proxy), b"ok") == b"ok"


async def test_default_cut_is_half_the_chunk(proxy: FaultProxy) -> None:
    stream = await connect(proxy)
    proxy.reset_mid_reply()
    stream[1].write(b"0123456789")
    got = b""
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        async with asyncio.timeout(WAIT):
            while True:
                chunk = await stream[0].read(100)
                if not chunk:
                    raise asyncio.IncompleteReadError(got, None)
                got += chunk
    assert got == b"01234"
    proxy.pass_through()


async def test_stall_mid_reply_delivers_the_rest_later(proxy: FaultProxy) -> None:
    stream = await connect(proxy)
    reader, writer = stream
    proxy.stall_mid_reply(after=2)
    writer.write(b"first")
    async with asyncio.timeout(WAIT):
        assert await reader.readexactly(2) == b"fi"
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await reader.readexactly(1)
    proxy.pass_through()
    async with asyncio.timeout(WAIT):
        assert await reader.readexactly(3) == b"rst"
    assert await roundtrip(stream, b"next") == b"next"


async def test_drop_connections_resets_every_live_one(proxy: FaultProxy) -> None:
    streams = [await connect(proxy) for _ in range(3)]
    for stream in streams:
        await roundtrip(stream, b"x")
    assert proxy.drop_connections() == 3
    for reader, _ in streams:
        async with asyncio.timeout(WAIT):
            with pytest.raises(ConnectionResetError):
                data = await reader.read(1)
                if not data:
                    raise ConnectionResetError("EOF")
    await asyncio.sleep(0.05)
    assert proxy.live == 0
    assert await roundtrip(await connect(proxy), b"after") == b"after"


async def test_unreachable_target_resets_the_client() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    async with FaultProxy("127.0.0.1", dead_port) as proxy:
        reader, _ = await connect(proxy)
        async with asyncio.timeout(WAIT):
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                await reader.readexactly(1)


async def test_close_is_clean_and_final() -> None:
    echo = Echo()
    await echo.start()
    proxy = await FaultProxy("127.0.0.1", echo.port).start()
    stream = await connect(proxy)
    await roundtrip(stream, b"x")
    proxy.freeze()  # a held pump must not keep close() waiting
    stream[1].write(b"held")
    await asyncio.sleep(0.05)
    async with asyncio.timeout(WAIT):
        await proxy.aclose()
        await proxy.aclose()  # idempotent
    with pytest.raises(ConnectionRefusedError):
        await connect(proxy)
    with pytest.raises(RuntimeError):
        proxy.pass_through()
    with pytest.raises(RuntimeError):
        await proxy.start()
    assert "FaultProxy" in repr(proxy)
    await echo.close()


async def test_arguments_are_checked(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError):
        proxy.reset_mid_reply(after=-1)
    with pytest.raises(TypeError):
        proxy.stall_mid_reply(after=1.5)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="start"):
        FaultProxy("127.0.0.1", 1).freeze()
    assert proxy.mode is FaultMode.PASS
