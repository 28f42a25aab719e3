"""The durable scheduler on real PostgreSQL: scheduling in the caller's transaction, one job per kind and key,
claims that two workers never share, leases that run out, backoff, and effects committed with completion."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from omni.events.v1 import envelope_pb2
from omni.identity.v1 import events_pb2
from omni_kit.bus import EventConsumer, Outbox, events_stream, subject_for
from omni_kit.db import create_engine, session_factory
from omni_kit.scheduler import (
    Backoff,
    Job,
    JobHandler,
    JobWorker,
    Transaction,
    cancel,
    jobs_table,
    schedule,
    schedule_many,
    scheduled_due,
)

from .support import notes

KIND = "test.note"


def transaction_of(engine: AsyncEngine, worker: JobWorker | None = None) -> Transaction:
    """A transaction factory like Runtime.transaction: commits, then tells the worker what it scheduled."""
    sessions = session_factory(engine)

    @contextlib.asynccontextmanager
    async def transaction() -> AsyncIterator[AsyncSession]:
        async with sessions() as session, session.begin():
            yield session
            due = scheduled_due(session)
        if worker is not None and due is not None:
            worker.notify(due)

    return transaction


async def write_notes(session: AsyncSession, jobs: Sequence[Job]) -> None:
    """The effect of a job: a note naming it."""
    await session.execute(notes.insert(), [{"text": job.key} for job in jobs])


async def note_counts(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as connection:
        rows = await connection.execute(sa.select(notes.c.text, sa.func.count()).group_by(notes.c.text))
        return {row[0]: row[1] for row in rows}


async def job_rows(engine: AsyncEngine) -> dict[str, sa.Row[tuple[object, ...]]]:
    async with engine.connect() as connection:
        return {row.key: row for row in await connection.execute(sa.select(jobs_table))}


def worker_on(engine: AsyncEngine, handler: JobHandler = write_notes, **options: Any) -> JobWorker:
    worker = JobWorker(transaction_of(engine), poll_interval_s=0.05)
    worker.register(KIND, handler, **options)
    return worker


async def test_a_job_is_scheduled_only_if_its_transaction_commits(engine: AsyncEngine) -> None:
    sessions = session_factory(engine)
    with pytest.raises(RuntimeError):
        async with sessions() as session, session.begin():
            await schedule(session, KIND, "rolled-back")
            raise RuntimeError("the state change failed")
    async with sessions() as session, session.begin():
        assert await schedule(session, KIND, "committed", payload={"n": 1})
    assert set(await job_rows(engine)) == {"committed"}
    assert await worker_on(engine).run_until_idle() == 1
    assert await note_counts(engine) == {"committed": 1}
    assert await job_rows(engine) == {}


async def test_a_job_scheduled_twice_with_the_same_key_is_one_job(engine: AsyncEngine) -> None:
    sessions = session_factory(engine)
    soon = datetime.now(UTC) - timedelta(seconds=1)
    async with sessions() as session, session.begin():
        assert await schedule(session, KIND, "once", soon, {"first": True})
    async with sessions() as session, session.begin():
        assert not await schedule(session, KIND, "once", soon + timedelta(hours=1), {"second": True})
        assert await schedule_many(session, KIND, {"once": soon, "other": timedelta(hours=1)}) == ["other"]
    rows = await job_rows(engine)
    assert rows["once"].payload == {"first": True} and rows["once"].due_at == soon

    async with sessions() as session, session.begin():
        assert await schedule(session, KIND, "other", soon, {"moved": True}, replace=True)
    assert (await job_rows(engine))["other"].payload == {"moved": True}

    seen: list[Job] = []

    async def handler(session: AsyncSession, jobs: Sequence[Job]) -> None:
        seen.extend(jobs)
        await write_notes(session, jobs)

    assert await worker_on(engine, handler).run_until_idle() == 2
    assert await note_counts(engine) == {"once": 1, "other": 1}
    assert {job.key: job.payload for job in seen} == {"once": {"first": True}, "other": {"moved": True}}
    assert all(job.attempt == 1 for job in seen)


async def test_a_job_due_later_waits_and_a_cancelled_job_never_runs(engine: AsyncEngine) -> None:
    sessions = session_factory(engine)
    async with sessions() as session, session.begin():
        await schedule(session, KIND, "later", timedelta(hours=1))
        await schedule_many(session, KIND, {"cancelled": None, "now": None})
    async with sessions() as session, session.begin():
        assert await cancel(session, KIND, ["cancelled", "never-scheduled"]) == 1
    worker = worker_on(engine)
    assert await worker.run_until_idle() == 1
    assert await note_counts(engine) == {"now": 1}
    assert set(await job_rows(engine)) == {"later"}


async def test_two_workers_never_run_the_same_job(engine: AsyncEngine, make_database: object) -> None:
    keys = [f"job-{n}" for n in range(600)]
    async with session_factory(engine)() as session, session.begin():
        await schedule_many(session, KIND, dict.fromkeys(keys))

    async def slow_notes(session: AsyncSession, jobs: Sequence[Job]) -> None:
        await write_notes(session, jobs)
        await asyncio.sleep(0.01)  # let the other worker claim meanwhile

    # Each worker on an engine (a pool) of its own, as two processes would be.
    other_engine = create_engine(engine.url.render_as_string(hide_password=False), application_name="other")
    try:
        first = worker_on(engine, slow_notes, batch_size=25)
        second = worker_on(other_engine, slow_notes, batch_size=25)
        ran = await asyncio.gather(first.run_until_idle(), second.run_until_idle())
    finally:
        await other_engine.dispose()

    assert sum(ran) == len(keys)
    assert all(count > 0 for count in ran), f"both workers took a share: {ran}"
    counts = await note_counts(engine)
    assert set(counts) == set(keys)
    assert set(counts.values()) == {1}
    assert await job_rows(engine) == {}


async def test_a_job_whose_lease_runs_out_is_run_again_and_the_late_run_counts_nothing(
    engine: AsyncEngine,
) -> None:
    async with session_factory(engine)() as session, session.begin():
        await schedule(session, KIND, "stalled")
    crashed = worker_on(engine, lease=timedelta(seconds=0.5))
    jobs, claim = await crashed.claim(KIND)  # claimed, then the worker "dies" before running it
    assert [job.key for job in jobs] == ["stalled"]

    other = worker_on(engine)
    assert await other.run_due() == 0, "a claimed job is not run while its lease lasts"
    await asyncio.sleep(0.6)
    seen: list[Job] = []

    async def handler(session: AsyncSession, taken: Sequence[Job]) -> None:
        seen.extend(taken)
        await write_notes(session, taken)

    retaken = worker_on(engine, handler)
    retaken_jobs, retaken_claim = await retaken.claim(KIND)
    assert [(job.key, job.attempt) for job in retaken_jobs] == [("stalled", 2)]

    # The first worker wakes up and runs what it claimed: its effect is rolled back, not counted.
    await crashed.run_claimed(KIND, claim, jobs)
    assert await note_counts(engine) == {}
    assert (await job_rows(engine))["stalled"].claim == retaken_claim

    await retaken.run_claimed(KIND, retaken_claim, retaken_jobs)
    assert await note_counts(engine) == {"stalled": 1}
    assert await job_rows(engine) == {}


async def test_a_failing_job_backs_off_and_is_parked_after_its_last_attempt(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    async with session_factory(engine)() as session, session.begin():
        await schedule_many(session, KIND, {"good": None, "bad": None})

    async def handler(session: AsyncSession, jobs: Sequence[Job]) -> None:
        await write_notes(session, jobs)
        if any(job.key == "bad" for job in jobs):
            raise ValueError("cannot do bad")

    worker = worker_on(engine, handler, max_attempts=3, backoff=Backoff(first_s=0.3, max_s=10))
    delays = []
    for attempt in (1, 2):
        before = datetime.now(UTC)
        await worker.run_due()
        bad = (await job_rows(engine))["bad"]
        assert bad.attempts == attempt and "cannot do bad" in bad.last_error and bad.claim is None
        delays.append((bad.due_at - before).total_seconds())
        assert await worker.run_due() == 0, "not due again before its backoff"
        await asyncio.sleep(bad.due_at.timestamp() - datetime.now(UTC).timestamp() + 0.05)
    assert 0.3 <= delays[0] < 0.3 + 0.5
    assert 0.6 <= delays[1] < 0.6 + 0.5, "the wait doubles"
    # The batch both were in failed; the good one ran on its own and committed.
    assert (await note_counts(engine)) == {"good": 1}

    with caplog.at_level(logging.ERROR, logger="omni_kit.scheduler.worker"):
        await worker.run_due()
    parked = (await job_rows(engine))["bad"]
    assert parked.due_at is None and parked.failed_at is not None and parked.attempts == 3
    assert worker.failed == 1 and worker.retried == 2
    assert any("given up" in record.getMessage() for record in caplog.records)
    assert await worker.run_due() == 0
    assert await note_counts(engine) == {"good": 1}, "no effect of the failed runs was committed"


async def test_a_job_its_handler_schedules_again_stays_at_its_new_time(engine: AsyncEngine) -> None:
    async with session_factory(engine)() as session, session.begin():
        await schedule(session, KIND, "recurring", payload={"round": 1})

    async def again(session: AsyncSession, jobs: Sequence[Job]) -> None:
        await write_notes(session, jobs)
        for job in jobs:
            round_ = job.payload["round"] + 1
            await schedule(session, KIND, job.key, timedelta(hours=1), {"round": round_}, replace=True)

    assert await worker_on(engine, again).run_until_idle() == 1
    row = (await job_rows(engine))["recurring"]
    assert row.payload == {"round": 2} and row.attempts == 0 and row.claim is None
    assert row.due_at > datetime.now(UTC) + timedelta(minutes=59)


async def test_the_loop_runs_a_job_when_it_falls_due(engine: AsyncEngine) -> None:
    ran: list[datetime] = []
    done = asyncio.Event()

    async def record(session: AsyncSession, jobs: Sequence[Job]) -> None:
        ran.append(datetime.now(UTC))
        done.set()

    worker = JobWorker(transaction_of(engine), poll_interval_s=5.0)
    worker.register(KIND, record)
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(0.2)  # the loop sleeps: nothing is due
        due = datetime.now(UTC) + timedelta(seconds=0.3)
        async with transaction_of(engine, worker)() as session:
            await schedule(session, KIND, "timer", due)
        await asyncio.wait_for(done.wait(), 3)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 5)
    lateness = (ran[0] - due).total_seconds()
    assert 0 <= lateness < 0.5, f"run {lateness:.3f}s after due though the poll interval is 5s"


async def test_a_consumer_that_schedules_a_job_wakes_the_worker(
    engine: AsyncEngine, js: tuple[JetStreamContext, str]
) -> None:
    context, namespace = js
    ran = asyncio.Event()

    async def run(session: AsyncSession, jobs: Sequence[Job]) -> None:
        ran.set()

    worker = JobWorker(transaction_of(engine), poll_interval_s=30.0)
    worker.register(KIND, run)

    async def handler(session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        await schedule(session, KIND, envelope.id)

    subject = subject_for("identity.person_created", namespace)
    consumer = EventConsumer(
        context,
        session_factory(engine),
        durable="test-schedules",
        stream=events_stream(namespace),
        subjects=[subject],
        handler=handler,
        on_scheduled=worker.notify,
    )
    await consumer.start()
    tasks = [asyncio.create_task(consumer.run()), asyncio.create_task(worker.run())]
    try:
        await asyncio.sleep(0.2)  # the worker sleeps for its 30 s poll interval
        envelope = Outbox("identity").envelope(
            events_pb2.PersonCreatedEvent(person_id="p-1"), event_type="identity.person_created"
        )
        await context.publish(subject, envelope.SerializeToString(), headers={"Nats-Msg-Id": envelope.id})
        await asyncio.wait_for(ran.wait(), 5)
    finally:
        consumer.stop()
        worker.stop()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)


async def _claimed(engine: AsyncEngine) -> dict[str, int]:
    """Key → attempts of the jobs a run holds."""
    return {key: int(row.attempts) for key, row in (await job_rows(engine)).items() if row.claim is not None}


@pytest.mark.parametrize("how", ["stopped", "cancelled"])
async def test_the_batch_claimed_ahead_runs_when_the_worker_stops_and_is_given_back_when_it_is_cancelled(
    engine: AsyncEngine, how: str
) -> None:
    release = asyncio.Event()
    ran: list[str] = []

    async def slow_first(session: AsyncSession, jobs: Sequence[Job]) -> None:
        if not ran:
            await release.wait()
        ran.extend(job.key for job in jobs)
        await write_notes(session, jobs)

    async with transaction_of(engine)() as session:
        await schedule_many(session, KIND, {f"n{i}": None for i in range(5)})
    worker = worker_on(engine, slow_first, batch_size=2)
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(5):
            while len(await _claimed(engine)) < 4:  # noqa: ASYNC110 - polling the database
                await asyncio.sleep(0.02)  # the first batch runs, the next one is claimed ahead
        if how == "stopped":
            worker.stop()
            release.set()
            await asyncio.wait_for(task, 5)
            # Both batches in hand ran; the fifth job waits for the next worker.
            assert len(ran) == 4 and len(await note_counts(engine)) == 4
            assert await _claimed(engine) == {}
        else:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            # The run cut short keeps its lease (it may have had an effect outside); the batch claimed
            # ahead is due again at once, its attempt not counted.
            rows = await job_rows(engine)
            held = await _claimed(engine)
            assert len(held) == 2 and set(held.values()) == {1}
            given_back = [row for key, row in rows.items() if key not in held]
            assert len(given_back) == 3
            assert all(row.attempts == 0 and row.due_at <= datetime.now(UTC) for row in given_back)
    finally:
        release.set()
        worker.stop()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_kind_whose_runs_take_long_is_not_claimed_ahead(engine: AsyncEngine) -> None:
    release = asyncio.Event()
    runs = 0

    async def slow_second(session: AsyncSession, jobs: Sequence[Job]) -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            await asyncio.sleep(0.3)  # longer than a quarter of the lease
        else:
            await release.wait()
        await write_notes(session, jobs)

    async with transaction_of(engine)() as session:
        await schedule_many(session, KIND, {f"n{i}": None for i in range(6)})
    worker = worker_on(engine, slow_second, batch_size=2, lease=timedelta(seconds=1))
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(5):
            while runs < 2:  # noqa: ASYNC110 - polling the handler
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        # The second batch was claimed ahead while the first (then of unknown length) ran; after a long
        # run nothing more is claimed ahead, so its lease would not run down while it waits.
        assert len(await _claimed(engine)) == 2
    finally:
        release.set()
        worker.stop()
        await asyncio.wait_for(task, 5)
