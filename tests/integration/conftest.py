"""Fixtures shared by the Q-learning test modules."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from lionagi_qe import DatabaseManager

LEARNING_DIALECTS = [
    pytest.param("aqe_database_url", id="postgres"),
    pytest.param("aqe_sqlite_url", id="sqlite"),
]


@pytest.fixture(params=LEARNING_DIALECTS)
def learning_url(request: pytest.FixtureRequest) -> str:
    """A migrated PostgreSQL database (the worker's) or SQLite file (the test's)."""
    url: str = request.getfixturevalue(request.param)
    return url


@pytest_asyncio.fixture(loop_scope="session")
async def manager(learning_url: str) -> AsyncIterator[DatabaseManager]:
    """A DatabaseManager with the default retention, closed after the test."""
    db = DatabaseManager(learning_url, min_connections=1, max_connections=10)
    try:
        yield db
    finally:
        await db.close()
