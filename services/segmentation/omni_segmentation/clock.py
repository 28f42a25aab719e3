"""The clock: re-evaluates persons whose membership may change by time alone, runs backfills, purges events.

Persons are evaluated a batch at a time; the enter and exit events of each carry the trace context
stored with the person (the event that last changed them) or with the backfill (the CreateSegment call), so
they continue the trace of what caused them. A batch that fails is evaluated again one person at a time,
each in a span of its own under that context.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from sqlalchemy.ext.asyncio import AsyncSession

from omni_segmentation import rules
from omni_segmentation.catalog import SegmentCatalog
from omni_segmentation.membership import MembershipEvaluator
from omni_segmentation.repository import Repository

log = logging.getLogger(__name__)
tracer = trace.get_tracer("omni_segmentation.clock")

Transaction = Callable[[], AbstractAsyncContextManager[AsyncSession]]

# A person whose evaluation failed is tried again after this long rather than in a hot loop.
RETRY_AFTER = timedelta(seconds=30)
MAX_RETENTION = timedelta(days=400)


class Clock:
    """A background loop over due persons, pending backfills and old event occurrences."""

    def __init__(
        self,
        transaction: Transaction,
        repository: Repository,
        catalog: SegmentCatalog,
        evaluator: MembershipEvaluator,
        *,
        interval_s: float = 1.0,
        batch_size: int = 500,
        purge_interval_s: float = 300.0,
        retention_floor: timedelta = timedelta(days=1),
    ) -> None:
        self._transaction = transaction
        self._repository = repository
        self._catalog = catalog
        self._evaluator = evaluator
        self._interval_s = interval_s
        self._batch_size = batch_size
        self._purge_interval_s = purge_interval_s
        self._retention_floor = retention_floor
        self._wake = asyncio.Event()
        self._last_purge: float | None = None

    def wake(self) -> None:
        """Run a cycle now (e.g. a segment was created and needs its backfill)."""
        self._wake.set()

    async def run(self) -> None:
        """Cycle until cancelled; errors are logged and the loop goes on."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self.cycle()
                if self._last_purge is None or loop.time() - self._last_purge >= self._purge_interval_s:
                    self._last_purge = loop.time()
                    await self.purge(datetime.now(UTC))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("segmentation clock cycle failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval_s)
            self._wake.clear()

    async def cycle(self) -> int:
        """Evaluate every person due now and advance pending backfills; return how many were evaluated.

        Due persons and backfill batches alternate, so a long backfill does not hold up timed entries.
        """
        total = 0
        while True:
            due = await self.evaluate_due(datetime.now(UTC))
            backfilled = await self.backfill_step()
            total += due + backfilled
            if due < self._batch_size and backfilled == 0:
                return total

    async def evaluate_due(self, now: datetime) -> int:
        """Re-evaluate one batch of persons whose next check is due; return the batch's size."""
        async with self._transaction() as session:
            due = await self._repository.due_persons(session, now, self._batch_size)
            await self._evaluate_batch(session, dict(due), now, "segmentation.clock evaluate")
        return len(due)

    async def backfill_step(self) -> int:
        """Evaluate the next batch of persons for the oldest pending backfill; 0 when none is pending."""
        async with self._transaction() as session:
            backfill = await self._repository.next_backfill(session)
            if backfill is None:
                return 0
            persons = await self._repository.lock_persons_after(
                session, backfill.after_person_id, self._batch_size
            )
            now = datetime.now(UTC)
            await self._evaluate_batch(
                session,
                {person_id: backfill.trace_context for person_id, _ in persons},
                now,
                "segmentation.backfill evaluate",
            )
            done = len(persons) < self._batch_size
            await self._repository.advance_backfill(
                session, backfill.segment_id, None if done else persons[-1][0]
            )
        # A finished backfill with no persons counts as work, so cycle() looks for the next one.
        return max(len(persons), 1)

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
                count = await self._repository.purge_occurrences(session, now - retention, 10_000)
            total += count
            if count < 10_000:
                return total

    def retention(self, needs: rules.Requirements) -> timedelta:
        """How long occurrences are kept: the longest window in use (400 days when none counts events),
        never less than the floor, so a segment created later still sees recent history."""
        longest = needs.longest_window or MAX_RETENTION
        return min(max(longest, self._retention_floor), MAX_RETENTION)
