"""Checks on Q-learning arguments, done before any I/O (no I/O here).

Every failure is an :class:`~lionagi_qe.errors.InvalidArgumentError` (a ``ValueError``), except
documents with no JSON form, which raise :class:`~lionagi_qe.errors.SerializationError` as
everywhere else in the library.
"""

from __future__ import annotations

import math
import re
import uuid
from decimal import Decimal
from typing import Any

from lionagi_qe import codec
from lionagi_qe.errors import InvalidArgumentError

__all__ = [
    "END_STATUSES",
    "MAX_HASH_LENGTH",
    "MAX_LIMIT",
    "MAX_MAGNITUDE",
    "MAX_NAME_LENGTH",
    "check_count",
    "check_document",
    "check_hash",
    "check_limit",
    "check_metadata",
    "check_name",
    "check_number",
    "check_optional_name",
    "check_positive",
    "check_session_id",
    "check_unit_interval",
]

#: Longest state/action hash (the column is ``varchar(128)``).
MAX_HASH_LENGTH = 128
#: Longest agent type or agent instance id (``varchar(100)``).
MAX_NAME_LENGTH = 100
#: Largest ``limit`` a listing accepts.
MAX_LIMIT = 100_000
#: Largest magnitude of any number (reward, Q-value, total). A TD update is a convex
#: combination of the stored value and its target, so with every input within this bound no
#: update overflows a double (1.8e308), and neither do the squares that statistics sum
#: (PostgreSQL's avg() of a double keeps a sum of squares too).
MAX_MAGNITUDE = 1e100
#: The statuses a session can end with.
END_STATUSES = frozenset({"completed", "failed", "aborted"})

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_name(value: object, what: str, max_length: int = MAX_NAME_LENGTH) -> str:
    """A non-empty string of at most ``max_length`` characters with no control characters."""
    if not isinstance(value, str) or not value:
        raise InvalidArgumentError(f"{what} must be a non-empty str")
    if len(value) > max_length:
        raise InvalidArgumentError(f"{what} is {len(value)} characters; at most {max_length}")
    if _CONTROL.search(value):
        raise InvalidArgumentError(f"{what} must not contain control characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgumentError(f"{what} must be valid Unicode") from None
    return value


def check_optional_name(value: object, what: str, max_length: int = MAX_NAME_LENGTH) -> str | None:
    """:func:`check_name`, or None."""
    return None if value is None else check_name(value, what, max_length)


def check_hash(value: object, what: str) -> str:
    """A state or action hash."""
    return check_name(value, what, MAX_HASH_LENGTH)


def check_number(value: object, what: str) -> float:
    """A finite real number within ±:data:`MAX_MAGNITUDE` (int, float or Decimal; not bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise InvalidArgumentError(f"{what} must be a number, not {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        raise InvalidArgumentError(f"{what} is too large for a double") from None
    if not math.isfinite(number):
        raise InvalidArgumentError(f"{what} must be finite, got {value!r}")
    if abs(number) > MAX_MAGNITUDE:
        raise InvalidArgumentError(f"{what} must be within ±{MAX_MAGNITUDE:g}, got {value!r}")
    return number


def check_unit_interval(value: object, what: str) -> float:
    """A number in [0, 1] (learning rate, discount factor, exploration rate)."""
    number = check_number(value, what)
    if not 0.0 <= number <= 1.0:
        raise InvalidArgumentError(f"{what} must be in [0, 1], got {value!r}")
    return number


def check_positive(value: object, what: str) -> float:
    """A finite number > 0."""
    number = check_number(value, what)
    if number <= 0:
        raise InvalidArgumentError(f"{what} must be > 0, got {value!r}")
    return number


def check_count(value: object, what: str) -> int:
    """An int >= 0 that fits a 32-bit column."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{what} must be an int, not {type(value).__name__}")
    if not 0 <= value <= 2**31 - 1:
        raise InvalidArgumentError(f"{what} must be between 0 and 2**31 - 1, got {value}")
    return value


def check_limit(value: object) -> int:
    """A listing limit: 1 to :data:`MAX_LIMIT`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise InvalidArgumentError(f"limit must be an int from 1 to {MAX_LIMIT}, got {value!r}")
    return value


def check_session_id(value: object) -> uuid.UUID:
    """A session id: a UUID or its string form."""
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise InvalidArgumentError(f"session_id must be a UUID, got {value!r:.60}")


def check_document(value: Any) -> str | None:
    """A JSON document (state, action or pattern data) as JSON text; None stays None.

    Raises:
        SerializationError: the value has no JSON form (NaN, NUL, unknown objects).
    """
    return None if value is None else codec.encode(value)


def check_metadata(value: Any) -> str:
    """A metadata mapping with string keys as JSON text (None: ``{}``)."""
    return codec.encode_metadata(value)
