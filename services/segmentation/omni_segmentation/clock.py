"""The clock: segmentation's due work, as jobs of omni_kit's scheduler (jobs.py names the kinds).

- A person whose membership may change by time alone (an event leaving a count window, the time since an
  event growing) has a check due at that instant (next_check_at): persons due together are evaluated in
  one transaction, as of the latest due time among them.
- A new segment's backfill evaluates the persons known before it, a slice per run, and schedules its next
  slice until it has passed them all.
- Event occurrences older than any segment can count are purged, a batch per run, again every
  purge_interval_s.

Persons are evaluated a batch at a time; the enter and exit events of each carry the trace context
stored with the person (the event that last changed them) or with the backfill (the CreateSegment call), so
they continue the trace of what caused them. A batch that fails is evaluated again one person at a time,
each in a span of its own under that context; a person whose evaluation fails is checked again later.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from sqlalchemy.ext.asyncio import AsyncSession

from omni_kit.scheduler import Backoff, Job, JobWorker, schedule
from omni_segmentation import rules
from omni_segmentation.catalog import SegmentCatalog
from omni_segmentation.jobs import BACKFILL, PERSON_CHECK, PURGE, PURGE_KEY, SIZES, SIZES_KEY
from omni_segmentation.membership import MembershipEvaluator
from omni_segmentation.repository import Repository

log = logging.getLogger(__name__)
tracer = trace.get_tracer("omni_segmentation.clock")

Transaction = Callable[[], AbstractAsyncContextManager[AsyncSession]]

# A person whose evaluation failed is tried again after this long rather than in a hot loop.
RETRY_AFTER = timedelta(seconds=30)
MAX_RETENTION = timedelta(days=400)
PURGE_BATCH = 10_000


class Clock:
    """The handlers of segmentation's due work; a JobWorker (the runtime's) runs them."""

    def __init__(
        self,
        transaction: Transaction,
        repository: Repository,
        catalog: SegmentCatalog,
        evaluator: MembershipEvaluator,
        *,
        batch_size: int = 500,
        purge_interval_s: float = 300.0,
        retention_floor: timedelta = timedelta(days=1),
        sizes_interval_s: float = 3600.0,
    ) -> None:
        self._sizes_interval = timedelta(seconds=sizes_interval_s)
        self._transaction = transaction
        self._repository = repository
        self._catalog = catalog
        self._evaluator = evaluator
        self._batch_size = batch_size
        self._purge_interval = timedelta(seconds=purge_interval_s)
        self._retention_floor = retention_floor

    def register(self, worker: JobWorker) -> None:
        """Have the worker run the clock's kinds of jobs."""
        worker.register(PERSON_CHECK, self.check_persons, batch_size=self._batch_size)
        worker.register(BACKFILL, self.backfill, batch_size=1, lease=timedelta(minutes=5))
        worker.register(
            SIZES,
            self.record_sizes,
            batch_size=1,
            lease=timedelta(minutes=5),
            max_attempts=1_000_000,
            backoff=Backoff(first_s=10, max_s=self._sizes_interval.total_seconds()),
        )
        # Purging is maintenance: it is never given up, however often it fails.
        worker.register(
            PURGE,
            self.purge_step,
            batch_size=1,
            lease=timedelta(minutes=5),
            max_attempts=1_000_000,
            backoff=Backoff(first_s=10, max_s=self._purge_interval.total_seconds()),
        )

    async def start(self) -> None:
        """Schedule the purge and the size counts (if they are not yet): each replica asks, one job each
        results."""
        async with self._transaction() as session:
            await schedule(session, PURGE, PURGE_KEY)
            await schedule(session, SIZES, SIZES_KEY)

    async def cycle(self) -> int:
        """Run every job of the clock due now with a worker of its own, until none is due; return how many
        ran (the service's own worker runs them as they fall due; this is for tests and maintenance)."""
        worker = JobWorker(self._transaction, name="segmentation-clock")
        self.register(worker)
        return await worker.run_until_idle()

    async def check_persons(self, session: AsyncSession, jobs: Sequence[Job]) -> None:
        """Re-evaluate persons whose next check is due, together, as of the latest of their due times."""
        now = max(datetime.now(UTC), *(job.due_at for job in jobs))
        carriers = await self._repository.trace_contexts(session, [uuid.UUID(job.key) for job in jobs])
        await self._evaluate_batch(session, carriers, now, "segmentation.clock evaluate")

    async def backfill(self, session: AsyncSession, jobs: Sequence[Job]) -> None:
        """Evaluate a new segment for the next slice of persons; schedule the next slice until done."""
        for job in jobs:
            backfill = await self._repository.lock_backfill(session, uuid.UUID(job.key))
            if backfill is None:
                continue
            persons = await self._repository.lock_persons_after(
                session, backfill.after_person_id, self._batch_size
            )
            await self._evaluate_batch(
                session,
                {person_id: backfill.trace_context for person_id, _ in persons},
                datetime.now(UTC),
                "segmentation.backfill evaluate",
            )
            done = len(persons) < self._batch_size
            await self._repository.advance_backfill(
                session, backfill.segment_id, None if done else persons[-1][0]
            )
            if not done:
                await schedule(session, BACKFILL, job.key, replace=True)

    async def record_sizes(self, session: AsyncSession, jobs: Sequence[Job]) -> None:
        """Record every live segment's member count for today (UTC); again after the sizes interval."""
        await self._repository.record_sizes(session, datetime.now(UTC))
        await schedule(session, SIZES, SIZES_KEY, self._sizes_interval, replace=True)

    async def purge_step(self, session: AsyncSession, jobs: Sequence[Job]) -> None:
        """Delete one batch of occurrences older than any segment counts; run again at once while there are
        more, else after the purge interval."""
        now = datetime.now(UTC)
        retention = self.retention(self._catalog.requirements(await self._catalog.segments(session)))
        count = await self._repository.purge_occurrences(session, now - retention, PURGE_BATCH)
        next_in = timedelta(0) if count >= PURGE_BATCH else self._purge_interval
        await schedule(session, PURGE, PURGE_KEY, next_in, replace=True)

    async def _evaluate_batch(
        self, session: AsyncSession, carriers: dict[uuid.UUID, dict[str, str]], now: datetime, name: str
    ) -> None:
        """Evaluate a batch of persons together (a few statements for all of them); their enter and exit
        events carry each person's own trace context. If that fails, each is evaluated on its own, so one
        person whose evaluation fails does not hold up the others."""
        if not carriers:
            return
        with tracer.start_as_current_span(
            f"{name} batch", attributes={"omni.persons": len(carriers)}
        ) as span:
            try:
                async with session.begin_nested():
                    await self._evaluator.evaluate_persons(session, carriers, now, trace_contexts=carriers)
                return
            except Exception as error:
                span.record_exception(error)
                log.warning("evaluating %d persons together failed (%s); one at a time", len(carriers), error)
        for person_id, carrier in carriers.items():
            await self._evaluate(session, person_id, carrier, now, name)

    async def _evaluate(
        self, session: AsyncSession, person_id: uuid.UUID, carrier: dict[str, str], now: datetime, name: str
    ) -> None:
        token = otel_context.attach(propagate.extract(carrier))
        try:
            with tracer.start_as_current_span(name, attributes={"omni.person_id": str(person_id)}) as span:
                try:
                    async with session.begin_nested():
                        await self._evaluator.evaluate_person(session, person_id, now)
                except Exception as error:
                    span.record_exception(error)
                    span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)))
                    log.exception("evaluating person %s failed; retrying in %s", person_id, RETRY_AFTER)
                    await self._repository.set_next_check(session, person_id, now + RETRY_AFTER)
        finally:
            otel_context.detach(token)

    async def purge(self, now: datetime) -> int:
        """Delete event occurrences older than any segment can count; return how many went."""
        async with self._transaction() as session:
            retention = self.retention(self._catalog.requirements(await self._catalog.segments(session)))
        total = 0
        while True:
            async with self._transaction() as session:
                count = await self._repository.purge_occurrences(session, now - retention, PURGE_BATCH)
            total += count
            if count < PURGE_BATCH:
                return total

    def retention(self, needs: rules.Requirements) -> timedelta:
        """How long occurrences are kept: the longest window in use (400 days when none counts events),
        never less than the floor, so a segment created later still sees recent history."""
        longest = needs.longest_window or MAX_RETENTION
        return min(max(longest, self._retention_floor), MAX_RETENTION)
