"""The JSON codec (``lionagi_qe.codec``): what a value is stored as and how it reads back."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import math
import uuid
from decimal import Decimal
from typing import Annotated, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from lionagi_qe.codec import decode, encode, encode_metadata, validate_as
from lionagi_qe.errors import PersistenceError, SerializationError, ValueTooLargeError

# -- strategies ------------------------------------------------------------------------------------

# Any character a stored string may hold: no NUL, no lone surrogates (hypothesis' default).
safe_text = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=20
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    safe_text,
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(safe_text, children, max_size=5)
    ),
    max_leaves=30,
)


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Point(BaseModel):
    x: float
    y: float
    label: str = ""


class Plan(BaseModel):
    id: uuid.UUID
    created: dt.datetime
    points: list[Point]
    color: Color
    budget: Decimal
    tags: tuple[str, ...] = ()


@dataclasses.dataclass
class Result:
    name: str
    score: float
    when: dt.date
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def roundtrip(value: Any) -> Any:
    return decode(encode(value))


# -- JSON values ---------------------------------------------------------------------------------


@given(json_values)
def test_json_values_round_trip(value: Any) -> None:
    assert roundtrip(value) == value


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_floats_round_trip_exactly(value: float) -> None:
    back = roundtrip(value)
    assert back == value
    assert isinstance(back, float)
    assert math.copysign(1.0, back) == math.copysign(1.0, value)


def test_nested_json_round_trip() -> None:
    value = {
        "a": [1, 2.5, "three", None, True, False, {"b": {"c": [[], {}]}}],
        "é": "中文 \U0001f600",
        "empty": "",
        "big": 2**70,
        "neg": -(2**63),
        "tiny": 5e-324,
        "max": 1.7976931348623157e308,
        "null": None,
    }
    assert roundtrip(value) == value


def test_encoding_is_compact_and_not_ascii_escaped() -> None:
    assert encode({"a": [1, 2], "b": "é"}) == '{"a":[1,2],"b":"é"}'
    assert encode(None) == "null"
    assert encode("x") == '"x"'


def test_decode_accepts_bytes() -> None:
    assert decode(b'{"a":1}') == {"a": 1}
    assert decode('{"a":"\\u00e9"}') == {"a": "é"}


# -- typed values ------------------------------------------------------------------------------


def test_pydantic_model_round_trip() -> None:
    plan = Plan(
        id=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        created=dt.datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=dt.UTC),
        points=[Point(x=0.1, y=1 / 3), Point(x=-2.5, y=1e300, label="far")],
        color=Color.BLUE,
        budget=Decimal("1234.5600"),
        tags=("a", "b"),
    )
    stored = roundtrip(plan)
    assert stored["id"] == "12345678-1234-5678-1234-567812345678"
    assert stored["color"] == "blue"
    assert stored["tags"] == ["a", "b"]
    assert validate_as(stored, Plan) == plan


def test_dataclass_round_trip() -> None:
    result = Result(name="r", score=0.1 + 0.2, when=dt.date(2024, 2, 29), extra={"k": [1]})
    stored = roundtrip(result)
    assert stored == {"name": "r", "score": 0.1 + 0.2, "when": "2024-02-29", "extra": {"k": [1]}}
    assert validate_as(stored, Result) == result


def test_datetime_and_date_are_iso_8601() -> None:
    aware = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    naive = dt.datetime(2024, 1, 2, 3, 4, 5, 6)
    day = dt.date(2024, 1, 2)
    assert roundtrip(aware) == "2024-01-02T03:04:05+02:00"
    assert roundtrip(naive) == "2024-01-02T03:04:05.000006"
    assert roundtrip(day) == "2024-01-02"
    assert dt.datetime.fromisoformat(roundtrip(aware)) == aware
    assert validate_as(roundtrip(aware), dt.datetime) == aware
    assert validate_as(roundtrip(naive), dt.datetime) == naive
    assert validate_as(roundtrip(day), dt.date) == day


def test_uuid_decimal_enum_tuple() -> None:
    ident = uuid.uuid4()
    assert roundtrip(ident) == str(ident)
    assert validate_as(roundtrip(ident), uuid.UUID) == ident

    amount = Decimal("0.1")
    assert validate_as(roundtrip(amount), Decimal) == amount

    assert roundtrip(Color.RED) == "red"
    assert validate_as(roundtrip(Color.RED), Color) is Color.RED
    assert roundtrip(Level.HIGH) == 2
    assert validate_as(roundtrip(Level.HIGH), Level) is Level.HIGH

    assert roundtrip((1, "a", (2.5, None))) == [1, "a", [2.5, None]]
    assert validate_as(roundtrip((1, 2)), tuple[int, int]) == (1, 2)


def test_typed_values_inside_containers() -> None:
    value = {"points": [Point(x=1, y=2)], "when": dt.date(2024, 1, 1), "id": uuid.UUID(int=1)}
    assert roundtrip(value) == {
        "points": [{"x": 1.0, "y": 2.0, "label": ""}],
        "when": "2024-01-01",
        "id": "00000000-0000-0000-0000-000000000001",
    }


@given(
    x=st.floats(allow_nan=False, allow_infinity=False),
    y=st.floats(allow_nan=False, allow_infinity=False),
)
def test_model_floats_round_trip(x: float, y: float) -> None:
    point = Point(x=x, y=y)
    assert validate_as(roundtrip(point), Point) == point


def test_validate_as_typing_forms() -> None:
    assert validate_as([{"x": 1, "y": 2}], list[Point]) == [Point(x=1, y=2)]
    assert validate_as({"a": 1}, dict[str, int]) == {"a": 1}
    assert validate_as(None, int | None) is None
    assert validate_as("x", str) == "x"


def test_validate_as_unhashable_typing_form() -> None:
    unhashable = Annotated[int, {"not": "hashable"}]
    assert validate_as(5, unhashable) == 5  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("obj", "tp"),
    [({"x": "nope", "y": 1}, Point), ("not-a-date", dt.date), ("purple", Color), ([1], dict)],
)
def test_validate_as_mismatch_raises_serialization_error(obj: Any, tp: Any) -> None:
    with pytest.raises(SerializationError) as info:
        validate_as(obj, tp)
    assert isinstance(info.value, ValueError)


# -- refused values --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        -math.inf,
        [1.0, math.nan],
        {"a": {"b": [math.inf]}},
        {math.nan: 1},
        Point(x=math.nan, y=0),
        Result(name="r", score=math.inf, when=dt.date(2024, 1, 1)),
    ],
    ids=["nan", "inf", "-inf", "list", "nested", "key", "model", "dataclass"],
)
def test_non_finite_floats_are_refused(value: Any) -> None:
    with pytest.raises(SerializationError) as info:
        encode(value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, PersistenceError)


@pytest.mark.parametrize(
    "value",
    [
        "\x00",
        "a\x00b",
        "trailing\x00",
        ["ok", "b\x00"],
        {"a": {"b": ["\x00"]}},
        {"k\x00": 1},
        {"outer": {"in\x00ner": None}},
        "\\\x00",  # a backslash, then a real NUL
        Point(x=1, y=2, label="\x00"),
    ],
)
def test_nul_characters_are_refused(value: Any) -> None:
    with pytest.raises(SerializationError, match="NUL"):
        encode(value)


@pytest.mark.parametrize(
    "text", ["\\u0000", "a\\u0000b", "\\\\u0000", "\\\\\\\\u0000", "u0000", "\\x00", "\\0"]
)
def test_backslash_u0000_text_is_not_a_nul(text: str) -> None:
    assert "\x00" not in text
    assert roundtrip(text) == text
    assert roundtrip({text: [text]}) == {text: [text]}


@given(safe_text)
def test_strings_without_nul_are_never_refused(text: str) -> None:
    assert roundtrip(text) == text
    assert roundtrip({text: text}) == {text: text}


@pytest.mark.parametrize(
    "value",
    ["\ud800", "a\udfffb", ["\udc00"], {"k": {"n": "\ud83d"}}, {"\ud800": 1}],
)
def test_lone_surrogates_are_refused(value: Any) -> None:
    with pytest.raises(SerializationError):
        encode(value)


def test_surrogate_pairs_written_as_one_character_are_fine() -> None:
    assert roundtrip("\U0001f600") == "\U0001f600"


class Opaque:
    pass


def _circular() -> list[Any]:
    items: list[Any] = []
    items.append(items)
    return items


def _deep(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "value",
    [object(), Opaque(), {"a": Opaque()}, [1, object()], {(1, 2): "tuple key"}, _circular()],
    ids=["object", "class", "nested", "list", "tuple-key", "circular"],
)
def test_objects_without_json_form_are_refused(value: Any) -> None:
    with pytest.raises(SerializationError) as info:
        encode(value)
    assert isinstance(info.value, ValueError)


def test_absurdly_deep_nesting_is_refused() -> None:
    with pytest.raises(SerializationError):
        encode(_deep(100_000))


def test_functions_are_refused() -> None:
    with pytest.raises(SerializationError):
        encode(lambda: None)


@pytest.mark.parametrize("value", [1j, b"raw-bytes"], ids=["complex", "bytes"])
def test_types_outside_the_spec_are_refused(value: Any) -> None:
    with pytest.raises(SerializationError):
        encode(value)


# -- size limit ------------------------------------------------------------------------------


@pytest.mark.parametrize("char", ["a", "é", "中", "\U0001f600"])
def test_size_limit_counts_utf8_bytes(char: str) -> None:
    value = char * 100
    size = len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
    assert size == 2 + 100 * len(char.encode("utf-8"))
    assert encode(value, max_bytes=size) == f'"{value}"'
    with pytest.raises(ValueTooLargeError) as info:
        encode(value, max_bytes=size - 1)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, PersistenceError)
    assert str(size) in str(info.value)
    assert value not in str(info.value)  # the message never carries the value


def test_size_limit_on_nested_values() -> None:
    value = {"k": ["é" * 10, {"n": 1}]}
    size = len(encode(value).encode("utf-8"))
    assert encode(value, max_bytes=size)
    with pytest.raises(ValueTooLargeError):
        encode(value, max_bytes=size - 1)


def test_size_limit_applies_to_the_json_form() -> None:
    # Escapes count: a newline is stored as two bytes, a quote as two.
    value = '\n"\\'
    size = len(encode(value))
    assert size == 8
    assert encode(value, max_bytes=8)
    with pytest.raises(ValueTooLargeError):
        encode(value, max_bytes=7)


def test_no_limit_by_default() -> None:
    assert len(encode("x" * 9_000_000)) == 9_000_002


@given(value=json_values, slack=st.integers(min_value=-3, max_value=3))
def test_size_limit_property(value: Any, slack: int) -> None:
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    limit = max(1, size + slack)
    if size <= limit:
        assert decode(encode(value, max_bytes=limit)) == value
    else:
        with pytest.raises(ValueTooLargeError):
            encode(value, max_bytes=limit)


# -- metadata ------------------------------------------------------------------------------


def test_encode_metadata() -> None:
    assert encode_metadata(None) == "{}"
    assert encode_metadata({}) == "{}"
    assert decode(encode_metadata({"agent": "a1", "n": [1, 2.5]})) == {"agent": "a1", "n": [1, 2.5]}


@pytest.mark.parametrize(
    "metadata",
    [[("a", 1)], "a=1", 5, {1: "a"}, {("a",): 1}, {None: 1}, {"a": math.nan}, {"a": "\x00"}],
)
def test_bad_metadata_is_refused(metadata: Any) -> None:
    with pytest.raises(SerializationError):
        encode_metadata(metadata)
