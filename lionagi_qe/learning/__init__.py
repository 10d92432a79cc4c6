"""The original import path of the Q-learning store (kept for compatibility)."""

from lionagi_qe.learning.db_manager import DatabaseManager

__all__ = ["DatabaseManager"]
