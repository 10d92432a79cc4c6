"""Contract-suite backends on a Redis Cluster (issue 8): filled in by the cluster work."""

from __future__ import annotations

from typing import Any

#: ``pytest.param``s appended to the contract suite's ``BACKENDS``.
PARAMS: list[Any] = []
