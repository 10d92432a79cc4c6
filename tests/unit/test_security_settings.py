"""Security settings without servers: timeouts and TLS reach the drivers' arguments, and no
object this library builds shows a password in its ``repr`` or ``str``.

(``mask_url`` and ``Settings``'s repr are covered in ``test_config.py``.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from redis.asyncio.connection import Connection, SSLConnection

from lionagi_qe import (
    AgentMemory,
    CachedMemory,
    DatabaseManager,
    InvalidArgumentError,
    Settings,
    WorkQueue,
    open_memory,
)
from lionagi_qe.backends.redis import RedisMemory
from lionagi_qe.backends.sql import PostgresMemory
from lionagi_qe.db.engine import create_engine, normalize_url

SECRET = "Unit-S3cret-pw"
PG = f"postgresql+asyncpg://agent:{SECRET}@db.internal:5432/aqe"
REDIS = f"redis://:{SECRET}@cache.internal:6379/0"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.upper().startswith("AQE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


def _connect_kwargs(engine: Any) -> dict[str, Any]:
    """Every keyword asyncpg's ``connect`` will get for a new connection of ``engine``."""
    captured: dict[str, Any] = {}

    def fake_connect(*args: Any, **kwargs: Any) -> Any:
        captured.update(kwargs)
        raise ConnectionRefusedError("captured")

    engine.sync_engine.dialect.dbapi.connect = fake_connect
    try:
        engine.sync_engine.raw_connection()
    except Exception:  # the fake refuses every connection
        pass
    finally:
        del engine.sync_engine.dialect.dbapi.connect
    return captured


def _server_settings(engine: Any) -> dict[str, str]:
    """The ``server_settings`` asyncpg will get for each new connection of ``engine``."""
    settings: dict[str, str] = _connect_kwargs(engine).get("server_settings") or {}
    return settings


# -- timeouts ------------------------------------------------------------------------------------


def test_lock_timeout_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().lock_timeout is None
    monkeypatch.setenv("AQE_LOCK_TIMEOUT", "0.75")
    monkeypatch.setenv("AQE_STATEMENT_TIMEOUT", "4")
    settings = Settings()
    assert settings.lock_timeout == 0.75
    assert settings.statement_timeout == 4.0


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_lock_timeout_must_be_positive(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("AQE_LOCK_TIMEOUT", value)
    with pytest.raises(ValidationError):
        Settings()


async def test_create_engine_sends_timeouts_as_server_settings() -> None:
    engine = create_engine(PG, statement_timeout=2.5, lock_timeout=0.0001)
    try:
        settings = _server_settings(engine)
        assert settings["statement_timeout"] == "2500"
        assert settings["lock_timeout"] == "1"  # never 0, which would mean "no timeout"
    finally:
        await engine.dispose()
    engine = create_engine(PG, connect_args={"server_settings": {"application_name": "x"}})
    try:
        assert _server_settings(engine) == {"application_name": "x"}
    finally:
        await engine.dispose()


async def test_open_memory_passes_both_timeouts() -> None:
    memory = open_memory(settings=Settings(database_url=PG, statement_timeout=3, lock_timeout=0.5))
    assert isinstance(memory, PostgresMemory)
    try:
        settings = _server_settings(memory.engine)
        assert settings["statement_timeout"] == "3000"
        assert settings["lock_timeout"] == "500"
    finally:
        await memory.close()


# -- TLS -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "ssl"),
    [
        ("sslmode=require", "require"),
        ("sslmode=verify-full", "verify-full"),
        ("ssl=require", "require"),
        ("sslmode=disable&ssl=require", "require"),  # asyncpg's own spelling wins
    ],
)
def test_libpq_sslmode_becomes_asyncpg_ssl(query: str, ssl: str) -> None:
    for scheme in ("postgresql", "postgresql+asyncpg", "postgres"):
        url = normalize_url(f"{scheme}://agent:{SECRET}@db/aqe?{query}")
        assert url.query.get("ssl") == ssl
        assert "sslmode" not in url.query


async def test_tls_reaches_asyncpg_connect_arguments() -> None:
    engine = create_engine(PG + "?sslmode=require")
    try:
        _args, kwargs = engine.dialect.create_connect_args(engine.url)
        assert kwargs["ssl"] == "require"
        assert "sslmode" not in kwargs
    finally:
        await engine.dispose()


async def test_rediss_selects_tls_connections() -> None:
    tls = REDIS.replace("redis://", "rediss://")
    for url, expected in ((REDIS, Connection), (tls, SSLConnection)):
        memory = open_memory(url)
        assert isinstance(memory, RedisMemory)
        assert memory.client.connection_pool.connection_class is expected
        await memory.close()
    cached = open_memory(PG, redis_url=tls)
    assert isinstance(cached, CachedMemory)
    assert cached._client.connection_pool.connection_class is SSLConnection
    await cached.close()


async def test_libpq_url_options_reach_asyncpg_as_it_spells_them() -> None:
    url = PG + "?sslmode=require&connect_timeout=7&application_name=fleet&command_timeout=9"
    engine = create_engine(url)
    try:
        kwargs = _connect_kwargs(engine)
    finally:
        await engine.dispose()
    assert kwargs["ssl"] == "require"
    assert kwargs["timeout"] == 7.0
    assert kwargs["command_timeout"] == 9.0
    assert kwargs["server_settings"]["application_name"] == "fleet"
    assert not {"sslmode", "connect_timeout", "application_name"} & set(kwargs)


@pytest.mark.parametrize("query", ["bogus=1", f"options={SECRET}", "connect_timeout=soon"])
def test_unknown_url_options_are_refused_before_io(query: str) -> None:
    """asyncpg would raise a bare TypeError on every connect; refuse it at construction."""
    for build in (
        lambda: open_memory(f"{PG}?{query}"),
        lambda: DatabaseManager(f"{PG}?{query}"),
        lambda: WorkQueue(f"{PG}?{query}", "jobs"),
    ):
        with pytest.raises(InvalidArgumentError) as info:
            build()
        assert SECRET not in str(info.value)


# -- no password in repr/str ---------------------------------------------------------------------


def _texts(thing: Any) -> str:
    return f"{thing!r}\n{thing!s}\n{thing}"


async def test_no_object_shows_a_password() -> None:
    sql = PostgresMemory(PG)
    redis_by_url = RedisMemory(url=REDIS)
    redis_by_host = RedisMemory(host="cache.internal", password=SECRET)
    cached = CachedMemory(PostgresMemory(PG), redis_url=REDIS)
    manager = DatabaseManager(PG.replace("+asyncpg", ""))
    queue = WorkQueue(PG, "jobs")
    engine = create_engine(PG)
    things: list[Any] = [
        Settings(database_url=PG, redis_url=REDIS),
        sql,
        sql.engine,
        sql.engine.sync_engine if sql.engine else None,
        sql.engine.url if sql.engine else None,
        redis_by_url,
        redis_by_host,
        redis_by_url.client,
        redis_by_url.client.connection_pool,
        redis_by_host.client.connection_pool,
        cached,
        manager,
        manager.engine,
        manager.engine.sync_engine,
        manager.database_url,
        queue,
        engine,
        engine.sync_engine,
        engine.sync_engine.pool,
        AgentMemory(sql, "gen-1"),
        open_memory(PG, redis_url=REDIS),
        open_memory(REDIS),
    ]
    try:
        for thing in things:
            text = _texts(thing)
            assert SECRET not in text, text
        assert "db.internal" in _texts(sql.engine.sync_engine)  # type: ignore[union-attr]
        assert "cache.internal" in _texts(redis_by_url)
        assert "db.internal" in _texts(manager)
    finally:
        for thing in things:
            if isinstance(thing, PostgresMemory | RedisMemory | CachedMemory | WorkQueue):
                await thing.close()
        await manager.close()
        await engine.dispose()
