"""What Alembic's ``env.py`` and ``lionagi-qe db check`` share: how to compare and migrate."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import Connection

from lionagi_qe.models import Base

__all__ = ["comparison_options", "run_migrations"]


def _include_name(name: str | None, type_: str, _parent: Any) -> bool:
    # Only our tables: a user's database may hold others beside ours.
    if type_ == "table":
        return name in Base.metadata.tables
    return True


def _include_object(
    obj: Any, _name: str | None, type_: str, reflected: bool, _compare_to: Any
) -> bool:
    # PostgreSQL clones a foreign key that refers to a partitioned table once per partition
    # (rewards -> trajectories_p0, _p1, ...); only the one on the parent table is ours.
    if type_ == "foreign_key_constraint" and reflected:
        return bool(obj.referred_table.name in Base.metadata.tables)
    return True


def comparison_options(connection: Connection) -> dict[str, Any]:
    """Options for a MigrationContext that compares our models with ``connection``."""
    return {
        "target_metadata": Base.metadata,
        "compare_type": True,
        "compare_server_default": False,
        "include_name": _include_name,
        "include_object": _include_object,
        "render_as_batch": connection.dialect.name == "sqlite",
    }


def run_migrations(connection: Connection) -> None:
    """Run the pending revisions on ``connection`` (the only synchronous code we have)."""
    context.configure(connection=connection, **comparison_options(connection))
    with context.begin_transaction():
        context.run_migrations()
