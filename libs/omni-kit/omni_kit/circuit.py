"""A circuit breaker: stop calling something that keeps failing, and try it again now and then.

One breaker guards one thing that fails on its own (a provider, one webhook endpoint, an SMSC). While it
answers, the circuit is CLOSED and every call goes through; after `failure_threshold` failures in a row it
OPENs, and calls are refused at once (`CircuitOpen`, with how long until the next try) instead of each
waiting for a timeout: a dead endpoint then costs its callers nothing, and the work of the others goes on at
full speed. After `reset_after_s` the circuit is HALF_OPEN: one trial call goes through; its success closes
the circuit, its failure opens it again for twice as long as before (up to `max_reset_after_s`), so an
endpoint dead for hours is tried a few times an hour, not every 30 seconds. A trial whose caller never
reports (cancelled) does not hold the circuit half-open for ever: after another `reset_after_s` a new trial
is let through.

Which outcomes count as failures is the caller's call: a webhook endpoint that answers 400 is alive (the
message is wrong), one that times out or answers 503 is not. The caller says so:

    breaker.check()              # raises CircuitOpen while the circuit is open
    try:
        answer = await call()
    except Unreachable:
        breaker.failure()
        raise
    breaker.success()

A breaker belongs to one event loop (no locks: asyncio runs one callback at a time) and to one process:
replicas each keep their own, which is what a breaker is for (what this process sees).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum

__all__ = ["CircuitBreaker", "CircuitOpen", "CircuitState"]


class CircuitState(StrEnum):
    """Where a circuit is."""

    CLOSED = "closed"
    """Calls go through."""
    OPEN = "open"
    """Calls are refused at once until the reset time."""
    HALF_OPEN = "half_open"
    """One trial call goes through; the others are refused."""


class CircuitOpen(Exception):
    """A call was refused because the circuit is open (or half-open with its trial under way)."""

    def __init__(self, name: str, retry_after_s: float, failures: int) -> None:
        super().__init__(
            f"circuit {name} is open after {failures} failures in a row; next try in {retry_after_s:.1f} s"
        )
        self.name = name
        self.retry_after_s = retry_after_s
        """How long until the circuit lets a trial call through."""
        self.failures = failures


class CircuitBreaker:
    """Counts failures in a row of one thing and refuses calls to it while it is deemed down."""

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        reset_after_s: float = 30.0,
        max_reset_after_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if reset_after_s <= 0 or max_reset_after_s < reset_after_s:
            raise ValueError("reset_after_s must be positive and at most max_reset_after_s")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self.max_reset_after_s = max_reset_after_s
        self._clock = clock
        self._failures = 0
        self._open_for_s = reset_after_s
        self._opened_at: float | None = None
        self._trial_at: float | None = None

    @property
    def state(self) -> CircuitState:
        """The circuit's state now."""
        if self._opened_at is None:
            return CircuitState.CLOSED
        if self._clock() - self._opened_at < self._open_for_s:
            return CircuitState.OPEN
        return CircuitState.HALF_OPEN

    @property
    def failures(self) -> int:
        """Failures in a row so far."""
        return self._failures

    def retry_after_s(self) -> float:
        """Seconds until a call may go through (0 when one may now)."""
        if self._opened_at is None:
            return 0.0
        now = self._clock()
        reopen = self._opened_at + self._open_for_s
        if now < reopen:
            return reopen - now
        if self._trial_at is not None and now - self._trial_at < self.reset_after_s:
            return self._trial_at + self.reset_after_s - now
        return 0.0

    def check(self) -> None:
        """Let a call through or raise CircuitOpen. In HALF_OPEN, the call let through is the trial."""
        if self._opened_at is None:
            return
        wait = self.retry_after_s()
        if wait > 0:
            raise CircuitOpen(self.name, wait, self._failures)
        self._trial_at = self._clock()

    def allows(self) -> bool:
        """Whether a call would be let through now (without taking the trial)."""
        return self.retry_after_s() == 0

    def success(self) -> None:
        """The call worked: the circuit closes and the count starts again."""
        self._failures = 0
        self._opened_at = None
        self._trial_at = None
        self._open_for_s = self.reset_after_s

    def failure(self) -> None:
        """The call failed in a way that says the thing is down."""
        self._failures += 1
        if self._opened_at is not None:
            if self._trial_at is not None:
                # The trial failed: open again, for longer.
                self._open_for_s = min(self._open_for_s * 2, self.max_reset_after_s)
                self._opened_at = self._clock()
                self._trial_at = None
            return
        if self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
            self._open_for_s = self.reset_after_s
