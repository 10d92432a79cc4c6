"""Alembic environment: async engine from Settings, or a connection handed in by the caller."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.pool import NullPool

from lionagi_qe.config import Settings
from lionagi_qe.db.alembic_env import comparison_options, run_migrations
from lionagi_qe.db.engine import create_engine, normalize_url
from lionagi_qe.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or Settings().database_url


def run_migrations_offline() -> None:
    """Emit SQL to stdout instead of running it (``alembic upgrade head --sql``)."""
    url = normalize_url(_url())
    context.configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=url.get_backend_name() == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    """Open a throwaway engine on the configured URL and migrate through it."""
    engine = create_engine(_url(), poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    """Migrate through a connection from ``config.attributes`` if given, else a new engine."""
    connection = config.attributes.get("connection")
    if connection is None:
        asyncio.run(run_async_migrations())
    else:
        run_migrations(connection)


__all__ = ["comparison_options", "run_migrations_offline", "run_migrations_online"]

if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
