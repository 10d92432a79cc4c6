"""Settings (``lionagi_qe.config``): environment, ``.env``, defaults and password masking."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy.engine import make_url

import lionagi_qe
from lionagi_qe.config import DEFAULT_DATABASE_URL, Settings, mask_url


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No AQE_* variables and no stray ``.env``: each test starts from the defaults."""
    for name in list(os.environ):
        if name.upper().startswith("AQE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def test_settings_is_exported() -> None:
    assert lionagi_qe.Settings is Settings


def test_defaults() -> None:
    settings = Settings()
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.database_url.startswith("sqlite+aiosqlite:///")
    assert settings.database_url.endswith("aqe-memory.db")
    assert settings.redis_url is None
    assert settings.namespace == "aqe/"
    assert settings.max_value_bytes == 8 * 1024 * 1024
    assert settings.cache_ttl > 0
    assert settings.pool_size >= 1
    assert settings.statement_timeout is None
    assert 0 < settings.redis_socket_timeout <= 5
    assert 0 < settings.redis_socket_connect_timeout <= 5


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AQE_DATABASE_URL", "postgresql+asyncpg://u:pw@db:5432/aqe")
    monkeypatch.setenv("AQE_REDIS_URL", "redis://cache:6379/1")
    monkeypatch.setenv("AQE_POOL_SIZE", "3")
    monkeypatch.setenv("AQE_MAX_OVERFLOW", "2")
    monkeypatch.setenv("AQE_POOL_TIMEOUT", "1.5")
    monkeypatch.setenv("AQE_STATEMENT_TIMEOUT", "7")
    monkeypatch.setenv("AQE_NAMESPACE", "tenant/")
    monkeypatch.setenv("AQE_CACHE_TTL", "60")
    monkeypatch.setenv("AQE_REDIS_SOCKET_TIMEOUT", "0.5")
    monkeypatch.setenv("AQE_MAX_VALUE_BYTES", "1024")
    settings = Settings()
    assert settings.database_url == "postgresql+asyncpg://u:pw@db:5432/aqe"
    assert settings.redis_url == "redis://cache:6379/1"
    assert settings.pool_size == 3
    assert settings.max_overflow == 2
    assert settings.pool_timeout == 1.5
    assert settings.statement_timeout == 7.0
    assert settings.namespace == "tenant/"
    assert settings.cache_ttl == 60.0
    assert settings.redis_socket_timeout == 0.5
    assert settings.max_value_bytes == 1024


def test_unprefixed_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://elsewhere/db")
    monkeypatch.setenv("REDIS_URL", "redis://elsewhere")
    settings = Settings()
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.redis_url is None


def test_dotenv_file(clean_environment: Path) -> None:
    (clean_environment / ".env").write_text(
        "AQE_DATABASE_URL=sqlite+aiosqlite:///./from-dotenv.db\n"
        "AQE_REDIS_URL=redis://dotenv:6379/0\n"
        "AQE_NAMESPACE=dot/\n"
        "AQE_POOL_SIZE=4\n"
        "UNRELATED=1\n",
        encoding="utf-8",
    )
    settings = Settings()
    assert settings.database_url == "sqlite+aiosqlite:///./from-dotenv.db"
    assert settings.redis_url == "redis://dotenv:6379/0"
    assert settings.namespace == "dot/"
    assert settings.pool_size == 4


def test_environment_beats_dotenv(clean_environment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_environment / ".env").write_text("AQE_NAMESPACE=dot/\nAQE_POOL_SIZE=4\n")
    monkeypatch.setenv("AQE_NAMESPACE", "env/")
    settings = Settings()
    assert settings.namespace == "env/"
    assert settings.pool_size == 4


def test_arguments_beat_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AQE_NAMESPACE", "env/")
    assert Settings(namespace="arg/").namespace == "arg/"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AQE_POOL_SIZE", "0"),
        ("AQE_POOL_SIZE", "many"),
        ("AQE_MAX_OVERFLOW", "-1"),
        ("AQE_POOL_TIMEOUT", "0"),
        ("AQE_CACHE_TTL", "-5"),
        ("AQE_STATEMENT_TIMEOUT", "0"),
        ("AQE_MAX_VALUE_BYTES", "0"),
        ("AQE_NAMESPACE", ""),
        ("AQE_REDIS_SOCKET_TIMEOUT", "0"),
    ],
)
def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


# -- passwords never show ------------------------------------------------------------------------

SECRET = "s3cr3t-Pa55"

URLS_WITH_PASSWORDS = [
    f"postgresql+asyncpg://agent:{SECRET}@db.internal:5432/aqe",
    f"postgresql+asyncpg://:{SECRET}@db.internal:5432/aqe",
    f"postgresql://agent:{SECRET}@db.internal/aqe",
    f"redis://agent:{SECRET}@cache.internal:6379/0",
    f"redis://:{SECRET}@cache.internal:6379/0",
    f"rediss://default:{SECRET}@cache.internal:6380",
    f"redis://:{SECRET}@cache.internal",
    f"unix://:{SECRET}@/run/redis.sock?db=1",
]


@pytest.mark.parametrize("url", URLS_WITH_PASSWORDS)
def test_mask_url_hides_the_password(url: str) -> None:
    masked = mask_url(url)
    assert masked is not None
    assert SECRET not in masked
    assert "***" in masked
    assert masked.split("://")[0] == url.split("://")[0]  # still says what it is


def test_mask_url_keeps_host_and_user() -> None:
    masked = mask_url(f"postgresql+asyncpg://agent:{SECRET}@db.internal:5432/aqe")
    assert masked == "postgresql+asyncpg://agent:***@db.internal:5432/aqe"
    assert mask_url(f"redis://agent:{SECRET}@cache:6379/0") == "redis://agent:***@cache:6379/0"


def test_mask_url_percent_encoded_password() -> None:
    masked = mask_url("postgresql+asyncpg://agent:p%40ss%3Aw0rd@db/aqe")
    assert masked is not None
    assert "p%40ss" not in masked
    assert "p@ss" not in masked
    assert "w0rd" not in masked


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite:///./aqe-memory.db",
        "postgresql+asyncpg://agent@db/aqe",
        "redis://cache:6379/0",
        "redis://agent@cache:6379/0",
    ],
)
def test_mask_url_leaves_urls_without_passwords_alone(url: str) -> None:
    assert mask_url(url) == url


def test_mask_url_without_password_means_the_same_url() -> None:
    url = "sqlite+aiosqlite:///:memory:"
    masked = mask_url(url)
    assert masked is not None
    assert make_url(masked) == make_url(url)  # may be re-quoted (%3Amemory%3A), same URL


def test_mask_url_none() -> None:
    assert mask_url(None) is None


def test_mask_url_password_with_raw_at_sign() -> None:
    masked = mask_url("redis://agent:pa@ss@cache:6379/0")
    assert masked == "redis://agent:***@cache:6379/0"


def test_mask_url_never_raises_on_a_malformed_port() -> None:
    masked = mask_url(f"redis://:{SECRET}@cache:port/0")
    assert masked is not None
    assert SECRET not in masked


@pytest.mark.parametrize("redis_url", [u for u in URLS_WITH_PASSWORDS if "redis" in u])
def test_settings_repr_and_str_hide_passwords(redis_url: str) -> None:
    settings = Settings(
        database_url=f"postgresql+asyncpg://agent:{SECRET}@db.internal:5432/aqe",
        redis_url=redis_url,
    )
    for text in (repr(settings), str(settings), f"{settings!r}", f"{settings}"):
        assert SECRET not in text
        assert "db.internal" in text
        assert redis_url.split("@")[-1] in text


def test_settings_from_environment_hide_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AQE_DATABASE_URL", f"postgresql+asyncpg://:{SECRET}@db/aqe")
    monkeypatch.setenv("AQE_REDIS_URL", f"redis://:{SECRET}@cache:6379/0")
    settings = Settings()
    assert settings.database_url.endswith(f"{SECRET}@db/aqe")  # the value itself is intact
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)


def test_validation_errors_do_not_echo_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AQE_DATABASE_URL", f"postgresql+asyncpg://:{SECRET}@db/aqe")
    monkeypatch.setenv("AQE_POOL_SIZE", "0")
    with pytest.raises(ValidationError) as info:
        Settings()
    assert SECRET not in str(info.value)


# -- read replicas -------------------------------------------------------------------------------


def test_replicas_default_to_none() -> None:
    settings = Settings()
    assert settings.database_replicas == []
    assert settings.replica_wait == 0.0
    assert settings.replica_max_lag > 0


@pytest.mark.parametrize(
    "raw",
    [
        "postgresql://r1/aqe,postgresql://r2/aqe",
        " postgresql://r1/aqe , postgresql://r2/aqe ,",
        '["postgresql://r1/aqe", "postgresql://r2/aqe"]',
    ],
    ids=["comma", "comma-spaces", "json"],
)
def test_replicas_from_the_environment(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("AQE_DATABASE_REPLICAS", raw)
    assert Settings().database_replicas == ["postgresql://r1/aqe", "postgresql://r2/aqe"]


def test_replica_url_with_a_comma_needs_json(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql://agent:a,b@r1/aqe"
    monkeypatch.setenv("AQE_DATABASE_REPLICAS", f'["{url}"]')
    assert Settings().database_replicas == [url]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AQE_DATABASE_REPLICAS", "[not json"),
        ("AQE_REPLICA_MAX_LAG", "0"),
        ("AQE_REPLICA_WAIT", "-1"),
        ("AQE_REPLICA_RETRY_AFTER", "0"),
    ],
)
def test_invalid_replica_settings(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_replica_passwords_are_masked_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AQE_DATABASE_REPLICAS", f"postgresql://agent:{SECRET}@r1/aqe,postgresql://a:{SECRET}@r2/x"
    )
    text = repr(Settings())
    assert SECRET not in text
    assert "r1/aqe" in text
    assert "r2/x" in text


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("false", False), (None, None)])
def test_redis_cluster_setting_reaches_the_backends(
    monkeypatch: pytest.MonkeyPatch, value: str | None, expected: bool | None
) -> None:
    """AQE_REDIS_CLUSTER tells open_memory's RedisMemory and cache tier; unset, they find out."""
    from redis.asyncio.cluster import RedisCluster

    from lionagi_qe.factory import open_memory

    if value is None:
        monkeypatch.delenv("AQE_REDIS_CLUSTER", raising=False)
    else:
        monkeypatch.setenv("AQE_REDIS_CLUSTER", value)
    settings = Settings()
    assert settings.redis_cluster is expected
    redis_memory = open_memory("redis://127.0.0.1:1/0", settings=settings)
    cached = open_memory(
        "sqlite+aiosqlite:///unused.db", "redis://127.0.0.1:1/0", settings=settings
    )
    clients = [redis_memory.client, cached._tier.client]  # type: ignore[attr-defined]
    assert [isinstance(client, RedisCluster) for client in clients] == [bool(expected)] * 2
