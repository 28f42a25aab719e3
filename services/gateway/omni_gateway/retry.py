"""Retrying queued messages: the backoff policy, and the loop that attempts messages whose time has come.

The loop is what makes a transient failure harmless: whoever asked for the message (a SendMessage call, a
send_requested event) has its answer already, and the message waits in the database until the SMTP server
(or identity, or profile) is back. It also takes up messages whose attempt died with its process (the
attempt's lease ran out). Each retry joins the trace of the request that queued the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from opentelemetry import context as otel_context
from opentelemetry import propagate

from omni_gateway.models import Message

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how soon a message is attempted again after transient failures."""

    max_attempts: int = 8
    first_delay_s: float = 30.0
    max_delay_s: float = 3600.0
    # Longer than an attempt can take: two service calls and an SMTP conversation, each with its timeout.
    lease_s: float = 120.0

    @property
    def lease(self) -> timedelta:
        """How long one attempt holds a message."""
        return timedelta(seconds=self.lease_s)

    def delay(self, attempts_made: int) -> timedelta:
        """The wait before the next attempt, doubling per attempt made, capped."""
        seconds = self.first_delay_s * 2 ** max(attempts_made - 1, 0)
        return timedelta(seconds=min(seconds, self.max_delay_s))


class RetryLoop:
    """Claims due messages and attempts them, a few at a time, until stopped."""

    def __init__(
        self,
        *,
        claim_due: Callable[[int], Awaitable[Sequence[Message]]],
        attempt: Callable[[Message], Awaitable[Message]],
        interval_s: float,
        batch_size: int = 50,
        concurrency: int = 10,
    ) -> None:
        self._claim_due = claim_due
        self._attempt = attempt
        self._interval_s = interval_s
        self._batch_size = batch_size
        self._slots = asyncio.Semaphore(concurrency)

    async def run(self) -> None:
        """Poll for due messages every interval (at once again after a full batch)."""
        while True:
            count = 0
            try:
                count = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("retry loop failed; trying again in %.1fs", self._interval_s)
            if count < self._batch_size:
                await asyncio.sleep(self._interval_s)

    async def run_once(self) -> int:
        """Attempt every message due now (up to one batch); return how many were attempted."""
        messages = await self._claim_due(self._batch_size)
        await asyncio.gather(*(self._retry(message) for message in messages))
        return len(messages)

    async def _retry(self, message: Message) -> None:
        async with self._slots:
            token = otel_context.attach(propagate.extract(message.trace_context or {}))
            try:
                await self._attempt(message)
            except Exception:
                # The lease runs out and the message is taken up again; nothing is lost.
                log.exception("retry of message %s failed", message.id)
            finally:
                with contextlib.suppress(Exception):
                    otel_context.detach(token)
