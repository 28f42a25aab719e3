"""Circuit breakers of providers (and of webhook destinations): purgatory's state machine, with one trial
call at a time through a half-open circuit.

purgatory opens a circuit after `threshold` counted failures in a row and half-opens it `ttl` seconds later;
but a half-open circuit lets every call in, so a campaign's worth of concurrent sends all hit a provider that
may still be down. Here the first call through a half-open circuit is its trial; until the trial ends (an
answer closes the circuit, a counted failure opens it again) the others are refused as if it were open.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import HALF_OPENED, OpenedState

__all__ = ["CircuitOpen", "Circuits"]


class CircuitOpen(Exception):
    """The circuit is open (or half-open with its trial call under way): the call was not made.
    `retry_after_s` is how long it stays so at least (0 while a trial is under way)."""

    def __init__(self, message: str, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Circuits:
    """Named circuit breakers. Failures for which `counted` answers False (and cancellations) do not count."""

    def __init__(self, counted: Callable[[BaseException], bool]) -> None:
        def not_counted(error: BaseException) -> bool:
            return not counted(error)

        self._breakers = AsyncCircuitBreakerFactory(
            exclude=[(Exception, not_counted), asyncio.CancelledError]  # type: ignore[list-item]
        )
        self._trials: set[str] = set()

    async def state(self, name: str, *, threshold: int, ttl: float) -> str:
        """ "closed", "opened" or "half-opened"."""
        breaker = await self._breakers.get_breaker(name, threshold=threshold, ttl=ttl)
        return breaker.context.state

    @contextlib.asynccontextmanager
    async def guard(self, name: str, *, threshold: int, ttl: float) -> AsyncIterator[None]:
        """Run the block within the circuit `name`: raise CircuitOpen without running it when the circuit is
        open, or half-open with a trial under way; a counted exception from the block counts against it."""
        breaker = await self._breakers.get_breaker(name, threshold=threshold, ttl=ttl)
        if name in self._trials:
            raise CircuitOpen(f"{name}: circuit half-open, its trial call is under way")
        try:
            async with breaker:
                # Entering moves an open circuit whose time is up to half-open: this call is its trial.
                # Nothing awaits between entering and marking, so no other call slips in.
                trial = breaker.context.state == HALF_OPENED
                if trial:
                    self._trials.add(name)
                try:
                    yield
                finally:
                    if trial:
                        self._trials.discard(name)
        except OpenedState as opened:
            wait = max(0.0, opened.opened_at + ttl - time.time())
            raise CircuitOpen(
                f"{name}: circuit open (too many failures in a row); next try in {wait:.1f} s", wait
            ) from None
