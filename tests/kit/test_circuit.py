"""The circuit breaker on its own, on a clock the test moves: opens after failures in a row, refuses at once
while open, lets one trial through when the time is up, closes on its success and opens for longer on its
failure, and does not stay stuck on a trial nobody reported."""

from __future__ import annotations

import pytest

from omni_kit.circuit import CircuitBreaker, CircuitOpen, CircuitState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _breaker(clock: Clock, **kwargs: float) -> CircuitBreaker:
    settings = {"failure_threshold": 3, "reset_after_s": 10.0, "max_reset_after_s": 35.0, **kwargs}
    return CircuitBreaker("crm", clock=clock, **settings)  # type: ignore[arg-type]


def test_it_opens_after_failures_in_a_row_only() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(2):
        breaker.check()
        breaker.failure()
    breaker.success()  # a success between them starts the count again
    for _ in range(2):
        breaker.check()
        breaker.failure()
    assert breaker.state is CircuitState.CLOSED
    breaker.check()
    breaker.failure()
    assert breaker.state is CircuitState.OPEN
    with pytest.raises(CircuitOpen) as refused:
        breaker.check()
    assert refused.value.retry_after_s == pytest.approx(10.0)
    assert refused.value.failures == 3
    assert "crm" in str(refused.value)


def test_one_trial_when_the_time_is_up_and_its_success_closes_the_circuit() -> None:
    clock = Clock()
    breaker = _breaker(clock, failure_threshold=1)
    breaker.failure()
    clock.now += 9.5
    assert not breaker.allows()
    clock.now += 0.5
    assert breaker.state is CircuitState.HALF_OPEN
    breaker.check()  # the trial
    with pytest.raises(CircuitOpen):
        breaker.check()  # only one at a time
    breaker.success()
    assert breaker.state is CircuitState.CLOSED
    assert breaker.failures == 0
    breaker.check()
    breaker.check()


def test_a_failed_trial_opens_it_again_for_twice_as_long_up_to_the_cap() -> None:
    clock = Clock()
    breaker = _breaker(clock, failure_threshold=1)
    breaker.failure()
    waits = []
    for _ in range(4):
        wait = breaker.retry_after_s()
        waits.append(wait)
        clock.now += wait
        breaker.check()
        breaker.failure()
    assert waits == [10.0, 20.0, 35.0, 35.0]
    # A success after all that starts from the first delay again.
    clock.now += breaker.retry_after_s()
    breaker.check()
    breaker.success()
    breaker.failure()
    assert breaker.retry_after_s() == pytest.approx(10.0)


def test_a_trial_nobody_reports_does_not_hold_the_circuit_for_ever() -> None:
    clock = Clock()
    breaker = _breaker(clock, failure_threshold=1)
    breaker.failure()
    clock.now += 10
    breaker.check()  # its caller is cancelled and reports nothing
    clock.now += 9
    with pytest.raises(CircuitOpen):
        breaker.check()
    clock.now += 1
    breaker.check()  # another trial


def test_failures_of_calls_begun_before_it_opened_do_not_extend_it() -> None:
    clock = Clock()
    breaker = _breaker(clock, failure_threshold=2)
    breaker.failure()
    breaker.failure()
    clock.now += 4
    breaker.failure()  # a slow call that started while closed
    assert breaker.retry_after_s() == pytest.approx(6.0)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker("x", failure_threshold=0)
    with pytest.raises(ValueError, match="reset_after_s"):
        CircuitBreaker("x", reset_after_s=10, max_reset_after_s=5)
