"""Contract-suite backends through a PostgreSQL primary/replica pair (issue 8): filled in later."""

from __future__ import annotations

from typing import Any

#: ``pytest.param``s appended to the contract suite's ``BACKENDS``.
PARAMS: list[Any] = []
