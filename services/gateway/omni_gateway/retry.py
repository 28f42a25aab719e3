"""Retrying queued messages: the backoff policy, and the handler of the scheduled delivery attempts.

A queued message's next attempt is a job of omni_kit's scheduler (DELIVERY_ATTEMPT, keyed by the message
id), scheduled in the transaction that queues the message or records a transient failure, and due when the
attempt should be made; while an attempt is under way the job waits for the end of its lease, so a message
whose attempt died with its process is taken up again. This is what makes a transient failure harmless:
whoever asked for the message (a SendMessage call, a send_requested event) has its answer already, and the
message waits in the database until the SMTP server (or identity, or profile) is back. Each retry joins the
trace of the request that queued the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate
from sqlalchemy.ext.asyncio import AsyncSession

from omni_gateway.models import Message
from omni_kit.scheduler import Job

log = logging.getLogger(__name__)

DELIVERY_ATTEMPT = "gateway.delivery_attempt"
"""The scheduled job of a queued message's next attempt; its key is the message id."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how soon a message is attempted again after transient failures."""

    max_attempts: int = 8
    first_delay_s: float = 30.0
    max_delay_s: float = 3600.0
    # Longer than an attempt can take: two service calls and an SMTP conversation, each with its timeout.
    lease_s: float = 120.0
    jitter: float = 0.0
    """Up to this fraction of each delay is taken off at random, so messages queued together (a provider
    down for a batch) do not all come back at the same instant."""

    @property
    def lease(self) -> timedelta:
        """How long one attempt holds a message."""
        return timedelta(seconds=self.lease_s)

    def next_delay(
        self, attempts_made: int, *, scheduled_s: float | None = None, hint_s: float | None = None
    ) -> timedelta:
        """The wait before the next attempt: the failing provider's own schedule's (`scheduled_s`) where it
        keeps one, else the backoff (`delay`); never sooner than the provider's hint (`hint_s`, e.g. its
        Retry-After or the time left until its circuit lets calls through)."""
        wait = timedelta(seconds=scheduled_s) if scheduled_s is not None else self.delay(attempts_made)
        if hint_s is not None:
            wait = max(wait, timedelta(seconds=hint_s))
        return wait

    def attempts_for(self, schedules: Sequence[int | None]) -> int:
        """Attempts in all for a message of a channel whose providers keep these schedules (each its
        max_attempts, None: none of its own): the most of theirs when every provider keeps one, else the
        policy's `max_attempts`."""
        if schedules and all(limit is not None for limit in schedules):
            return max(limit for limit in schedules if limit is not None)
        return self.max_attempts

    def delay(self, attempts_made: int) -> timedelta:
        """The wait before the next attempt, doubling per attempt made, capped."""
        seconds = min(self.first_delay_s * 2 ** max(attempts_made - 1, 0), self.max_delay_s)
        if self.jitter:
            seconds *= 1 - self.jitter * random.random()
        return timedelta(seconds=seconds)


class DeliveryAttempts:
    """Runs due delivery attempts (the scheduler's jobs of DELIVERY_ATTEMPT), a few at a time.

    For a batch of jobs it takes each message's lease first (which moves its job to the lease's end),
    skipping a message that is final or that another attempt holds; then asks identity once for the persons
    of all the messages it holds (`contacts`, one BatchGetPersons call rather than one call per message);
    then runs their attempts, at most `concurrency` at once. Each attempt records its outcome and schedules
    the next one, or ends the job, itself. Nothing of it is in the job run's own transaction: the provider's
    conversation is held in none.
    """

    def __init__(
        self,
        *,
        claim: Callable[[uuid.UUID], Awaitable[Message | None]],
        attempt: Callable[[Message, Any], Awaitable[Message]],
        contacts: Callable[[list[Message]], Awaitable[Mapping[uuid.UUID, Any]]] | None = None,
        concurrency: int = 10,
    ) -> None:
        self._claim = claim
        self._attempt = attempt
        self._contacts = contacts
        self._slots = asyncio.Semaphore(concurrency)

    async def __call__(self, session: AsyncSession, jobs: Sequence[Job]) -> None:
        """Attempt the messages of these jobs."""
        claimed = await asyncio.gather(*(self._claim(uuid.UUID(job.key)) for job in jobs))
        messages = [message for message in claimed if message is not None]
        persons: Mapping[uuid.UUID, Any] = {}
        if self._contacts is not None and messages:
            persons = await self._contacts(messages)
        await asyncio.gather(*(self._retry(message, persons.get(message.person_id)) for message in messages))

    async def _retry(self, message: Message, person: Any) -> None:
        async with self._slots:
            token = otel_context.attach(propagate.extract(message.trace_context or {}))
            try:
                await self._attempt(message, person)
            except Exception:
                # The lease runs out and the job is due again; nothing is lost.
                log.exception("retry of message %s failed", message.id)
            finally:
                with contextlib.suppress(Exception):
                    otel_context.detach(token)
