"""The temporal-difference update, as pure functions (no I/O).

The SQL in :mod:`lionagi_qe.repositories.learning_q` evaluates exactly these operations in the
same order, in IEEE double precision, so a value updated by the database equals (``==``) the
value these functions compute from the same inputs.
"""

from __future__ import annotations

__all__ = ["repeated_td_update", "td_target", "td_update"]


def td_target(reward: float, next_max_q: float, gamma: float) -> float:
    """The TD target ``r + gamma * max_a' Q(s', a')``."""
    return reward + gamma * next_max_q


def td_update(q: float, reward: float, next_max_q: float, alpha: float, gamma: float) -> float:
    """One Q-learning step: ``Q + alpha * ((r + gamma * max_a' Q(s', a')) - Q)``.

    A state-action pair with no stored value starts from ``q = 0``, so its first update stores
    ``alpha * (r + gamma * max_a' Q(s', a'))``.
    """
    return q + alpha * (td_target(reward, next_max_q, gamma) - q)


def repeated_td_update(target: float, alpha: float, n: int, q0: float = 0.0) -> float:
    """Closed form of ``n`` updates toward the same ``target``: ``T + (Q0 - T) * (1 - alpha)^n``.

    Equal to ``n`` applications of :func:`td_update` up to floating-point rounding, which is
    what makes a lost or doubled update visible: ``n ± 1`` updates land elsewhere.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    return target + (q0 - target) * (1.0 - alpha) ** n
