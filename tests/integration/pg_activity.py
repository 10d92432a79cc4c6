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
