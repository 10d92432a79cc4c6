"""Keys, partitions, TTLs and search patterns: validation and translation, no I/O.

The glob language (one for every backend):

- ``*`` matches any run of characters, ``/`` included; ``?`` exactly one character;
- ``[abc]``, ``[a-z]`` and ``[!a]`` are classes (``]`` first in a class is literal);
- ``\\`` escapes the next character; ``%`` and ``_`` are ordinary characters;
- a pattern is anchored at both ends; an unterminated ``[`` or a trailing lone ``\\`` is
  malformed (:class:`~lionagi_qe.errors.InvalidPatternError`).

A compiled :class:`GlobPattern` gives the exact Python regex, the literal prefix (for an
index range scan), the same regex anchored for PostgreSQL's ``~`` (Python's escapes are valid
ARE escapes) and an exact SQLite ``GLOB`` form where one exists.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

from lionagi_qe.errors import (
    InvalidKeyError,
    InvalidPartitionError,
    InvalidPatternError,
    InvalidTTLError,
)

__all__ = [
    "MAX_KEY_LENGTH",
    "MAX_PARTITION_LENGTH",
    "GlobPattern",
    "compile_glob",
    "compile_regex",
    "prefix_upper_bound",
    "validate_key",
    "validate_partition",
    "validate_prefix",
    "validate_ttl",
]

MAX_KEY_LENGTH = 255
MAX_PARTITION_LENGTH = 64
_MAX_CODE_POINT = 0x10FFFF
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _check_text(text: str) -> str | None:
    """Return why ``text`` cannot be stored as a key-like string, or None."""
    if _CONTROL.search(text):
        return "must not contain control characters"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "must be valid Unicode (no lone surrogates)"
    return None


def validate_key(key: object, namespace: str) -> str:
    """Return ``key`` if it is a valid key in ``namespace``, else raise InvalidKeyError."""
    if not isinstance(key, str):
        raise InvalidKeyError(f"key must be a str, not {type(key).__name__}")
    if not key.startswith(namespace):
        raise InvalidKeyError(f"Key {key[:80]!r} must start with {namespace!r} namespace")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKeyError(f"key is {len(key)} characters; at most {MAX_KEY_LENGTH} allowed")
    problem = _check_text(key)
    if problem:
        raise InvalidKeyError(f"key {problem}")
    return key


def validate_prefix(prefix: object) -> str:
    """Return a literal listing prefix (any string a key could start with)."""
    if prefix is None:
        return ""
    if not isinstance(prefix, str):
        raise InvalidKeyError(f"prefix must be a str, not {type(prefix).__name__}")
    if len(prefix) > MAX_KEY_LENGTH:
        raise InvalidKeyError(f"prefix is longer than {MAX_KEY_LENGTH} characters")
    problem = _check_text(prefix)
    if problem:
        raise InvalidKeyError(f"prefix {problem}")
    return prefix


def validate_partition(partition: object) -> str:
    """Return ``partition`` if it is a valid partition label, else raise."""
    if not isinstance(partition, str) or not partition:
        raise InvalidPartitionError("partition must be a non-empty str")
    if len(partition) > MAX_PARTITION_LENGTH:
        raise InvalidPartitionError(
            f"partition is {len(partition)} characters; at most {MAX_PARTITION_LENGTH} allowed"
        )
    problem = _check_text(partition)
    if problem:
        raise InvalidPartitionError(f"partition {problem}")
    return partition


def validate_ttl(ttl: object, *, allow_none: bool = True) -> float | None:
    """Return ``ttl`` as float seconds (None = never expires); reject ``<= 0`` and non-numbers."""
    if ttl is None:
        if allow_none:
            return None
        raise InvalidTTLError("ttl is required here")
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise InvalidTTLError(f"ttl must be a number of seconds, not {type(ttl).__name__}")
    try:
        seconds = float(ttl)
    except OverflowError:
        raise InvalidTTLError("ttl is too large; use None for no expiry") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidTTLError(f"ttl must be > 0 seconds and finite, got {ttl!r}")
    if seconds > 100 * 365 * 86400:
        raise InvalidTTLError("ttl must be at most 100 years; use None for no expiry")
    return seconds


def prefix_upper_bound(prefix: str) -> str | None:
    """Return the smallest string greater than every string starting with ``prefix``.

    Code-point order; None when there is no such string (empty prefix or all U+10FFFF).
    """
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if 0xD800 <= code <= 0xDFFF:
            code = 0xE000
        if code <= _MAX_CODE_POINT:
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


@dataclass(frozen=True, slots=True)
class GlobPattern:
    """A parsed glob: the exact matcher plus what SQL and Redis can use to narrow the scan."""

    pattern: str
    regex: re.Pattern[str]
    literal_prefix: str
    posix_regex: str
    """The anchored regex for PostgreSQL's ``~`` operator."""
    sqlite_glob: str | None
    """An exact SQLite ``GLOB`` form, or None where SQLite's class syntax cannot say it."""

    def matches(self, key: str) -> bool:
        """Return True if ``key`` matches the whole pattern."""
        return self.regex.fullmatch(key) is not None


def _sqlite_literal(char: str) -> str:
    return f"[{char}]" if char in "*?[" else char


def _sqlite_class(members: list[tuple[str, str]], negate: bool) -> str | None:
    """SQLite's class syntax has no escapes: ``]`` must come first, ``-`` last, ``^`` not first."""
    awkward = {"]", "-", "^"}
    if any(lo != hi and (lo in awkward or hi in awkward) for lo, hi in members):
        return None
    singles = {lo for lo, hi in members if lo == hi}
    body = "]" if "]" in singles else ""
    body += "".join(f"{lo}-{hi}" for lo, hi in members if lo != hi)
    body += "".join(sorted(singles - awkward))
    if "^" in singles:
        if not body and not negate:
            return "^" if "-" not in singles else "[-^]"
        body += "^"
    if "-" in singles:
        body += "-"
    return f"[{'^' if negate else ''}{body}]"


def compile_glob(pattern: str) -> GlobPattern:
    """Parse a glob pattern (see the module docstring); raise InvalidPatternError if malformed."""
    if not isinstance(pattern, str):
        raise InvalidPatternError(f"pattern must be a str, not {type(pattern).__name__}")
    return _compile_glob(pattern)


@lru_cache(maxsize=1024)
def _compile_glob(pattern: str) -> GlobPattern:
    if _CONTROL.search(pattern):
        raise InvalidPatternError("pattern must not contain control characters")
    regex: list[str] = []
    sqlite: list[str] | None = []
    prefix: list[str] = []
    prefix_open = True
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "\\":
            if i + 1 >= n:
                raise InvalidPatternError(f"pattern {pattern!r} ends with a lone backslash")
            literal = pattern[i + 1]
            i += 2
        elif char == "*" or char == "?":
            prefix_open = False
            regex.append(".*" if char == "*" else ".")
            if sqlite is not None:
                sqlite.append(char)
            i += 1
            continue
        elif char == "[":
            prefix_open = False
            j = i + 1
            negate = j < n and pattern[j] == "!"
            if negate:
                j += 1
            members: list[tuple[str, str]] = []
            first = True
            while j < n and (pattern[j] != "]" or first):
                first = False
                lo = pattern[j]
                if lo == "\\":
                    if j + 1 >= n:
                        raise InvalidPatternError(f"pattern {pattern!r} has an unterminated class")
                    j += 1
                    lo = pattern[j]
                j += 1
                hi = lo
                if j + 1 < n and pattern[j] == "-" and pattern[j + 1] != "]":
                    hi = pattern[j + 1]
                    if hi == "\\":
                        if j + 2 >= n:
                            raise InvalidPatternError(
                                f"pattern {pattern!r} has an unterminated class"
                            )
                        hi = pattern[j + 2]
                        j += 1
                    j += 2
                    if ord(hi) < ord(lo):
                        raise InvalidPatternError(f"pattern {pattern!r} has a reversed range")
                members.append((lo, hi))
            if j >= n:
                raise InvalidPatternError(f"pattern {pattern!r} has an unterminated '['")
            body = "".join(
                re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}"
                for lo, hi in members
            )
            regex.append(f"[{'^' if negate else ''}{body}]")
            sqlite_class = _sqlite_class(members, negate)
            if sqlite is not None and sqlite_class is not None:
                sqlite.append(sqlite_class)
            else:
                sqlite = None
            i = j + 1
            continue
        else:
            literal = char
            i += 1
        if prefix_open:
            prefix.append(literal)
        regex.append(re.escape(literal))
        if sqlite is not None:
            sqlite.append(_sqlite_literal(literal))
    body = "".join(regex)
    return GlobPattern(
        pattern=pattern,
        regex=re.compile(body, re.DOTALL),
        literal_prefix="".join(prefix),
        posix_regex=f"^{body}$",
        sqlite_glob="".join(sqlite) if sqlite is not None else None,
    )


def compile_regex(pattern: str) -> re.Pattern[str]:
    """Compile a Python regular expression for ``search(..., regex=True)``."""
    if not isinstance(pattern, str):
        raise InvalidPatternError(f"pattern must be a str, not {type(pattern).__name__}")
    return _compile_regex(pattern)


@lru_cache(maxsize=256)
def _compile_regex(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise InvalidPatternError(f"invalid regular expression {pattern!r}: {exc}") from exc
