"""The original import path of the Q-learning store (kept for compatibility)."""

from lionagi_qe.db.manager import DatabaseManager

__all__ = ["DatabaseManager"]
