"""The project's own fixtures: the plugin, plus the backend-parametrized ``memory``."""

from __future__ import annotations

from typing import Any

import pytest
from cluster_backend import PARAMS as CLUSTER_PARAMS
from replica_backend import PARAMS as REPLICA_PARAMS

pytest_plugins = ["lionagi_qe.testing.plugin", "cluster_backend", "replica_backend"]

#: Every backend the contract suite runs against.
BACKENDS = [
    pytest.param("postgres_memory", id="postgres", marks=[pytest.mark.postgres]),
    pytest.param("sqlite_memory", id="sqlite"),
    pytest.param("redis_memory", id="redis", marks=[pytest.mark.redis]),
    pytest.param("cached_memory", id="cached", marks=[pytest.mark.postgres, pytest.mark.redis]),
    *CLUSTER_PARAMS,
    *REPLICA_PARAMS,
]


@pytest.fixture(params=BACKENDS)
def memory(request: pytest.FixtureRequest) -> Any:
    """The same test, once per backend."""
    return request.getfixturevalue(request.param)
