"""The one JSON codec every backend uses, so a value reads back the same from any store.

Values are encoded once, in the caller's process, before any I/O: validation, the size limit and
the stored form all come from the same string.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import re
import uuid
from functools import lru_cache
from typing import Any, TypeVar, cast

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

from lionagi_qe.errors import SerializationError, ValueTooLargeError

__all__ = ["decode", "encode", "encode_metadata", "validate_as"]

T = TypeVar("T")

# A JSON escape of NUL that is not itself an escaped backslash followed by "u0000".
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")

_encoder = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=None
)


#: What may stand in a value besides plain JSON (SPEC §3); anything else is refused rather than
#: quietly turned into a string (pydantic would store ``b"x"`` as ``"x"`` and ``1j`` as ``"1j"``).
_ACCEPTED = (BaseModel, datetime.datetime, datetime.date, uuid.UUID, decimal.Decimal, enum.Enum)


def _default(obj: Any) -> Any:
    """Turn pydantic models, dataclasses, datetimes, UUIDs, Decimals and Enums into JSON."""
    is_dataclass = dataclasses.is_dataclass(obj) and not isinstance(obj, type)
    if not (is_dataclass or isinstance(obj, _ACCEPTED)):
        raise TypeError(f"{type(obj).__name__} has no JSON form")
    try:
        return to_jsonable_python(obj)
    except PydanticSerializationError as exc:
        raise TypeError(f"{type(obj).__name__} has no JSON form") from exc


_encoder.default = _default  # type: ignore[method-assign,assignment]


def encode(value: Any, max_bytes: int | None = None) -> str:
    """Return the compact JSON form of ``value``.

    Raises:
        SerializationError: NaN/infinity, NUL in a string, or an object with no JSON form.
        ValueTooLargeError: the UTF-8 form is longer than ``max_bytes``.
    """
    try:
        text = _encoder.encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise SerializationError(f"value cannot be stored as JSON: {exc}") from exc
    if "\\u0000" in text and _NUL_ESCAPE.search(text):
        raise SerializationError("strings in values may not contain NUL (\\x00)")
    if max_bytes is not None and len(text) * 4 > max_bytes:
        # Only measure exactly when the cheap bound says the value might be too large.
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            raise ValueTooLargeError(
                f"value is {size} bytes as JSON; the limit is {max_bytes} bytes"
            )
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise SerializationError("strings in values must be valid Unicode") from exc
    return text


def encode_metadata(metadata: Any) -> str:
    """Encode entry metadata: a mapping with string keys (``None`` means empty)."""
    if metadata is None:
        return "{}"
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise SerializationError("metadata must be a dict with string keys")
    return encode(metadata)


def decode(text: str | bytes) -> Any:
    """Parse a stored JSON document."""
    return json.loads(text)


@lru_cache(maxsize=256)
def _adapter(tp: Any) -> TypeAdapter[Any]:
    return TypeAdapter(tp)


def validate_as(obj: Any, tp: type[T]) -> T:
    """Validate decoded JSON into ``tp`` (a pydantic model, dataclass, typing form...)."""
    try:
        adapter = _adapter(tp)  # type: ignore[arg-type]
    except TypeError:  # unhashable typing form: build one each time
        adapter = TypeAdapter(tp)
    try:
        return cast(T, adapter.validate_python(obj))
    except ValidationError as exc:
        raise SerializationError(f"stored value is not a valid {tp!r}: {exc}") from exc
