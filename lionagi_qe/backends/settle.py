"""Writes that finish before their caller hears of a cancellation.

A write cancelled after it reached PostgreSQL is not stopped by the cancellation: the driver
drops the connection (or asks the server to cancel), but the server may already be running the
statement and commit it a moment later, *after* the same caller's next write of that key went
out on another connection. The caller's newer value would then be overwritten by its older
one, although the newer write returned. So a write runs as a task of its own, and a caller
cancelled meanwhile waits until that task has finished, then gets its ``CancelledError``. The
wait is bounded by the write's own limits (pool timeout, statement and lock timeouts). The
price is one task per write (about 10 µs).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from contextlib import suppress
from typing import Any, TypeVar

__all__ = ["finish_then_cancel", "outlive"]

T = TypeVar("T")


async def outlive(task: asyncio.Future[Any]) -> None:
    """Wait until ``task`` has finished, whatever cancellations arrive meanwhile."""
    while not task.done():
        with suppress(asyncio.CancelledError):
            await asyncio.shield(task)


async def finish_then_cancel(write: Coroutine[Any, Any, T]) -> T:
    """Run ``write`` to its end even if the caller is cancelled; then re-raise the cancellation.

    The write's own outcome (its result or error) is the caller's when nobody cancelled; a
    cancelled caller gets ``CancelledError`` once the write has settled, and the write's error,
    if any, is retrieved so that it is never reported as unhandled.
    """
    task = asyncio.get_running_loop().create_task(write)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await outlive(task)
        if not task.cancelled():
            task.exception()  # retrieved: the caller hears only of its cancellation
        raise
