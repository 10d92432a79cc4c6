"""Counting an engine's server connections through ``pg_stat_activity`` (test helpers)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


def app_name() -> str:
    """A unique ``application_name``, to find an engine's connections in pg_stat_activity."""
    return f"aqe-test-{uuid.uuid4().hex[:12]}"


def app_args(app: str) -> dict[str, Any]:
    """Engine options that tag every connection with ``application_name = app``."""
    return {"connect_args": {"server_settings": {"application_name": app}}}


async def backends(engine: AsyncEngine, app: str) -> int:
    """Server connections opened under ``application_name = app`` (seen from ``engine``)."""
    async with engine.connect() as conn:
        count = await conn.scalar(
            text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :app"),
            {"app": app},
        )
    return int(count or 0)


async def settled_backends(engine: AsyncEngine, app: str, expected: int) -> int:
    """Poll until the count settles at ``expected`` (backends exit asynchronously); return it."""
    count = await backends(engine, app)
    for _ in range(100):
        if count == expected:
            break
        await asyncio.sleep(0.05)
        count = await backends(engine, app)
    return count


def dsn(url: str) -> str:
    """A SQLAlchemy ``postgresql+asyncpg://`` URL as a plain libpq DSN for ``asyncpg.connect``."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


class SessionPeak:
    """Polls ``pg_stat_activity`` on a connection of its own and keeps the peak count of
    server sessions whose ``application_name`` starts with ``prefix``.

    The sampler's own session is tagged differently, so it never counts itself. Used as
    ``async with SessionPeak(url, prefix) as peak: ...`` then ``peak.peak``; ``samples`` says
    how many polls ran (a peak from two polls proves little). One poll every ``interval``
    seconds: a session that lives shorter than that can be missed, which only makes the peak
    an underestimate of short spikes, never an overestimate.
    """

    def __init__(self, url: str, prefix: str, *, interval: float = 0.02) -> None:
        self.url = dsn(url)
        self.prefix = prefix
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._task: asyncio.Task[None] | None = None
        self._connection: Any = None

    async def count(self) -> int:
        """Sessions under the prefix now."""
        value = await self._connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE starts_with(application_name, $1)",
            self.prefix,
        )
        return int(value or 0)

    async def _poll(self) -> None:
        while True:
            self.peak = max(self.peak, await self.count())
            self.samples += 1
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> SessionPeak:
        import asyncpg

        self._connection = await asyncpg.connect(
            self.url, server_settings={"application_name": "aqe-test-session-peak"}
        )
        self._task = asyncio.get_running_loop().create_task(self._poll())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                await connection.close(timeout=5)
            except Exception:  # a poll cancelled mid-query may leave it unusable
                connection.terminate()
