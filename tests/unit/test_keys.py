"""Keys, partitions, TTLs and the glob language (``lionagi_qe.keys``): pure logic, no I/O.

The glob tests compare :func:`compile_glob` with a small reference matcher written here from the
spec (SPEC §3 and the ``keys`` module docstring), and check that every translation the backends
use (the posix regex for PostgreSQL, SQLite ``GLOB``, Redis ``MATCH``) says the same thing.
"""

from __future__ import annotations

import math
import re
import sqlite3
from collections.abc import Callable
from functools import cache

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lionagi_qe.errors import (
    InvalidArgumentError,
    InvalidKeyError,
    InvalidPartitionError,
    InvalidPatternError,
    InvalidTTLError,
    PersistenceError,
)
from lionagi_qe.keys import (
    MAX_KEY_LENGTH,
    MAX_PARTITION_LENGTH,
    GlobPattern,
    compile_glob,
    compile_regex,
    prefix_upper_bound,
    validate_key,
    validate_partition,
    validate_prefix,
    validate_ttl,
)

NS = "aqe/"

# -- a reference glob matcher, written from the spec alone ------------------------------------


class Malformed(Exception):
    """The reference parser's verdict that a pattern is malformed."""


Token = tuple[object, ...]


def _class_char(pattern: str, i: int) -> tuple[str, int]:
    if pattern[i] == "\\":
        if i + 1 >= len(pattern):
            raise Malformed("escape at the end of a class")
        return pattern[i + 1], i + 2
    return pattern[i], i + 1


def ref_parse(pattern: str) -> list[Token]:
    """Tokens: ('lit', c), ('one',), ('star',), ('class', negate, ((lo, hi), ...))."""
    tokens: list[Token] = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "\\":
            if i + 1 >= n:
                raise Malformed("trailing backslash")
            tokens.append(("lit", pattern[i + 1]))
            i += 2
        elif char == "*":
            tokens.append(("star",))
            i += 1
        elif char == "?":
            tokens.append(("one",))
            i += 1
        elif char == "[":
            i += 1
            negate = i < n and pattern[i] == "!"
            if negate:
                i += 1
            members: list[tuple[str, str]] = []
            while True:
                if i >= n:
                    raise Malformed("unterminated class")
                if pattern[i] == "]" and members:
                    i += 1
                    break
                lo, i = _class_char(pattern, i)
                hi = lo
                if i + 1 < n and pattern[i] == "-" and pattern[i + 1] != "]":
                    hi, i = _class_char(pattern, i + 1)
                    if hi < lo:
                        raise Malformed("reversed range")
                members.append((lo, hi))
            tokens.append(("class", negate, tuple(members)))
        else:
            tokens.append(("lit", char))
            i += 1
    return tokens


def ref_match(tokens: list[Token], key: str) -> bool:
    """Backtracking matcher over the reference tokens, anchored at both ends."""

    @cache
    def match(t: int, k: int) -> bool:
        if t == len(tokens):
            return k == len(key)
        token = tokens[t]
        kind = token[0]
        if kind == "star":
            return any(match(t + 1, j) for j in range(k, len(key) + 1))
        if k == len(key):
            return False
        char = key[k]
        if kind == "one":
            ok = True
        elif kind == "lit":
            ok = char == token[1]
        else:
            negate, members = token[1], token[2]
            inside = any(lo <= char <= hi for lo, hi in members)  # type: ignore[attr-defined]
            ok = inside != negate
        return ok and match(t + 1, k + 1)

    return match(0, 0)


def ref_glob(pattern: str, key: str) -> bool:
    return ref_match(ref_parse(pattern), key)


# -- strategies ---------------------------------------------------------------------------------

PATTERN_ALPHABET = "ab/*?[]!-\\%_^é\U0001f600"
KEY_ALPHABET = "abc/%_^-]![\\*?é\U0001f600"

patterns = st.text(alphabet=PATTERN_ALPHABET, max_size=12)
keys = st.text(alphabet=KEY_ALPHABET, max_size=10)
key_chars = st.sampled_from(KEY_ALPHABET)


@st.composite
def pattern_and_matching_key(draw: st.DrawFn) -> tuple[str, str]:
    """A valid pattern plus a key the reference matcher says it matches."""
    pattern = draw(patterns)
    try:
        tokens = ref_parse(pattern)
    except Malformed:
        tokens = ref_parse(re.sub(r"[\\\[]", "", pattern))  # no classes or escapes left
        pattern = re.sub(r"[\\\[]", "", pattern)
    parts: list[str] = []
    for token in tokens:
        kind = token[0]
        if kind == "lit":
            parts.append(str(token[1]))
        elif kind == "one":
            parts.append(draw(key_chars))
        elif kind == "star":
            parts.append(draw(st.text(alphabet=KEY_ALPHABET, max_size=3)))
        else:
            negate, members = token[1], token[2]
            candidates = sorted(
                set(KEY_ALPHABET) | {lo for lo, _ in members}  # type: ignore[attr-defined]
            )
            fits = [
                c
                for c in candidates
                if any(lo <= c <= hi for lo, hi in members) != negate  # type: ignore[attr-defined]
            ]
            if not fits:
                return pattern, "no-such-key"
            parts.append(draw(st.sampled_from(fits)))
    return pattern, "".join(parts)


_SQLITE = sqlite3.connect(":memory:")


def sqlite_glob(pattern: str, key: str) -> bool:
    row = _SQLITE.execute("SELECT ? GLOB ?", (key, pattern)).fetchone()
    return bool(row[0])


def _compile_or_none(pattern: str) -> GlobPattern | None:
    try:
        return compile_glob(pattern)
    except InvalidPatternError:
        return None


def _check_all_forms(pattern: str, key: str) -> None:
    """Every translation of ``pattern`` agrees with the reference on ``key``."""
    try:
        expected: bool | None = ref_glob(pattern, key)
    except Malformed:
        expected = None
    glob = _compile_or_none(pattern)
    if expected is None:
        assert glob is None, f"{pattern!r} is malformed but compiled"
        return
    assert glob is not None, f"{pattern!r} is well formed but was refused"
    assert glob.matches(key) is expected
    assert (re.fullmatch(glob.posix_regex[1:-1], key) is not None) is expected
    if glob.sqlite_glob is not None:
        assert sqlite_glob(glob.sqlite_glob, key) is expected, glob.sqlite_glob
    if expected:
        assert key.startswith(glob.literal_prefix)


# -- the reference matcher is itself right on the spec's examples -------------------------------

SPEC_EXAMPLES = [
    # (pattern, key, matches)
    ("aqe/*", "aqe/a/b/c", True),
    ("aqe/*", "aqe/", True),
    ("aqe/*/c", "aqe/a/b/c", True),  # * spans /
    ("aqe/?", "aqe/a", True),
    ("aqe/?", "aqe//", True),  # ? matches /
    ("aqe/?", "aqe/", False),
    ("aqe/?", "aqe/ab", False),
    ("aqe/?", "aqe/é", True),  # one character, not one byte
    ("aqe/?", "aqe/\U0001f600", True),
    ("aqe/[abc]", "aqe/b", True),
    ("aqe/[abc]", "aqe/d", False),
    ("aqe/[a-c]x", "aqe/bx", True),
    ("aqe/[a-c]x", "aqe/dx", False),
    ("aqe/[!a]", "aqe/b", True),
    ("aqe/[!a]", "aqe/a", False),
    ("aqe/[!a]", "aqe/", False),
    ("aqe/[]]", "aqe/]", True),  # ] first is literal
    ("aqe/[]a]", "aqe/a", True),
    ("aqe/[!]]", "aqe/]", False),
    ("aqe/[!]]", "aqe/x", True),
    ("aqe/[a-]", "aqe/-", True),  # - last is literal
    ("aqe/[-a]", "aqe/-", True),
    ("aqe/[^a]", "aqe/^", True),  # ^ is not negation
    ("aqe/[^a]", "aqe/b", False),
    ("aqe/[\\]]", "aqe/]", True),
    ("aqe/[\\!a]", "aqe/!", True),
    ("aqe/[*?]", "aqe/*", True),
    ("aqe/[*?]", "aqe/x", False),
    ("aqe/\\*", "aqe/*", True),
    ("aqe/\\*", "aqe/x", False),
    ("aqe/\\?", "aqe/?", True),
    ("aqe/\\?", "aqe/x", False),
    ("aqe/\\[x]", "aqe/[x]", True),
    ("aqe/\\\\", "aqe/\\", True),
    ("aqe/\\a", "aqe/a", True),
    ("aqe/a%b", "aqe/a%b", True),  # % is literal
    ("aqe/a%b", "aqe/axxb", False),
    ("aqe/a_b", "aqe/a_b", True),  # _ is literal
    ("aqe/a_b", "aqe/axb", False),
    ("aqe/a.b", "aqe/axb", False),  # regex metacharacters are literal
    ("aqe/a+", "aqe/aa", False),
    ("aqe/(a|b)", "aqe/a", False),
    ("aqe/(a|b)", "aqe/(a|b)", True),
    ("aqe/a$", "aqe/a$", True),
    ("aqe/{a,b}", "aqe/a", False),
    ("aqe/a", "xaqe/a", False),  # anchored at the start
    ("aqe/a", "aqe/ab", False),  # anchored at the end
    ("aqe/a", "aqe/a\n", False),
    ("", "", True),
    ("", "a", False),
    ("*", "", True),
    ("**", "abc", True),
    ("a*b*c", "abbbcbc", True),
    ("a*b*c", "abbbcb", False),
]


@pytest.mark.parametrize(("pattern", "key", "expected"), SPEC_EXAMPLES)
def test_reference_matcher_follows_the_spec(pattern: str, key: str, expected: bool) -> None:
    assert ref_glob(pattern, key) is expected


@pytest.mark.parametrize(("pattern", "key", "expected"), SPEC_EXAMPLES)
def test_glob_spec_examples(pattern: str, key: str, expected: bool) -> None:
    glob = compile_glob(pattern)
    assert glob.pattern == pattern
    assert glob.matches(key) is expected
    assert (re.fullmatch(glob.posix_regex[1:-1], key) is not None) is expected
    if glob.sqlite_glob is not None and "\n" not in key:
        assert sqlite_glob(glob.sqlite_glob, key) is expected


MALFORMED = [
    "aqe/[",
    "aqe/[a",
    "aqe/[!",
    "aqe/[]",  # ] first is a member, so the class never ends
    "aqe/[!]",
    "aqe/[a-",
    "aqe/[a\\",
    "aqe/[a-\\",
    "aqe/[\\]",
    "aqe/\\",
    "\\",
    "aqe/x\\",
    "aqe/[z-a]",  # reversed range
]


@pytest.mark.parametrize("pattern", MALFORMED)
def test_malformed_patterns_raise_invalid_pattern_error(pattern: str) -> None:
    with pytest.raises(Malformed):
        ref_parse(pattern)
    with pytest.raises(InvalidPatternError) as info:
        compile_glob(pattern)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, PersistenceError)


@pytest.mark.parametrize("char", ["\x00", "\x01", "\t", "\n", "\r", "\x1f", "\x7f", "\x85", "\x9f"])
def test_control_characters_in_patterns_are_rejected(char: str) -> None:
    with pytest.raises(InvalidPatternError):
        compile_glob(f"aqe/{char}*")
    with pytest.raises(InvalidPatternError):
        compile_glob(f"aqe/\\{char}")
    with pytest.raises(InvalidPatternError):
        compile_glob(f"aqe/[{char}]")


@pytest.mark.parametrize("pattern", [None, 5, 1.5, b"aqe/*"])
def test_non_str_patterns_raise_invalid_pattern_error(pattern: object) -> None:
    with pytest.raises(InvalidPatternError):
        compile_glob(pattern)  # type: ignore[arg-type]
    with pytest.raises(InvalidPatternError):
        compile_regex(pattern)  # type: ignore[arg-type]


@pytest.mark.parametrize("compile_fn", [compile_glob, compile_regex], ids=["glob", "regex"])
def test_unhashable_patterns_raise_invalid_pattern_error(
    compile_fn: Callable[[object], object],
) -> None:
    with pytest.raises(InvalidPatternError):
        compile_fn(["aqe/*"])


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [
        ("aqe/*", "aqe/"),
        ("aqe/agent/*/status", "aqe/agent/"),
        ("aqe/x?", "aqe/x"),
        ("aqe/x[ab]", "aqe/x"),
        ("aqe/a\\*b*", "aqe/a*b"),
        ("aqe/a\\[b\\]", "aqe/a[b]"),
        ("aqe/%_", "aqe/%_"),
        ("aqe/plain", "aqe/plain"),
        ("*aqe/", ""),
        ("", ""),
    ],
)
def test_literal_prefix(pattern: str, prefix: str) -> None:
    assert compile_glob(pattern).literal_prefix == prefix


def test_sqlite_glob_is_none_only_when_sqlite_cannot_say_it() -> None:
    for pattern in ["aqe/*", "aqe/?", "aqe/[abc]", "aqe/[!a-c]", "aqe/[]^-]", "aqe/\\*\\?\\["]:
        assert compile_glob(pattern).sqlite_glob is not None, pattern


def test_posix_regex_is_anchored_and_uses_only_portable_escapes() -> None:
    glob = compile_glob("aqe/a.b+c(d)|e{1}$^[!x-z]\\*%_ é#&~ ?*")
    assert glob.posix_regex.startswith("^")
    assert glob.posix_regex.endswith("$")
    # In a PostgreSQL ARE, \ + letter or digit is a class shorthand or back-reference; only
    # \ + punctuation means "this character" in both dialects.
    assert not re.search(r"\\[A-Za-z0-9]", glob.posix_regex)


def test_compile_glob_is_cached() -> None:
    assert compile_glob("aqe/cached/*") is compile_glob("aqe/cached/*")


# -- properties -----------------------------------------------------------------------------


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern=patterns, key=keys)
@example(pattern="[]-a]", key="^")
@example(pattern="[+--]", key=",")
@example(pattern="[!-/]", key="-")
@example(pattern="[^]", key="^")
@example(pattern="[-^]", key="^")
@example(pattern="[!^]", key="^")
@example(pattern="[]^-]", key="-")
@example(pattern="[!]^-]", key="a")
@example(pattern="a[\\]-a]", key="a_")
def test_glob_agrees_with_reference_on_random_keys(pattern: str, key: str) -> None:
    _check_all_forms(pattern, key)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=pattern_and_matching_key())
def test_glob_agrees_with_reference_on_matching_keys(case: tuple[str, str]) -> None:
    pattern, key = case
    _check_all_forms(pattern, key)


@settings(max_examples=300, deadline=None)
@given(pattern=patterns, key=keys)
def test_literal_prefix_starts_every_match(pattern: str, key: str) -> None:
    glob = _compile_or_none(pattern)
    if glob is not None and glob.matches(key):
        assert key.startswith(glob.literal_prefix)


# -- prefix_upper_bound -------------------------------------------------------------------------

BOUNDARY = "ab\x00\x7f\ud7ff\ue000\uffff\U00010000\U0010fffe\U0010ffff"
prefix_texts = st.text(alphabet=BOUNDARY, max_size=5)
# Surrogates are not allowed in keys (validate_key refuses them), so strings here skip them.
any_texts = st.one_of(st.text(alphabet=BOUNDARY, max_size=7), st.text(max_size=7))


@pytest.mark.parametrize(
    ("prefix", "upper"),
    [
        ("", None),
        ("\U0010ffff", None),
        ("\U0010ffff\U0010ffff", None),
        ("a", "b"),
        ("aqe/", "aqe0"),
        ("a\U0010ffff", "b"),
        ("a\U0010ffff\U0010ffff", "b"),
        ("\ud7ff", "\ue000"),  # skip the surrogate gap
        ("a\ud7ff", "a\ue000"),
        ("\uffff", "\U00010000"),
        ("\U0010fffe", "\U0010ffff"),
        ("\x00", "\x01"),
    ],
)
def test_prefix_upper_bound_cases(prefix: str, upper: str | None) -> None:
    assert prefix_upper_bound(prefix) == upper


@settings(max_examples=500)
@given(prefix=prefix_texts, text=any_texts)
@example(prefix="a\ud7ff", text="a\ue000")
@example(prefix="a\U0010ffff", text="b")
@example(prefix="a\U0010ffff", text="a\U0010ffff\U0010ffff")
def test_prefix_upper_bound_is_exact(prefix: str, text: str) -> None:
    upper = prefix_upper_bound(prefix)
    if upper is None:
        assert set(prefix) <= {"\U0010ffff"}
        assert text.startswith(prefix) is (text >= prefix)
    else:
        assert upper > prefix
        assert not upper.startswith(prefix)
        assert text.startswith(prefix) is (prefix <= text < upper)


@given(prefix=prefix_texts, suffix=any_texts)
def test_prefix_upper_bound_above_every_extension(prefix: str, suffix: str) -> None:
    upper = prefix_upper_bound(prefix)
    if upper is not None:
        assert prefix + suffix < upper


# -- keys -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["aqe/", "aqe/x", "aqe/agent/1/status", "aqe/é/中文/\U0001f600", "aqe/%_*?[]\\"],
)
def test_valid_keys(key: str) -> None:
    assert validate_key(key, NS) == key


@pytest.mark.parametrize("key", ["x", "", "aqe", "AQE/x", "/aqe/x", " aqe/x", "other/aqe/x"])
def test_key_outside_namespace(key: str) -> None:
    with pytest.raises(InvalidKeyError, match="must start with 'aqe/' namespace") as info:
        validate_key(key, NS)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, PersistenceError)


def test_namespace_message_names_the_namespace() -> None:
    with pytest.raises(InvalidKeyError, match="must start with 'tenant/' namespace"):
        validate_key("aqe/x", "tenant/")


def test_key_length_limit() -> None:
    assert MAX_KEY_LENGTH == 255
    longest = NS + "k" * (MAX_KEY_LENGTH - len(NS))
    assert len(longest) == 255
    assert validate_key(longest, NS) == longest
    with pytest.raises(InvalidKeyError):
        validate_key(longest + "k", NS)


def test_key_length_counts_characters_not_bytes() -> None:
    key = NS + "\U0001f600" * (MAX_KEY_LENGTH - len(NS))
    assert validate_key(key, NS) == key
    with pytest.raises(InvalidKeyError):
        validate_key(key + "é", NS)


@pytest.mark.parametrize(
    "char", ["\x00", "\x01", "\t", "\n", "\r", "\x1b", "\x1f", "\x7f", "\x80", "\x85", "\x9f"]
)
def test_key_control_characters(char: str) -> None:
    with pytest.raises(InvalidKeyError, match="control"):
        validate_key(f"aqe/a{char}b", NS)


@pytest.mark.parametrize("surrogate", ["\ud800", "\udbff", "\udc00", "\udfff"])
def test_key_lone_surrogates(surrogate: str) -> None:
    with pytest.raises(InvalidKeyError):
        validate_key(f"aqe/{surrogate}", NS)


@pytest.mark.parametrize("key", [None, 1, 1.5, b"aqe/x", ["aqe/x"], ("aqe/x",)])
def test_non_str_keys(key: object) -> None:
    with pytest.raises(InvalidKeyError):
        validate_key(key, NS)


@given(st.text(max_size=300))
def test_validate_key_either_accepts_or_raises_invalid_key_error(key: str) -> None:
    try:
        assert validate_key(key, NS) == key
    except InvalidKeyError:
        return
    assert key.startswith(NS)
    assert len(key) <= MAX_KEY_LENGTH
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in key)


# -- prefixes --------------------------------------------------------------------------------


def test_validate_prefix() -> None:
    assert validate_prefix(None) == ""
    assert validate_prefix("") == ""
    assert validate_prefix("aqe/a") == "aqe/a"
    assert validate_prefix("aq") == "aq"  # a prefix may be shorter than the namespace
    assert validate_prefix("zzz") == "zzz"
    assert validate_prefix("aqe/%_*") == "aqe/%_*"  # literal
    assert validate_prefix("p" * MAX_KEY_LENGTH) == "p" * MAX_KEY_LENGTH


@pytest.mark.parametrize("prefix", [5, b"aqe/", ["aqe/"], "p" * 256, "aqe/\n", "aqe/\ud800"])
def test_invalid_prefixes(prefix: object) -> None:
    with pytest.raises(InvalidKeyError):
        validate_prefix(prefix)


# -- partitions --------------------------------------------------------------------------------


@pytest.mark.parametrize("partition", ["default", "p", "x" * MAX_PARTITION_LENGTH, "é/中", "a b"])
def test_valid_partitions(partition: str) -> None:
    assert validate_partition(partition) == partition


@pytest.mark.parametrize(
    "partition",
    ["", "x" * (MAX_PARTITION_LENGTH + 1), "a\nb", "\x00", "a\x7f", "\x85", "\ud800"],
)
def test_invalid_partition_strings(partition: str) -> None:
    with pytest.raises(InvalidPartitionError) as info:
        validate_partition(partition)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, InvalidArgumentError)


@pytest.mark.parametrize("partition", [None, 1, b"default", ["default"]])
def test_non_str_partitions(partition: object) -> None:
    with pytest.raises(InvalidPartitionError):
        validate_partition(partition)


def test_partition_limit_is_64() -> None:
    assert MAX_PARTITION_LENGTH == 64


# -- TTLs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ttl", "seconds"),
    [(1, 1.0), (0.001, 0.001), (3600, 3600.0), (1.5, 1.5), (5e-324, 5e-324)],
)
def test_valid_ttls(ttl: float, seconds: float) -> None:
    result = validate_ttl(ttl)
    assert result == seconds
    assert isinstance(result, float)


def test_none_ttl() -> None:
    assert validate_ttl(None) is None
    with pytest.raises(InvalidTTLError):
        validate_ttl(None, allow_none=False)


@pytest.mark.parametrize(
    "ttl",
    [0, 0.0, -0.0, -1, -0.5, math.nan, math.inf, -math.inf, True, False, "10", b"1", [1]],
)
def test_invalid_ttls(ttl: object) -> None:
    with pytest.raises(InvalidTTLError) as info:
        validate_ttl(ttl)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, PersistenceError)


def test_ttl_upper_limit() -> None:
    hundred_years = 100 * 365 * 86400
    assert validate_ttl(hundred_years) == hundred_years
    with pytest.raises(InvalidTTLError):
        validate_ttl(hundred_years + 1)


def test_enormous_int_ttl_raises_invalid_ttl_error() -> None:
    with pytest.raises(InvalidTTLError):
        validate_ttl(10**400)


@given(
    st.one_of(
        st.integers(min_value=-(10**300), max_value=10**300),
        st.floats(allow_nan=True, allow_infinity=True),
    )
)
def test_validate_ttl_accepts_exactly_positive_finite_numbers(ttl: float) -> None:
    try:
        result = validate_ttl(ttl)
    except InvalidTTLError:
        assert not (0 < ttl <= 100 * 365 * 86400)
        return
    assert result == float(ttl)
    assert 0 < result <= 100 * 365 * 86400


# -- regex mode ------------------------------------------------------------------------------------


def test_compile_regex() -> None:
    compiled = compile_regex(r"agent/\d+$")
    assert compiled.search("aqe/agent/12")
    assert not compiled.search("aqe/agent/12/x")
    assert compile_regex("a") is compile_regex("a")


@pytest.mark.parametrize("pattern", ["(", "[a", "*a", "a{2,1}", "(?P<x>a)(?P<x>b)"])
def test_invalid_regex(pattern: str) -> None:
    with pytest.raises(InvalidPatternError) as info:
        compile_regex(pattern)
    assert isinstance(info.value.__cause__, re.error)
    assert isinstance(info.value, ValueError)
