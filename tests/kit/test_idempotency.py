"""omni_kit.idempotency against a real PostgreSQL: answers replayed, reused keys refused, concurrent retries
done once, rolled-back work not remembered, old answers purged by a recurring job."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from omni.identity.v1 import identity_pb2
from omni.identity.v1.identity_pb2 import MergePersonsRequest as Request
from omni.identity.v1.identity_pb2 import MergePersonsResponse as Response
from omni_kit.bus import bus_metadata
from omni_kit.db import create_engine, session_factory
from omni_kit.embedded import EmbeddedNats
from omni_kit.errors import AlreadyExists, Violations
from omni_kit.idempotency import (
    KEY_REUSED_REASON,
    PURGE_JOB,
    RETENTION,
    check_request_id,
    ensure_same_request,
    fingerprint,
    forget_answers,
    idempotency_metadata,
    idempotency_table,
    idempotent,
    keep_answers_purged,
    purge_answers,
)
from omni_kit.runtime import Runtime
from omni_kit.scheduler import jobs_metadata, jobs_table
from omni_kit.settings import ServiceSettings


@pytest.fixture
async def engine(make_database: Callable[..., Any]) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(make_database("idem"), application_name="omni-test-idempotency")
    async with engine.begin() as connection:
        await connection.run_sync(idempotency_metadata.create_all)
        await connection.run_sync(jobs_metadata.create_all)
        await connection.run_sync(bus_metadata.create_all)
    yield engine
    await engine.dispose()


class Work:
    """The effect of a call: counts how often it ran and answers with that count."""

    def __init__(self) -> None:
        self.runs = 0

    async def __call__(self) -> Response:
        self.runs += 1
        return Response(person=identity_pb2.Person(id=f"answer-{self.runs}"))


def merge(request_id: str, reason: str = "same customer") -> Request:
    return Request(request_id=request_id, survivor_person_id="a", merged_person_id="b", reason=reason)


async def call(engine: AsyncEngine, request: Request, work: Work) -> Response:
    async with session_factory(engine).begin() as session:
        return await idempotent(session, "MergePersons", request.request_id, request, Response, work)


async def test_the_first_answer_is_replayed_without_doing_the_work_again(engine: AsyncEngine) -> None:
    work = Work()
    first = await call(engine, merge("k-1"), work)
    again = await call(engine, merge("k-1"), work)
    assert work.runs == 1
    assert again == first
    assert again.person.id == "answer-1"


async def test_the_same_key_with_other_content_is_refused(engine: AsyncEngine) -> None:
    work = Work()
    await call(engine, merge("k-1"), work)
    with pytest.raises(AlreadyExists) as refused:
        await call(engine, merge("k-1", reason="another reason"), work)
    assert refused.value.reason == KEY_REUSED_REASON
    assert refused.value.metadata["request_id"] == "k-1"
    assert work.runs == 1


async def test_keys_of_different_methods_do_not_meet(engine: AsyncEngine) -> None:
    work = Work()
    await call(engine, merge("k-1"), work)
    async with session_factory(engine).begin() as session:
        other = await idempotent(session, "UnmergePerson", "k-1", merge("k-1", "other"), Response, work)
    assert work.runs == 2
    assert other.person.id == "answer-2"


async def test_work_that_rolled_back_is_not_remembered(engine: AsyncEngine) -> None:
    work = Work()

    async def failing() -> Response:
        await work()
        raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        async with session_factory(engine).begin() as session:
            await idempotent(session, "MergePersons", "k-1", merge("k-1"), Response, failing)
    answer = await call(engine, merge("k-1"), work)
    assert work.runs == 2
    assert answer.person.id == "answer-2"


async def test_a_request_id_is_keyed_without_surrounding_white_space(engine: AsyncEngine) -> None:
    work = Work()
    first = await call(engine, merge("k-1"), work)
    again = await call(engine, merge(" k-1 "), work)
    assert work.runs == 1
    assert again == first


async def test_without_a_request_id_the_work_is_done_each_time(engine: AsyncEngine) -> None:
    work = Work()
    await call(engine, merge(""), work)
    await call(engine, merge(""), work)
    assert work.runs == 2
    async with engine.connect() as connection:
        assert (
            await connection.execute(sa.select(sa.func.count()).select_from(idempotency_table))
        ).scalar() == 0


async def test_a_concurrent_retry_waits_for_the_first_and_replays_its_answer(engine: AsyncEngine) -> None:
    work = Work()
    first_claimed = asyncio.Event()
    finish_first = asyncio.Event()

    async def slow() -> Response:
        first_claimed.set()
        await finish_first.wait()
        return await work()

    async def first() -> Response:
        async with session_factory(engine).begin() as session:
            return await idempotent(session, "MergePersons", "k-1", merge("k-1"), Response, slow)

    first_call = asyncio.create_task(first())
    await first_claimed.wait()
    retry = asyncio.create_task(call(engine, merge("k-1"), work))
    await asyncio.sleep(0.3)
    assert not retry.done(), "the retry must wait for the first call's transaction"
    finish_first.set()
    assert (await first_call) == (await retry)
    assert work.runs == 1


async def test_a_concurrent_retry_does_the_work_when_the_first_rolls_back(engine: AsyncEngine) -> None:
    work = Work()
    first_claimed = asyncio.Event()
    fail_first = asyncio.Event()

    async def failing() -> Response:
        first_claimed.set()
        await fail_first.wait()
        raise RuntimeError("the change failed")

    async def first() -> None:
        async with session_factory(engine).begin() as session:
            await idempotent(session, "MergePersons", "k-1", merge("k-1"), Response, failing)

    first_call = asyncio.create_task(first())
    await first_claimed.wait()
    retry = asyncio.create_task(call(engine, merge("k-1"), work))
    await asyncio.sleep(0.3)
    fail_first.set()
    with pytest.raises(RuntimeError):
        await first_call
    assert (await retry).person.id == "answer-1"
    assert work.runs == 1


def test_the_fingerprint_is_of_the_method_and_the_content() -> None:
    assert fingerprint("MergePersons", merge("k-1")) == fingerprint("MergePersons", merge("k-1"))
    assert fingerprint("MergePersons", merge("k-1")) != fingerprint("MergePersons", merge("k-1", "other"))
    assert fingerprint("MergePersons", merge("k-1")) != fingerprint("UnmergePerson", merge("k-1"))


async def test_a_shared_scope_refuses_one_request_id_for_two_methods(engine: AsyncEngine) -> None:
    work = Work()
    async with session_factory(engine).begin() as session:
        await idempotent(session, "merge", "k-1", merge("k-1"), Response, work, scope="operator")
    with pytest.raises(AlreadyExists):
        async with session_factory(engine).begin() as session:
            await idempotent(session, "forget", "k-1", merge("k-1"), Response, work, scope="operator")
    assert work.runs == 1


async def test_erasing_a_person_removes_the_answers_that_show_them(engine: AsyncEngine) -> None:
    shown, other = uuid.uuid4(), uuid.uuid4()
    work = Work()
    for request_id, person in (("k-1", shown), ("k-2", other)):

        def showing(_: Response, person: uuid.UUID = person) -> list[uuid.UUID]:
            return [person]

        async with session_factory(engine).begin() as session:
            await idempotent(
                session, "MergePersons", request_id, merge(request_id), Response, work, persons=showing
            )
    async with session_factory(engine).begin() as session:
        await forget_answers(session, [shown])
    async with AsyncSession(engine) as session:
        left = (await session.execute(sa.select(idempotency_table.c.request_id))).scalars().all()
    assert left == ["k-2"]


def test_request_ids_are_checked() -> None:
    violations = Violations()
    assert check_request_id("  k-1 ", violations) == "k-1"
    check_request_id("x" * 129, violations)
    check_request_id("k\x00", violations)
    check_request_id("k\x1f", violations)  # a control character str.strip() takes for a space
    check_request_id("k\n", violations)
    assert [v.field for v in violations.items] == ["request_id"] * 4


async def test_old_answers_are_purged(engine: AsyncEngine) -> None:
    work = Work()
    await call(engine, merge("old"), work)
    await call(engine, merge("new"), work)
    async with engine.begin() as connection:
        await connection.execute(
            idempotency_table.update()
            .where(idempotency_table.c.request_id == "old")
            .values(created_at=datetime.now(UTC) - timedelta(days=30))
        )
    async with session_factory(engine).begin() as session:
        assert await purge_answers(session, before=datetime.now(UTC) - timedelta(days=7)) == 1
    async with AsyncSession(engine) as session:
        left = (await session.execute(sa.select(idempotency_table.c.request_id))).scalars().all()
    assert left == ["new"]


def test_a_service_keeping_its_own_record_refuses_a_reused_key_the_same_way() -> None:
    ensure_same_request("k-1", b"same", b"same")
    with pytest.raises(AlreadyExists) as refused:
        ensure_same_request("k-1", "stored", "other", used_for="message m-1", message_id="m-1")
    assert refused.value.reason == KEY_REUSED_REASON
    assert refused.value.metadata == {"request_id": "k-1", "message_id": "m-1"}
    assert "message m-1" in refused.value.message


async def _ages(engine: AsyncEngine, request_id: str, age: timedelta) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            idempotency_table.update()
            .where(idempotency_table.c.request_id == request_id)
            .values(created_at=datetime.now(UTC) - age)
        )


async def test_the_recurring_purge_forgets_answers_past_the_retention_and_comes_back(
    engine: AsyncEngine, nats_server: EmbeddedNats
) -> None:
    work = Work()
    await call(engine, merge("old"), work)
    await call(engine, merge("recent"), work)
    await _ages(engine, "old", RETENTION + timedelta(minutes=1))
    await _ages(engine, "recent", RETENTION - timedelta(minutes=1))
    every = timedelta(minutes=10)
    settings = ServiceSettings(
        database_url=engine.url.render_as_string(hide_password=False),
        nats_url=nats_server.url,
        event_namespace="t" + uuid.uuid4().hex[:10],
    )
    runtime, replica = Runtime("purging", settings), Runtime("replica", settings)
    try:
        for service in (runtime, replica):
            await service.open()
            await keep_answers_purged(service, every=every)  # a second replica asking makes no second job
        assert await runtime.jobs.run_until_idle() == 1
    finally:
        await runtime.close()
        await replica.close()

    async with AsyncSession(engine) as session:
        left = (await session.execute(sa.select(idempotency_table.c.request_id))).scalars().all()
        jobs = (await session.execute(sa.select(jobs_table.c.kind, jobs_table.c.due_at))).all()
        now = (await session.execute(sa.select(sa.func.now()))).scalar_one()
    assert left == ["recent"]
    [(kind, due_at)] = jobs
    assert kind == PURGE_JOB
    assert every - timedelta(seconds=30) < due_at - now <= every
