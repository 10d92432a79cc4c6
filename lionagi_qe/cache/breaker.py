"""A circuit breaker for the cache path: pure state, no I/O, the clock injected.

States:

- ``closed``: calls go to Redis. ``failure_threshold`` consecutive failures open it.
- ``open``: calls skip Redis (they go to the database) for ``reset_timeout`` seconds.
- ``half_open``: the timeout has passed; exactly one probe may run. Its success closes the
  breaker, its failure opens it again for another ``reset_timeout``.

:meth:`trip` opens the breaker at once, whatever the count: the cache tier calls it when a
write could not invalidate, because from then on the cache may hold a value older than the
database. Every trip (and every reopening) starts a new *epoch*; a probe remembers the epoch it
began in, and its success closes the breaker only if nothing tripped meanwhile. So a probe that
started before an unconfirmed write finished can never close the breaker over that write.

Ordinary calls never probe; the caller decides who does (the cached backend runs one background
prober, so no user call pays for probing a dead server).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(StrEnum):
    """Where the breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Consecutive-failure circuit breaker with a single half-open probe.

    Args:
        failure_threshold: consecutive failures that open a closed breaker (>= 1).
        reset_timeout: seconds an open breaker waits before a probe may run (> 0).
        clock: a monotonic clock in seconds (injected so tests need no sleeping).
    """

    def __init__(
        self,
        failure_threshold: int = 3,
        reset_timeout: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(failure_threshold, bool) or not isinstance(failure_threshold, int):
            raise TypeError("failure_threshold must be an int")
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if not reset_timeout > 0:
            raise ValueError("reset_timeout must be > 0")
        self.failure_threshold = failure_threshold
        self.reset_timeout = float(reset_timeout)
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self._epoch = 0
        #: How many times the breaker went from closed to open.
        self.times_opened = 0

    # -- reading --------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state (``open`` turns ``half_open`` by itself once the timeout passed)."""
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._probing or self._clock() - self._opened_at >= self.reset_timeout:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    @property
    def consecutive_failures(self) -> int:
        """Failures since the last success while closed."""
        return self._failures

    def allow_request(self) -> bool:
        """True if an ordinary call may use the protected resource (only when closed)."""
        return self._opened_at is None

    def seconds_until_probe(self) -> float | None:
        """Seconds until a probe may start: None when closed, 0 when one may start now."""
        if self._opened_at is None:
            return None
        return max(0.0, self._opened_at + self.reset_timeout - self._clock())

    # -- recording ------------------------------------------------------------------------

    def record_success(self) -> None:
        """An ordinary call succeeded: the failure count starts over.

        A success never closes an open breaker: a call that began before the breaker opened
        proves nothing about what happened since. Only :meth:`probe_succeeded` closes it.
        """
        if self._opened_at is None:
            self._failures = 0

    def record_failure(self) -> None:
        """An ordinary call failed; the threshold-th consecutive failure opens the breaker."""
        if self._opened_at is not None:
            return  # calls that were in flight when it opened add nothing
        self._failures += 1
        if self._failures >= self.failure_threshold:
            self._open()

    def trip(self) -> None:
        """Open now (or, if already open, void any probe in flight without restarting the wait).

        Restarting the wait on every trip would let a steady stream of writes during an
        outage postpone recovery forever.
        """
        if self._opened_at is None:
            self._open()
        else:
            self._epoch += 1
            self._probing = False

    # -- probing --------------------------------------------------------------------------

    def try_probe(self) -> int | None:
        """Start the half-open probe: its ticket, or None if no probe may start now."""
        if self.state is not BreakerState.HALF_OPEN or self._probing:
            return None
        self._probing = True
        return self._epoch

    def probe_succeeded(self, ticket: int) -> bool:
        """Close the breaker if ``ticket`` is still current; return whether it closed."""
        if ticket != self._epoch or self._opened_at is None:
            return False
        self._opened_at = None
        self._probing = False
        self._failures = 0
        return True

    def probe_failed(self, ticket: int) -> None:
        """The probe failed: open again for another ``reset_timeout`` (if still current)."""
        if ticket != self._epoch or self._opened_at is None:
            return
        self._probing = False
        self._opened_at = self._clock()
        self._epoch += 1

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._probing = False
        self._failures = 0
        self._epoch += 1
        self.times_opened += 1

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.state.value} failures={self._failures}>"
