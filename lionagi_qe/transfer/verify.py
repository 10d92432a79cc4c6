"""Verification after a migration: the target compared with the source, entry by entry.

The source and the target are scanned side by side (a merge on key order, one page of each in
memory) and every live source entry under the prefix is compared with the target's: value (its
exact JSON text, so ``1`` differs from ``1.0``), partition, metadata, and TTL presence and
remaining time (within ``ttl_tolerance`` seconds, both counted down to the same moment).
Entries about to expire (less than ``ttl_tolerance`` left) that are gone from the target count
as ``expiring``, not as failures; entries only the target has are counted (``extra``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from lionagi_qe.backends.protocol import DEFAULT_SCAN_BATCH, MemoryBackend, ScannedEntry
from lionagi_qe.transfer.streams import Progress, closing, no_progress, remaining

__all__ = ["Verification", "verify"]


@dataclass(frozen=True, slots=True)
class Verification:
    """How the target compares with the source under a prefix, entry by entry."""

    source: int = 0
    matched: int = 0
    missing: int = 0
    different: int = 0
    expiring: int = 0
    extra: int = 0
    #: Up to ten keys that are missing from the target or differ there.
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True if every live source entry has an equal entry in the target."""
        return self.missing == 0 and self.different == 0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, with ``ok``."""
        return {**asdict(self), "ok": self.ok}


def _fingerprint(entry: ScannedEntry) -> tuple[str, str, str]:
    """What must be equal in source and target: exact value JSON, partition, metadata."""
    value = json.dumps(entry.value, ensure_ascii=False, separators=(",", ":"))
    metadata = json.dumps(entry.metadata, ensure_ascii=False, sort_keys=True)
    return value, entry.partition, metadata


def _same(source: ScannedEntry, target: ScannedEntry, tolerance: float) -> bool:
    if _fingerprint(source) != _fingerprint(target):
        return False
    if source.ttl is None or target.ttl is None:
        return source.ttl is None and target.ttl is None
    now = time.monotonic()
    left, right = remaining(source, now), remaining(target, now)
    assert left is not None and right is not None
    return abs(left - right) <= tolerance


async def verify(
    source: MemoryBackend,
    target: MemoryBackend,
    *,
    prefix: str | None = None,
    batch_size: int = DEFAULT_SCAN_BATCH,
    ttl_tolerance: float = 2.0,
    progress: Progress | None = None,
    total: int | None = None,
) -> Verification:
    """Compare every live entry under ``prefix`` in ``source`` with ``target`` (merge by key)."""
    report = progress or no_progress
    counts = {"source": 0, "matched": 0, "missing": 0, "different": 0, "expiring": 0, "extra": 0}
    examples: list[str] = []

    def failed(kind: str, key: str) -> None:
        counts[kind] += 1
        if len(examples) < 10:
            examples.append(key)

    report("verify", 0, total)
    left = source.scan(prefix, batch_size=batch_size)
    right = target.scan(prefix, batch_size=batch_size)
    async with closing(left) as src, closing(right) as tgt:
        mine = await anext(src, None)
        theirs = await anext(tgt, None)
        while mine is not None:
            if theirs is not None and theirs.key < mine.key:
                counts["extra"] += 1
                theirs = await anext(tgt, None)
                continue
            counts["source"] += 1
            if theirs is None or theirs.key != mine.key:
                if mine.ttl is not None and mine.ttl <= ttl_tolerance:
                    counts["expiring"] += 1
                else:
                    failed("missing", mine.key)
            else:
                if _same(mine, theirs, ttl_tolerance):
                    counts["matched"] += 1
                elif mine.ttl is not None and mine.ttl <= ttl_tolerance:
                    counts["expiring"] += 1
                else:
                    failed("different", mine.key)
                theirs = await anext(tgt, None)
            if counts["source"] % batch_size == 0:
                report("verify", counts["source"], total)
            mine = await anext(src, None)
        while theirs is not None:
            counts["extra"] += 1
            theirs = await anext(tgt, None)
    report("verify", counts["source"], counts["source"])
    return Verification(**counts, examples=examples)
