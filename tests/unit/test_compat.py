"""The original lionagi-qe import paths, names and signatures are kept (SPEC §12)."""

from __future__ import annotations

import inspect

import lionagi_qe
from lionagi_qe import DatabaseManager, PostgresMemory
from lionagi_qe.backends.protocol import MemoryBackend


def test_original_import_paths() -> None:
    from lionagi_qe.learning import DatabaseManager as LearningManager
    from lionagi_qe.learning.db_manager import DatabaseManager as ModuleManager
    from lionagi_qe.persistence import PostgresMemory as PersistenceMemory
    from lionagi_qe.persistence.postgres_memory import PostgresMemory as ModuleMemory

    assert LearningManager is ModuleManager is DatabaseManager
    assert PersistenceMemory is ModuleMemory is PostgresMemory


def test_database_manager_signature() -> None:
    params = inspect.signature(DatabaseManager).parameters
    assert list(params)[:3] == ["database_url", "min_connections", "max_connections"]
    assert params["min_connections"].default == 2
    assert params["max_connections"].default == 10


def test_postgres_memory_takes_the_db_manager_first() -> None:
    assert next(iter(inspect.signature(PostgresMemory).parameters)) == "db_manager"


def test_memory_methods_keep_names_and_defaults() -> None:
    store = inspect.signature(PostgresMemory.store).parameters
    assert list(store)[1:5] == ["key", "value", "ttl", "partition"]
    assert store["ttl"].default is None
    assert store["partition"].default == "default"
    store_many = inspect.signature(PostgresMemory.store_many).parameters
    assert list(store_many)[1:4] == ["items", "ttl", "partition"]
    for name in (
        "store",
        "retrieve",
        "delete",
        "search",
        "list_keys",
        "clear_partition",
        "get_stats",
        "cleanup_expired",
        "close",
        "exists",
        "ttl",
        "expire",
        "increment",
        "retrieve_many",
        "get_entry",
    ):
        assert callable(getattr(PostgresMemory, name)), name
        assert inspect.iscoroutinefunction(getattr(PostgresMemory, name)), name
        assert hasattr(MemoryBackend, name), name


def test_public_names_present() -> None:
    for name in lionagi_qe.__all__:
        assert hasattr(lionagi_qe, name), name
