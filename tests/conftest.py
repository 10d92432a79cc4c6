"""The project's own fixtures: the plugin, plus the backend-parametrized ``memory``."""

from __future__ import annotations

from typing import Any

import pytest

pytest_plugins = ["lionagi_qe.testing.plugin"]

#: Every backend the contract suite runs against.
BACKENDS = [
    pytest.param("postgres_memory", id="postgres", marks=[pytest.mark.postgres]),
    pytest.param("sqlite_memory", id="sqlite"),
    pytest.param("redis_memory", id="redis", marks=[pytest.mark.redis]),
    pytest.param("cached_memory", id="cached", marks=[pytest.mark.postgres, pytest.mark.redis]),
]


@pytest.fixture(params=BACKENDS)
def memory(request: pytest.FixtureRequest) -> Any:
    """The same test, once per backend."""
    return request.getfixturevalue(request.param)
