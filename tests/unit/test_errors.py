"""The error hierarchy (``lionagi_qe.errors``, SPEC §3)."""

from __future__ import annotations

import pytest

import lionagi_qe
from lionagi_qe import errors
from lionagi_qe.errors import (
    BackendUnavailableError,
    ClosedError,
    InvalidArgumentError,
    InvalidKeyError,
    InvalidPartitionError,
    InvalidPatternError,
    InvalidTTLError,
    KeyNotFoundError,
    LeaseLostError,
    PersistenceError,
    SchemaMissingError,
    SerializationError,
    ValueTooLargeError,
    VersionConflictError,
)

SPEC_ERRORS = [
    InvalidKeyError,
    InvalidPatternError,
    SerializationError,
    ValueTooLargeError,
    KeyNotFoundError,
    VersionConflictError,
    LeaseLostError,
    ClosedError,
    SchemaMissingError,
    BackendUnavailableError,
]
VALUE_ERRORS = [
    InvalidKeyError,
    InvalidPatternError,
    SerializationError,
    ValueTooLargeError,
    InvalidArgumentError,
    InvalidTTLError,
    InvalidPartitionError,
]
NOT_VALUE_ERRORS = [
    KeyNotFoundError,
    VersionConflictError,
    LeaseLostError,
    ClosedError,
    SchemaMissingError,
    BackendUnavailableError,
]


def _all_error_classes() -> list[type[BaseException]]:
    return [getattr(errors, name) for name in errors.__all__]


def test_every_spec_error_is_defined() -> None:
    names = {cls.__name__ for cls in SPEC_ERRORS} | {"PersistenceError"}
    assert names <= set(errors.__all__)


@pytest.mark.parametrize("cls", _all_error_classes(), ids=lambda c: c.__name__)
def test_everything_is_a_persistence_error(cls: type[BaseException]) -> None:
    assert issubclass(cls, PersistenceError)
    assert issubclass(cls, Exception)


@pytest.mark.parametrize("cls", _all_error_classes(), ids=lambda c: c.__name__)
def test_every_error_has_a_one_line_docstring(cls: type[BaseException]) -> None:
    assert cls.__doc__
    assert cls.__doc__.strip()
    assert cls.__module__ == "lionagi_qe.errors"


@pytest.mark.parametrize("cls", VALUE_ERRORS, ids=lambda c: c.__name__)
def test_input_errors_are_value_errors(cls: type[PersistenceError]) -> None:
    assert issubclass(cls, ValueError)
    with pytest.raises(ValueError):
        raise cls("bad input")


@pytest.mark.parametrize("cls", NOT_VALUE_ERRORS, ids=lambda c: c.__name__)
def test_other_errors_are_not_value_errors(cls: type[PersistenceError]) -> None:
    assert not issubclass(cls, ValueError)


def test_argument_errors() -> None:
    assert issubclass(InvalidTTLError, InvalidArgumentError)
    assert issubclass(InvalidPartitionError, InvalidArgumentError)


def test_key_not_found_is_a_key_error_with_a_readable_message() -> None:
    assert issubclass(KeyNotFoundError, KeyError)
    error = KeyNotFoundError("no live entry for 'aqe/x'")
    assert str(error) == "no live entry for 'aqe/x'"  # not the quoted repr KeyError gives
    assert str(KeyNotFoundError()) == "key not found"
    with pytest.raises(KeyError):
        raise error
    with pytest.raises(PersistenceError):
        raise KeyNotFoundError("aqe/x")


def test_only_key_not_found_is_a_key_error() -> None:
    for cls in _all_error_classes():
        assert issubclass(cls, KeyError) is (cls is KeyNotFoundError)


def test_root_catches_everything() -> None:
    for cls in _all_error_classes():
        with pytest.raises(PersistenceError):
            raise cls("x")


@pytest.mark.parametrize("name", errors.__all__)
def test_errors_are_re_exported_from_the_package(name: str) -> None:
    assert getattr(lionagi_qe, name) is getattr(errors, name)
    assert name in lionagi_qe.__all__


def test_errors_all_is_sorted() -> None:
    assert list(errors.__all__) == sorted(errors.__all__)
