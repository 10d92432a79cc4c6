"""The original import path of ``DatabaseManager`` (kept for compatibility)."""

from lionagi_qe.db.manager import DatabaseManager

__all__ = ["DatabaseManager"]
