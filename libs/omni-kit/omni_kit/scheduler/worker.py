"""The worker that runs due jobs: claimed in batches with a lease, each run's effect and completion committed
together, failures retried with backoff and finally parked.

One run of a kind:
1. Claim: one statement takes up to `batch_size` due jobs of the kind, oldest first, skipping rows another
   worker is claiming (FOR UPDATE SKIP LOCKED), and moves each one's due time a lease ahead, counts the
   attempt and stamps it with this run's claim. Committed at once, so no other worker takes them while
   the lease lasts, and a worker that dies leaves them to be claimed again when it runs out. That commit
   does not wait for its WAL flush (the run's synchronous commit flushes it before any effect is durable).
   While the worker's loop runs a batch, it claims the kind's next batch beside it (claim ahead), so a
   round costs the longer of a claim and a run rather than both, unless the kind's last run took more
   than a quarter of its lease (the batch claimed ahead waits for the run before it, its lease running).
2. Run: in one transaction the kind's handler applies the jobs' effect, then the jobs still holding this
   run's claim are deleted (completed). A job the handler scheduled anew (the same kind and key, replace)
   no longer holds the claim and stays, at its new time. A job that another run claimed meanwhile (this
   run outlived its lease) makes the transaction roll back: only one run's effect is ever committed.
3. Failure: when the handler raises for a batch, the transaction rolls back and each job is run again on
   its own, so one bad job does not hold up the others; a job that fails on its own is due again after
   its kind's backoff, with the error kept, and after `max_attempts` attempts it is parked (no due time,
   failed_at set, an ERROR logged and counted) for an operator to look at.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from sqlalchemy.ext.asyncio import AsyncSession

log = logging.getLogger(__name__)
tracer = trace.get_tracer("omni_kit.scheduler")
_meter = metrics.get_meter("omni_kit.scheduler")
_COMPLETED = _meter.create_counter("omni.jobs.completed", description="Jobs whose run committed.")
_RETRIED = _meter.create_counter("omni.jobs.retried", description="Job runs that failed and were put back.")
_PARKED = _meter.create_counter(
    "omni.jobs.failed", description="Jobs given up after their last attempt (parked for an operator)."
)
_LATENESS = _meter.create_histogram(
    "omni.jobs.lateness", unit="s", description="How long after its due time a job was claimed."
)

Transaction = Callable[[], AbstractAsyncContextManager[AsyncSession]]
"""Opens a session in a transaction that commits when the block ends (Runtime.transaction)."""


@dataclass(frozen=True, slots=True)
class Job:
    """One claimed job, as its handler sees it."""

    kind: str
    key: str
    payload: dict[str, Any]
    attempt: int
    """1 on the first run, counting runs whose lease ran out."""
    due_at: datetime
    """When it was due (its lateness is the time since)."""
    trace_context: dict[str, str] = field(default_factory=dict)
    """The trace of the work that scheduled it."""


JobHandler = Callable[[AsyncSession, Sequence[Job]], Awaitable[None]]
"""Applies a batch of jobs of one kind in the session's transaction; raising rolls the batch back."""


@dataclass(frozen=True)
class Backoff:
    """The wait before a failed job runs again: first_s, doubling per attempt, at most max_s."""

    first_s: float = 1.0
    max_s: float = 300.0

    def delay(self, attempt: int) -> timedelta:
        """The wait after the given attempt (1 for the first) failed."""
        return timedelta(seconds=min(self.first_s * 2 ** max(attempt - 1, 0), self.max_s))


@dataclass(frozen=True)
class JobKind:
    """How the jobs of one kind are run."""

    handler: JobHandler
    lease: timedelta = timedelta(seconds=60)
    """Longer than a run can take: when it runs out, the job is claimed again (its worker is taken for dead)."""
    batch_size: int = 100
    """The most jobs claimed and run together (one transaction)."""
    max_attempts: int = 10
    backoff: Backoff = Backoff()


class LeaseLost(Exception):
    """Another run claimed jobs of this run before it completed them (its lease ran out): it rolls back."""


_CLAIM = sa.text(
    "UPDATE scheduled_jobs AS j SET due_at = now() + make_interval(secs => :lease), "
    "attempts = j.attempts + 1, claim = :claim "
    "FROM (SELECT kind, key, due_at FROM scheduled_jobs WHERE kind = :kind AND due_at <= now() "
    "ORDER BY due_at LIMIT :limit FOR UPDATE SKIP LOCKED) AS due "
    "WHERE j.kind = due.kind AND j.key = due.key "
    "RETURNING j.key, j.payload, j.attempts, due.due_at, j.trace_context, now() AS claimed_at"
)
_GIVE_BACK = sa.text(
    "UPDATE scheduled_jobs SET claim = NULL, due_at = now(), attempts = greatest(attempts - 1, 0) "
    "WHERE kind = :kind AND claim = :claim"
)
_ASYNC_COMMIT = sa.text("SET LOCAL synchronous_commit TO off")
_COMPLETE = sa.text(
    "DELETE FROM scheduled_jobs WHERE kind = :kind AND key = ANY(CAST(:keys AS text[])) AND claim = :claim "
    "RETURNING key"
)
_CLAIMED_BY_OTHERS = sa.text(
    "SELECT key FROM scheduled_jobs WHERE kind = :kind AND key = ANY(CAST(:keys AS text[])) "
    "AND claim IS NOT NULL AND claim <> :claim"
)
_FAILED = sa.text(
    "UPDATE scheduled_jobs SET claim = NULL, last_error = :error, "
    "due_at = CASE WHEN attempts >= :max THEN NULL ELSE now() + make_interval(secs => :delay) END, "
    "failed_at = CASE WHEN attempts >= :max THEN now() END "
    "WHERE kind = :kind AND key = :key AND claim = :claim RETURNING due_at"
)
_NEXT_DUE = sa.text(
    "SELECT min(next.due_at) FROM unnest(CAST(:kinds AS text[])) AS k(kind), LATERAL ("
    "SELECT due_at FROM scheduled_jobs WHERE kind = k.kind AND due_at IS NOT NULL ORDER BY due_at LIMIT 1"
    ") AS next"
)

_MAX_ERROR = 2000


class JobWorker:
    """Runs the due jobs of the kinds registered with it, until stopped; several may run on one database."""

    def __init__(self, transaction: Transaction, *, poll_interval_s: float = 1.0, name: str = "jobs") -> None:
        self._transaction = transaction
        self._poll_interval_s = poll_interval_s
        self.name = name
        self._kinds: dict[str, JobKind] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._sleeping_until: datetime | None = None
        self._claim_ahead = False
        self._ahead: dict[str, asyncio.Task[tuple[list[Job], uuid.UUID]]] = {}
        """Per kind, the claim of its next batch, made while the loop runs the current one."""
        self._run_s: dict[str, float] = {}
        """Per kind, how long its last run took (seconds)."""
        self.completed = 0
        self.retried = 0
        self.failed = 0

    @property
    def kinds(self) -> Mapping[str, JobKind]:
        """The kinds this worker runs."""
        return self._kinds

    def register(
        self,
        kind: str,
        handler: JobHandler,
        *,
        lease: timedelta = timedelta(seconds=60),
        batch_size: int = 100,
        max_attempts: int = 10,
        backoff: Backoff | None = None,
    ) -> None:
        """Run the jobs of `kind` with `handler` (see JobKind for the rest)."""
        if kind in self._kinds:
            raise ValueError(f"job kind {kind!r} is registered already")
        if batch_size < 1 or max_attempts < 1 or lease <= timedelta(0):
            raise ValueError("batch_size and max_attempts must be at least 1, the lease positive")
        self._kinds[kind] = JobKind(handler, lease, batch_size, max_attempts, backoff or Backoff())

    def notify(self, due_at: datetime) -> None:
        """A job was committed that is due at due_at: wake the loop if it would sleep past that."""
        if self._sleeping_until is None or due_at < self._sleeping_until:
            self._wake.set()

    def wake(self) -> None:
        """Look for due jobs now."""
        self._wake.set()

    def stop(self) -> None:
        """Ask the loop to finish after the jobs in hand."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Run due jobs until stopped; between rounds sleep until the next job is due (at most the poll
        interval: jobs scheduled by other processes are seen then) or until woken.

        While a batch of a kind runs, the next batch of that kind is claimed (see the module's doc); it runs
        next, also when the worker is stopped (it is in hand), and is given back (due at once, the attempt
        not counted) if the worker is cancelled instead."""
        self._claim_ahead = True
        try:
            await self._rounds()
        except asyncio.CancelledError:
            await asyncio.shield(self._give_back_ahead())
            raise
        finally:
            self._claim_ahead = False
        for kind, task in self._take_ahead().items():
            try:
                jobs, claim = await task
            except Exception:
                log.exception("%s: the %s jobs claimed ahead cannot be run", self.name, kind)
                continue
            if jobs:
                await self.run_claimed(kind, claim, jobs)

    async def _rounds(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                if await self.run_due():
                    failures = 0
                    continue
                delay = await self._until_next_due()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                delay = min(self._poll_interval_s * 2**failures, 30.0)
                log.exception("%s: running due jobs failed; trying again in %.1fs", self.name, delay)
            self._sleeping_until = datetime.now(UTC) + timedelta(seconds=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            self._sleeping_until = None
            self._wake.clear()

    def _take_ahead(self) -> dict[str, asyncio.Task[tuple[list[Job], uuid.UUID]]]:
        ahead, self._ahead = self._ahead, {}
        return ahead

    async def _give_back_ahead(self) -> None:
        """Give back the batches claimed ahead (due again at once, the attempt not counted)."""
        for kind, task in self._take_ahead().items():
            if not task.done():
                task.cancel()
            try:
                jobs, claim = await task
            except BaseException:  # cancelled before it committed, or failed: nothing is held
                continue
            if jobs:
                with contextlib.suppress(Exception):
                    async with self._transaction() as session:
                        await session.execute(_GIVE_BACK, {"kind": kind, "claim": claim})

    async def run_due(self) -> int:
        """Claim and run one batch of due jobs of every kind (the kinds side by side); return how many ran."""
        counts = await asyncio.gather(*(self._run_kind(kind) for kind in self._kinds))
        return sum(counts)

    async def run_until_idle(self) -> int:
        """Run due jobs until none is due; return how many ran (for tests and maintenance commands)."""
        total = 0
        while count := await self.run_due():
            total += count
        return total

    async def _until_next_due(self) -> float:
        if not self._kinds:
            return self._poll_interval_s
        async with self._transaction() as session:
            next_due = await session.scalar(_NEXT_DUE, {"kinds": list(self._kinds)})
        if next_due is None:
            return self._poll_interval_s
        return max(0.0, min(self._poll_interval_s, (next_due - datetime.now(UTC)).total_seconds()))

    async def _run_kind(self, kind: str) -> int:
        ahead = self._ahead.pop(kind, None)
        jobs, claim = await (ahead if ahead is not None else self.claim(kind))
        if not jobs:
            return 0
        quick = self._run_s.get(kind, 0.0) < self._kinds[kind].lease.total_seconds() / 4
        if quick and self._claim_ahead and not self._stopping:
            self._ahead[kind] = asyncio.ensure_future(self.claim(kind))
        started = time.monotonic()
        await self.run_claimed(kind, claim, jobs)
        self._run_s[kind] = time.monotonic() - started
        return len(jobs)

    async def claim(self, kind: str) -> tuple[list[Job], uuid.UUID]:
        """Claim a batch of due jobs of a kind (committed); return them and the run's claim."""
        spec = self._kinds[kind]
        claim = uuid.uuid4()
        async with self._transaction() as session:
            # The claim need not wait for its WAL flush: a synchronous commit (the run's) flushes it with
            # everything before it, so no effect is ever durable without its claim; a claim lost in a crash
            # of the server is only a lease that never was (the job is due as before).
            await session.execute(_ASYNC_COMMIT)
            rows = (
                await session.execute(
                    _CLAIM,
                    {
                        "kind": kind,
                        "claim": claim,
                        "limit": spec.batch_size,
                        "lease": spec.lease.total_seconds(),
                    },
                )
            ).all()
        jobs = [
            Job(kind, row.key, row.payload, row.attempts, row.due_at, row.trace_context or {}) for row in rows
        ]
        jobs.sort(key=lambda job: job.due_at)
        for row in rows:
            _LATENESS.record(max(0.0, (row.claimed_at - row.due_at).total_seconds()), {"omni.job_kind": kind})
        return jobs, claim

    async def run_claimed(self, kind: str, claim: uuid.UUID, jobs: Sequence[Job]) -> None:
        """Run jobs this worker claimed: together, and if that fails one by one (see the module's doc)."""
        try:
            await self._apply(kind, claim, jobs)
            return
        except LeaseLost as lost:
            if len(jobs) == 1:
                log.warning("%s: %s", self.name, lost)
                return
            log.warning("%s: %s; running the batch's jobs one by one", self.name, lost)
        except Exception as error:
            if len(jobs) == 1:
                await self._failed(kind, claim, jobs[0], error)
                return
            log.info("%s: %d %s jobs together failed (%s); one by one", self.name, len(jobs), kind, error)
        for job in jobs:
            try:
                await self._apply(kind, claim, [job])
            except LeaseLost as lost:
                log.warning("%s: %s", self.name, lost)
            except Exception as error:
                await self._failed(kind, claim, job, error)

    async def _apply(self, kind: str, claim: uuid.UUID, jobs: Sequence[Job]) -> None:
        keys = [job.key for job in jobs]
        with self._span(kind, jobs) as span:
            try:
                async with self._transaction() as session:
                    await self._kinds[kind].handler(session, jobs)
                    done = set(await session.scalars(_COMPLETE, {"kind": kind, "keys": keys, "claim": claim}))
                    rest = [key for key in keys if key not in done]
                    if rest:
                        # Not deleted: scheduled anew or cancelled by the handler (fine), or claimed by
                        # another run because this one outlived its lease (then this effect must not count).
                        taken = list(
                            await session.scalars(
                                _CLAIMED_BY_OTHERS, {"kind": kind, "keys": rest, "claim": claim}
                            )
                        )
                        if taken:
                            raise LeaseLost(
                                f"{kind} jobs {taken[:5]} were claimed by another run before this one "
                                "completed them (its lease ran out); its effect is rolled back"
                            )
            except Exception as error:
                span.record_exception(error)
                span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)))
                raise
        self.completed += len(jobs)
        _COMPLETED.add(len(jobs), {"omni.job_kind": kind})

    async def _failed(self, kind: str, claim: uuid.UUID, job: Job, error: Exception) -> None:
        spec = self._kinds[kind]
        delay = spec.backoff.delay(job.attempt)
        async with self._transaction() as session:
            updated = (
                await session.execute(
                    _FAILED,
                    {
                        "kind": kind,
                        "key": job.key,
                        "claim": claim,
                        "error": repr(error)[:_MAX_ERROR].replace("\x00", "\ufffd"),
                        "max": spec.max_attempts,
                        "delay": delay.total_seconds(),
                    },
                )
            ).first()
        if updated is None:
            return  # scheduled anew, cancelled or claimed by another run meanwhile: not this run's to count
        if updated.due_at is None:
            self.failed += 1
            _PARKED.add(1, {"omni.job_kind": kind})
            log.error(
                "%s: job %s %s failed %d times and is given up: %r",
                self.name,
                kind,
                job.key,
                job.attempt,
                error,
                exc_info=error,
            )
        else:
            self.retried += 1
            _RETRIED.add(1, {"omni.job_kind": kind})
            log.warning(
                "%s: job %s %s failed (attempt %d), again in %.1fs: %r",
                self.name,
                kind,
                job.key,
                job.attempt,
                delay.total_seconds(),
                error,
            )

    @contextlib.contextmanager
    def _span(self, kind: str, jobs: Sequence[Job]) -> Iterator[trace.Span]:
        """A run's span: the child of its job's trace, or for a batch linked to (some of) the jobs' traces."""
        attributes: dict[str, str | int] = {"omni.job_kind": kind, "omni.jobs": len(jobs)}
        if len(jobs) == 1:
            token = otel_context.attach(propagate.extract(jobs[0].trace_context))
            try:
                with tracer.start_as_current_span(f"job {kind}", attributes=attributes) as span:
                    yield span
            finally:
                otel_context.detach(token)
            return
        links = []
        for job in jobs[:32]:
            context = trace.get_current_span(propagate.extract(job.trace_context)).get_span_context()
            if context.is_valid:
                links.append(trace.Link(context))
        with tracer.start_as_current_span(f"jobs {kind}", attributes=attributes, links=links) as span:
            yield span
