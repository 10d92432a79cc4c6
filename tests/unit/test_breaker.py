"""The cache tier's circuit breaker: pure state on an injected clock, no I/O, no sleeping."""

from __future__ import annotations

import pytest

from lionagi_qe.cache import BreakerState, CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(3, 2.0, clock=clock)


def test_starts_closed(breaker: CircuitBreaker) -> None:
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow_request()
    assert breaker.seconds_until_probe() is None
    assert breaker.try_probe() is None
    assert breaker.state == "closed"  # a str enum, ready for get_stats()


def test_opens_after_n_consecutive_failures(breaker: CircuitBreaker) -> None:
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.allow_request()
    assert breaker.consecutive_failures == 2
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow_request()
    assert breaker.times_opened == 1


def test_success_resets_the_count(breaker: CircuitBreaker) -> None:
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED


def test_half_open_after_the_timeout_allows_one_probe(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    breaker.trip()
    assert breaker.seconds_until_probe() == pytest.approx(2.0)
    assert breaker.try_probe() is None
    clock.advance(1.5)
    assert breaker.state is BreakerState.OPEN
    assert breaker.seconds_until_probe() == pytest.approx(0.5)
    clock.advance(0.5)
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow_request(), "ordinary calls never probe"
    ticket = breaker.try_probe()
    assert ticket is not None
    assert breaker.try_probe() is None, "exactly one probe at a time"
    assert breaker.probe_succeeded(ticket)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow_request()


def test_failed_probe_reopens_for_a_full_timeout(breaker: CircuitBreaker, clock: FakeClock) -> None:
    breaker.trip()
    clock.advance(2.0)
    ticket = breaker.try_probe()
    assert ticket is not None
    clock.advance(0.3)
    breaker.probe_failed(ticket)
    assert breaker.state is BreakerState.OPEN
    assert breaker.seconds_until_probe() == pytest.approx(2.0)
    assert not breaker.probe_succeeded(ticket), "an old probe cannot close it"


def test_success_of_an_ordinary_call_never_closes_an_open_breaker(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    breaker.trip()
    breaker.record_success()  # a call that started before the trip
    assert breaker.state is BreakerState.OPEN
    clock.advance(5)
    breaker.record_success()
    assert breaker.state is BreakerState.HALF_OPEN


def test_failures_while_open_change_nothing(breaker: CircuitBreaker, clock: FakeClock) -> None:
    breaker.trip()
    clock.advance(1.0)
    breaker.record_failure()
    assert breaker.seconds_until_probe() == pytest.approx(1.0)


def test_trip_during_a_probe_voids_it(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """An unconfirmed write during the probe: the probe's success must not close over it."""
    breaker.trip()
    clock.advance(2.0)
    ticket = breaker.try_probe()
    assert ticket is not None
    breaker.trip()
    assert not breaker.probe_succeeded(ticket)
    assert not breaker.allow_request()
    # The wait is not restarted (steady writes must not postpone recovery forever): a new
    # probe may start at once and close the breaker.
    second = breaker.try_probe()
    assert second is not None and second != ticket
    assert breaker.probe_succeeded(second)
    assert breaker.allow_request()


def test_trip_while_open_does_not_restart_the_wait(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    breaker.trip()
    for _ in range(10):
        clock.advance(0.3)
        breaker.trip()
    assert breaker.state is BreakerState.HALF_OPEN


def test_stale_probe_failure_is_ignored(breaker: CircuitBreaker, clock: FakeClock) -> None:
    breaker.trip()
    clock.advance(2.0)
    ticket = breaker.try_probe()
    assert ticket is not None
    breaker.trip()
    breaker.probe_failed(ticket)
    assert breaker.seconds_until_probe() == 0.0


def test_probe_outcomes_when_closed_are_ignored(breaker: CircuitBreaker) -> None:
    assert not breaker.probe_succeeded(0)
    breaker.probe_failed(0)
    assert breaker.state is BreakerState.CLOSED


def test_reopening_counts(breaker: CircuitBreaker, clock: FakeClock) -> None:
    for _ in range(3):
        breaker.record_failure()
    clock.advance(2.0)
    ticket = breaker.try_probe()
    assert ticket is not None and breaker.probe_succeeded(ticket)
    breaker.trip()
    assert breaker.times_opened == 2
    assert "open" in repr(breaker)


@pytest.mark.parametrize(
    ("threshold", "reset", "error"),
    [(0, 1.0, ValueError), (True, 1.0, TypeError), (1.5, 1.0, TypeError), (1, 0, ValueError)],
)
def test_bad_settings(threshold: object, reset: float, error: type[Exception]) -> None:
    with pytest.raises(error):
        CircuitBreaker(threshold, reset)  # type: ignore[arg-type]


def test_default_clock_is_monotonic() -> None:
    breaker = CircuitBreaker(1, 60.0)
    breaker.record_failure()
    remaining = breaker.seconds_until_probe()
    assert remaining is not None and 59 < remaining <= 60
