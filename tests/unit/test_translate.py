"""Driver error translation (``lionagi_qe.db.translate``): by SQLSTATE, never leaking values."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc

from lionagi_qe.db.translate import FOREIGN_KEY_VIOLATION, sqlstate_of, translate
from lionagi_qe.errors import (
    BackendUnavailableError,
    PersistenceError,
    SchemaMissingError,
    SerializationError,
)

SECRET = "secret-value"


class FakeDriverError(Exception):
    """What asyncpg raises: an exception carrying ``.sqlstate``."""

    def __init__(self, message: str, sqlstate: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class FakePsycopgError(Exception):
    """What psycopg raises: an exception carrying ``.pgcode``."""

    def __init__(self, message: str, pgcode: str) -> None:
        super().__init__(message)
        self.pgcode = pgcode


def wrapped(orig: BaseException, **kwargs: Any) -> sa_exc.DBAPIError:
    """``orig`` as SQLAlchemy hands it over, with a secret among the statement parameters."""
    return sa_exc.DBAPIError(
        "INSERT INTO memory_entries (key, value) VALUES (:p, :v)",
        {"p": SECRET, "v": SECRET},
        orig,
        hide_parameters=True,
        **kwargs,
    )


MAPPING = [
    # SQLSTATE, expected type
    ("42P01", SchemaMissingError),  # undefined_table
    ("3F000", SchemaMissingError),  # invalid_schema_name
    ("42883", SchemaMissingError),  # undefined_function
    ("22P02", SerializationError),  # invalid_text_representation
    ("22003", SerializationError),  # numeric_value_out_of_range
    ("22023", SerializationError),
    ("22P05", SerializationError),  # untranslatable_character (\u0000 in jsonb)
    ("2202E", SerializationError),
    ("08006", BackendUnavailableError),  # connection_failure
    ("08001", BackendUnavailableError),
    ("08003", BackendUnavailableError),
    ("53300", BackendUnavailableError),  # too_many_connections
    ("57P01", BackendUnavailableError),  # admin_shutdown
    ("57014", BackendUnavailableError),  # query_canceled (statement timeout)
    ("58030", BackendUnavailableError),
    ("40001", BackendUnavailableError),  # serialization_failure
    ("40P01", BackendUnavailableError),  # deadlock_detected
    ("55P03", BackendUnavailableError),  # lock_not_available
    ("23505", PersistenceError),  # unique_violation: no special meaning here
    (FOREIGN_KEY_VIOLATION, PersistenceError),
    ("XX000", PersistenceError),
    ("99999", PersistenceError),
]


@pytest.mark.parametrize(("code", "expected"), MAPPING)
def test_sqlstate_mapping_bare(code: str, expected: type[PersistenceError]) -> None:
    orig = FakeDriverError(f"something went wrong with {SECRET}", code)
    assert sqlstate_of(orig) == code
    translated = translate(orig)
    assert type(translated) is expected
    if expected is PersistenceError:
        assert SECRET not in str(translated)  # an unwrapped error's text is not trusted


@pytest.mark.parametrize(("code", "expected"), MAPPING)
def test_sqlstate_mapping_wrapped(code: str, expected: type[PersistenceError]) -> None:
    error = wrapped(FakeDriverError("something went wrong", code))
    assert sqlstate_of(error) == code
    translated = translate(error)
    assert type(translated) is expected
    assert SECRET not in str(translated)
    assert "INSERT" not in str(translated)  # no SQL text either


@pytest.mark.parametrize(("code", "expected"), MAPPING)
def test_pgcode_is_read_too(code: str, expected: type[PersistenceError]) -> None:
    error = wrapped(FakePsycopgError("boom", code))
    assert sqlstate_of(error) == code
    assert type(translate(error)) is expected


def test_schema_missing_names_the_upgrade_command() -> None:
    error = translate(wrapped(FakeDriverError('relation "memory_entries" does not exist', "42P01")))
    assert isinstance(error, SchemaMissingError)
    assert "lionagi-qe db upgrade" in str(error)


def test_unknown_sqlstate_is_reported_by_code() -> None:
    error = translate(wrapped(FakeDriverError("duplicate key value", "23505")))
    assert type(error) is PersistenceError
    assert "23505" in str(error)


@pytest.mark.parametrize(("code", "_expected"), MAPPING)
def test_detail_lines_never_reach_the_message(code: str, _expected: type) -> None:
    # asyncpg appends DETAIL/HINT lines, and PostgreSQL puts row values there.
    orig = FakeDriverError(
        f"duplicate key value violates unique constraint\nDETAIL:  Key (key)=({SECRET}) exists.",
        code,
    )
    for error in (orig, wrapped(orig)):
        assert SECRET not in str(translate(error))


def test_hidden_parameters_never_appear() -> None:
    orig = Exception("boom")
    error = sa_exc.DBAPIError("SELECT 1", {"p": SECRET}, orig, hide_parameters=True)
    translated = translate(error)
    assert isinstance(translated, PersistenceError)
    assert SECRET not in str(translated)
    assert SECRET not in repr(translated)


def test_long_driver_messages_are_cut() -> None:
    error = translate(wrapped(FakeDriverError("x" * 5000, "XX000")))
    assert len(str(error)) < 400


def test_no_sqlstate() -> None:
    assert sqlstate_of(ValueError("x")) is None
    assert sqlstate_of(FakeDriverError("x", None)) is None
    error = translate(wrapped(FakeDriverError("plain failure", None)))
    assert type(error) is PersistenceError


def test_non_driver_exceptions_do_not_echo_their_text() -> None:
    error = translate(ValueError(f"bad {SECRET}"))
    assert type(error) is PersistenceError
    assert "ValueError" in str(error)
    assert SECRET not in str(error)


# -- network and pool errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        OSError("network down"),
        ConnectionRefusedError(111, "refused"),
        ConnectionResetError("reset"),
        TimeoutError(),
        sa_exc.TimeoutError("QueuePool limit reached"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_unreachable_database(exc: BaseException) -> None:
    assert isinstance(translate(exc), BackendUnavailableError)


def test_invalidated_connection() -> None:
    error = wrapped(Exception("connection was closed in the middle of operation"))
    error.connection_invalidated = True
    translated = translate(error)
    assert isinstance(translated, BackendUnavailableError)
    assert SECRET not in str(translated)


def test_generic_sqlalchemy_error() -> None:
    translated = translate(sa_exc.InvalidRequestError("bad request"))
    assert type(translated) is PersistenceError


def test_persistence_errors_pass_through() -> None:
    error = SchemaMissingError("already translated")
    assert translate(error) is error


# -- SQLite ------------------------------------------------------------------------------------


def test_sqlite_no_such_table_bare_and_wrapped() -> None:
    orig = sqlite3.OperationalError("no such table: x")
    assert sqlstate_of(orig) == "42P01"
    assert isinstance(translate(orig), SchemaMissingError)
    assert isinstance(translate(wrapped(orig)), SchemaMissingError)


def test_real_sqlite_no_such_table() -> None:
    connection = sqlite3.connect(":memory:")
    try:
        with pytest.raises(sqlite3.OperationalError) as info:
            connection.execute("SELECT * FROM memory_entries WHERE key = ?", (SECRET,))
    finally:
        connection.close()
    translated = translate(wrapped(info.value))
    assert isinstance(translated, SchemaMissingError)


def test_real_sqlite_foreign_key_violation() -> None:
    connection = sqlite3.connect(":memory:")
    try:
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute("CREATE TABLE parent (id TEXT PRIMARY KEY)")
        connection.execute("CREATE TABLE child (p TEXT REFERENCES parent (id))")
        with pytest.raises(sqlite3.IntegrityError) as info:
            connection.execute("INSERT INTO child VALUES (?)", (SECRET,))
    finally:
        connection.close()
    assert sqlstate_of(info.value) == FOREIGN_KEY_VIOLATION
    assert sqlstate_of(wrapped(info.value)) == FOREIGN_KEY_VIOLATION
    assert SECRET not in str(translate(wrapped(info.value)))


@pytest.mark.parametrize("name", ["SQLITE_BUSY", "SQLITE_BUSY_SNAPSHOT", "SQLITE_LOCKED"])
def test_sqlite_busy_is_unavailable(name: str) -> None:
    orig = sqlite3.OperationalError("database is locked")
    orig.sqlite_errorname = name
    assert sqlstate_of(orig) == "55P03"
    assert isinstance(translate(wrapped(orig)), BackendUnavailableError)


def test_sqlite_errors_raised_by_the_module_itself() -> None:
    # These have no sqlite_errorname at all.
    connection = sqlite3.connect(":memory:")
    connection.close()
    with pytest.raises(sqlite3.ProgrammingError) as info:
        connection.execute("SELECT 1")
    assert sqlstate_of(info.value) is None
    assert type(translate(wrapped(info.value))) is PersistenceError


def test_a_bare_server_error_keeps_its_text_when_marked_as_the_servers() -> None:
    orig = FakeDriverError("poisoned key aqe/x", "P0001")
    assert "poisoned key" not in str(translate(orig))
    shown = translate(orig, server_message=True)
    assert type(shown) is PersistenceError
    assert str(shown) == "database error (SQLSTATE P0001): poisoned key aqe/x"
