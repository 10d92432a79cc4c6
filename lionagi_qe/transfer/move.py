"""Moving entries: export to JSON Lines, import from it, migrate between two backends.

All three stream: entries are read with :meth:`MemoryBackend.scan` (keyset pages of
``batch_size``) and written ``batch_size`` at a time, so memory stays bounded by one page
whatever the size of the store or file.

Writes. Each chunk of up to ``batch_size`` entries is de-duplicated (a repeated key keeps its
last line, as in ``store_many``) and split in two:

- entries with no metadata that share a partition and a TTL (``None`` included; on import also
  a TTL written in the file) go in one ``store_many`` per group: one statement on PostgreSQL,
  one script on Redis, all or nothing;
- the rest (metadata, or a TTL that counts down) are ``store`` calls, at most ``concurrency``
  in flight. On migrate each TTL is the source's remaining time minus the monotonic time spent
  since the entry was read, so an entry lives no longer in the target than in the source (up
  to the latency of the write itself, which the target's clock counts from its own "now"); an
  entry whose time ran out on the way is not written (``expired``): the move never resurrects.

Chunks are written one after another (a chunk's writes all finish before the next starts), so
the last line of a repeated key always wins; the next chunk is read while one is written.
Re-running an import or a migration gives the same live state (keys, values, partitions,
metadata, remaining TTLs); versions grow, as on any write.

Import reads its file twice: a first pass validates every line (no I/O), so a malformed file
raises a typed error naming the line before anything is written and the target is unchanged;
the second pass writes.

Migrate ends with a verification (:mod:`lionagi_qe.transfer.verify`).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from lionagi_qe.backends.protocol import DEFAULT_SCAN_BATCH, MemoryBackend
from lionagi_qe.errors import InvalidArgumentError
from lionagi_qe.transfer.jsonl import Record, decode_line, encode_entry
from lionagi_qe.transfer.streams import Pending, Progress, Writer, closing, no_progress, remaining
from lionagi_qe.transfer.verify import Verification, verify

__all__ = [
    "DEFAULT_CONCURRENCY",
    "ExportSummary",
    "ImportSummary",
    "MigrateSummary",
    "Progress",
    "Verification",
    "export_entries",
    "export_jsonl",
    "import_jsonl",
    "migrate",
    "validate_jsonl",
    "verify",
]

#: ``store`` calls in flight at once while writing entries that cannot be batched.
DEFAULT_CONCURRENCY = 32
#: Lines read between two yields to the event loop.
_YIELD_EVERY = 500


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What an export wrote."""

    entries: int
    bytes: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, with ``entries_per_second``."""
        return {**asdict(self), "entries_per_second": _rate(self.entries, self.seconds)}


@dataclass(frozen=True, slots=True)
class ImportSummary:
    """What an import read and wrote."""

    lines: int
    entries: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, with ``entries_per_second``."""
        return {**asdict(self), "entries_per_second": _rate(self.entries, self.seconds)}


@dataclass(frozen=True, slots=True)
class MigrateSummary:
    """What a migration read, wrote and found when verifying."""

    read: int
    written: int
    expired: int
    seconds: float
    verification: Verification | None

    @property
    def ok(self) -> bool:
        """True unless verification ran and failed."""
        return self.verification is None or self.verification.ok

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, with ``entries_per_second`` and ``ok``."""
        return {
            "read": self.read,
            "written": self.written,
            "expired": self.expired,
            "seconds": self.seconds,
            "entries_per_second": _rate(self.read, self.seconds),
            "verification": None if self.verification is None else self.verification.as_dict(),
            "ok": self.ok,
        }


# -- validation helpers ------------------------------------------------------------------------


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{name} must be an int >= 1")
    return value


def _namespace(memory: MemoryBackend) -> str:
    namespace = getattr(memory, "namespace", "aqe/")
    return namespace if isinstance(namespace, str) else "aqe/"


def _max_value_bytes(memory: MemoryBackend) -> int | None:
    limit = getattr(memory, "max_value_bytes", None)
    return limit if isinstance(limit, int) else None


# -- writing -----------------------------------------------------------------------------------


# -- export ------------------------------------------------------------------------------------


async def _total(memory: MemoryBackend, prefix: str | None, progress: object) -> int | None:
    """How many entries a scan of ``prefix`` will see, if someone watches and it is cheap."""
    if progress is None or prefix:
        return None
    stats = await memory.get_stats()
    total = stats.get("total_keys")
    return total if isinstance(total, int) else None


async def export_entries(
    memory: MemoryBackend,
    out: IO[bytes],
    *,
    prefix: str | None = None,
    batch_size: int = DEFAULT_SCAN_BATCH,
    progress: Progress | None = None,
) -> ExportSummary:
    """Write every live entry under ``prefix`` to ``out`` as JSON Lines, one page at a time.

    ``ttl`` on each line is the entry's remaining time by the source's clock when its page was
    read. Entries with no time left by then are skipped.
    """
    report = progress or no_progress
    scan = memory.scan(prefix, batch_size=batch_size)  # validates before any I/O
    started = time.monotonic()
    total = await _total(memory, prefix, progress)
    report("export", 0, total)
    count = size = 0
    async with closing(scan) as entries:
        async for entry in entries:
            ttl = remaining(entry, time.monotonic())
            if ttl is not None and ttl <= 0:
                continue
            data = (encode_entry(entry, ttl) + "\n").encode("utf-8")
            out.write(data)
            count += 1
            size += len(data)
            if count % batch_size == 0:
                report("export", count, total)
    out.flush()
    report("export", count, total)
    return ExportSummary(count, size, round(time.monotonic() - started, 3))


@contextmanager
def _replacing(path: Path) -> Iterator[IO[bytes]]:
    """A temporary file beside ``path`` that replaces it on success and vanishes on failure."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        with os.fdopen(handle, "wb") as out:
            yield out
        os.replace(temporary, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(temporary)
        raise


async def export_jsonl(
    memory: MemoryBackend,
    path: str | os.PathLike[str],
    *,
    prefix: str | None = None,
    batch_size: int = DEFAULT_SCAN_BATCH,
    progress: Progress | None = None,
) -> ExportSummary:
    """Export to the file ``path`` (written beside it, then renamed: never half a file).

    The file is created readable by its owner only (mode 0600): entries may hold secrets.
    """
    memory.scan(prefix, batch_size=batch_size)  # refuse bad arguments before creating a file
    with _replacing(Path(path)) as out:
        return await export_entries(
            memory, out, prefix=prefix, batch_size=batch_size, progress=progress
        )


# -- import ------------------------------------------------------------------------------------


@contextmanager
def _reading(path: Path) -> Iterator[IO[bytes]]:
    with path.open("rb") as source:
        yield source


async def _records(
    path: Path, namespace: str, max_value_bytes: int | None
) -> AsyncIterator[tuple[int, Record]]:
    """(line number, record) of every non-blank line, validated; yields to the loop often."""
    with _reading(path) as source:
        for number, line in enumerate(source, start=1):
            record = decode_line(line, number, namespace=namespace, max_value_bytes=max_value_bytes)
            if number % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            if record is not None:
                yield number, record


async def validate_jsonl(
    path: str | os.PathLike[str],
    *,
    namespace: str = "aqe/",
    max_value_bytes: int | None = None,
    progress: Progress | None = None,
) -> int:
    """Check every line of ``path`` without writing anything; return how many entries it has.

    Raises:
        PersistenceError: the first malformed line, as a typed error naming its number.
    """
    report = progress or no_progress
    count = 0
    report("validate", 0, None)
    async for _number, _record in _records(Path(path), namespace, max_value_bytes):
        count += 1
        if count % _YIELD_EVERY == 0:
            report("validate", count, None)
    report("validate", count, count)
    return count


async def import_jsonl(
    memory: MemoryBackend,
    path: str | os.PathLike[str],
    *,
    batch_size: int = DEFAULT_SCAN_BATCH,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: Progress | None = None,
) -> ImportSummary:
    """Validate the whole file ``path``, then write its entries into ``memory``.

    Nothing is written unless every line is valid. Each entry gets the ``ttl`` of its line,
    counted from when it is written.

    Raises:
        PersistenceError: a malformed line (named by number), before any write.
    """
    size = _positive_int("batch_size", batch_size)
    slots = _positive_int("concurrency", concurrency)
    report = progress or no_progress
    source = Path(path)
    namespace, limit = _namespace(memory), _max_value_bytes(memory)
    started = time.monotonic()
    total = await validate_jsonl(
        source, namespace=namespace, max_value_bytes=limit, progress=report
    )
    writer = Writer(memory, batch_size=size, concurrency=slots, progress=report)
    writer.start("import", total)
    try:
        async for _number, record in _records(source, namespace, limit):
            await writer.add(Pending(record))
        await writer.finish()
    finally:
        await writer.abort()
    return ImportSummary(total, writer.written, round(time.monotonic() - started, 3))


# -- migrate -----------------------------------------------------------------------------------


async def migrate(
    source: MemoryBackend,
    target: MemoryBackend,
    *,
    prefix: str | None = None,
    batch_size: int = DEFAULT_SCAN_BATCH,
    concurrency: int = DEFAULT_CONCURRENCY,
    check: bool = True,
    ttl_tolerance: float = 2.0,
    progress: Progress | None = None,
) -> MigrateSummary:
    """Copy every live entry under ``prefix`` from ``source`` to ``target``, then verify.

    Values, partitions, metadata and remaining TTLs are kept (see the module docstring);
    entries already in the target under other keys are left alone. ``check=False`` skips the
    verification.

    Raises:
        InvalidArgumentError: bad ``batch_size``/``concurrency``, or the target's namespace
            cannot hold the source's keys.
    """
    size = _positive_int("batch_size", batch_size)
    slots = _positive_int("concurrency", concurrency)
    if source is target:
        raise InvalidArgumentError("the source and the target are the same store")
    scan = source.scan(prefix, batch_size=size)
    source_ns, target_ns = _namespace(source), _namespace(target)
    if source_ns != target_ns and not (prefix or source_ns).startswith(target_ns):
        raise InvalidArgumentError(
            f"the target's namespace {target_ns!r} cannot hold keys of {source_ns!r}"
        )
    report = progress or no_progress
    started = time.monotonic()
    total = await _total(source, prefix, progress)
    writer = Writer(target, batch_size=size, concurrency=slots, progress=report)
    writer.start("copy", total)
    read = 0
    try:
        async with closing(scan) as entries:
            async for entry in entries:
                read += 1
                record = Record(entry.key, entry.value, entry.partition, entry.ttl, entry.metadata)
                await writer.add(Pending(record, entry.read_at or time.monotonic()))
        await writer.finish()
    finally:
        await writer.abort()
    verification = None
    if check:
        verification = await verify(
            source,
            target,
            prefix=prefix,
            batch_size=size,
            ttl_tolerance=ttl_tolerance,
            progress=report,
            total=read,
        )
    return MigrateSummary(
        read, writer.written, writer.expired, round(time.monotonic() - started, 3), verification
    )
