"""Moving data: export a store to JSON Lines, import it back, migrate between backends.

A layer above the backends and the cache, below the command line (``lionagi-qe export``,
``import`` and ``migrate`` are thin wrappers around these coroutines). The file format is in
:mod:`lionagi_qe.transfer.jsonl`, the streaming, batching and verification rules in
:mod:`lionagi_qe.transfer.move`.
"""

from __future__ import annotations

from lionagi_qe.transfer.jsonl import FIELDS, Record, decode_line, encode_entry, encode_record
from lionagi_qe.transfer.move import (
    DEFAULT_CONCURRENCY,
    ExportSummary,
    ImportSummary,
    MigrateSummary,
    Progress,
    Verification,
    export_entries,
    export_jsonl,
    import_jsonl,
    migrate,
    validate_jsonl,
    verify,
)

__all__ = [
    "DEFAULT_CONCURRENCY",
    "FIELDS",
    "ExportSummary",
    "ImportSummary",
    "MigrateSummary",
    "Progress",
    "Record",
    "Verification",
    "decode_line",
    "encode_entry",
    "encode_record",
    "export_entries",
    "export_jsonl",
    "import_jsonl",
    "migrate",
    "validate_jsonl",
    "verify",
]
