"""Settings: every knob in one place, read from ``AQE_*`` environment variables or ``.env``.

Only the edges (``open_memory``, the CLI, Alembic's ``env.py``, test fixtures) read settings;
lower layers take plain values.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

__all__ = ["DEFAULT_DATABASE_URL", "Settings", "mask_url"]

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./aqe-memory.db"


def _mask_userinfo(url: str) -> str:
    # Split at the last "@" of the authority, as redis-py and urllib do: a raw "@" inside a
    # password must not leak its tail.
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    if "@" not in authority:
        return url
    userinfo, _, host = authority.rpartition("@")
    if ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}{slash}{path}"


def mask_url(url: str | None) -> str | None:
    """Return ``url`` with any password replaced by ``***``."""
    if url is None:
        return None
    authority = url.partition("://")[2].partition("/")[0]
    if url.startswith(("redis://", "rediss://", "unix://")) or authority.count("@") > 1:
        return _mask_userinfo(url)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return _mask_userinfo(url)


class Settings(BaseSettings):
    """Configuration of lionagi_qe (environment prefix ``AQE_``; ``.env`` is read too)."""

    model_config = SettingsConfigDict(
        env_prefix="AQE_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL; the default is an embedded SQLite file.",
    )
    database_replicas: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "URLs of PostgreSQL streaming replicas of database_url. AQE_DATABASE_REPLICAS takes "
            "a comma-separated list or a JSON list (use JSON when a URL holds a comma)."
        ),
    )
    replica_max_lag: float = Field(
        default=5.0, gt=0, description="Seconds of staleness beyond which a replica is skipped."
    )
    replica_wait: float = Field(
        default=0.0,
        ge=0,
        description="Seconds a read after one's own write may wait for a replica (0: primary).",
    )
    replica_retry_after: float = Field(
        default=5.0, gt=0, description="Seconds a failed replica is left alone before a retry."
    )
    replica_connect_timeout: float = Field(default=2.0, gt=0)
    redis_url: str | None = Field(
        default=None, description="Redis URL; set it to put a cache tier in front of SQL."
    )
    redis_cluster: bool | None = Field(
        default=None,
        description="Redis Cluster: true/false, or unset to ask the server at first use.",
    )
    pool_size: int = Field(default=10, ge=1)
    max_overflow: int = Field(default=0, ge=0)
    pool_timeout: float = Field(default=30.0, gt=0)
    pool_recycle: float = Field(default=1800.0, description="Seconds; -1 disables recycling.")
    statement_timeout: float | None = Field(
        default=None, gt=0, description="Seconds a PostgreSQL statement may run; None = server's."
    )
    lock_timeout: float | None = Field(
        default=None,
        gt=0,
        description="Seconds a PostgreSQL statement may wait for a lock; None = server's.",
    )
    namespace: str = Field(default="aqe/", min_length=1)
    cache_ttl: float = Field(default=300.0, gt=0, description="Longest life of a cache entry.")
    redis_socket_timeout: float = Field(default=0.25, gt=0)
    redis_socket_connect_timeout: float = Field(default=0.25, gt=0)
    max_value_bytes: int = Field(default=8 * 1024 * 1024, ge=1)

    @field_validator("database_replicas", mode="before")
    @classmethod
    def _split_replicas(cls, value: Any) -> Any:
        """Accept ``"url1,url2"`` or a JSON list (from the environment), or a list."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError:
                raise ValueError("database_replicas is not a valid JSON list") from None
        return [part.strip() for part in text.split(",") if part.strip()]

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """Yield the fields for ``repr`` with passwords masked."""
        for name, value in super().__repr_args__():
            if name in {"database_url", "redis_url"}:
                yield name, mask_url(value)
            elif name == "database_replicas":
                yield name, [mask_url(url) for url in value]
            else:
                yield name, value
