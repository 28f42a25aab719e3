"""What every service's idempotency tests check the same way: the answers stored by request id (omni_kit's
idempotency_keys), the recurring purge of old ones, and that an erasure removes those showing a person."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import grpc
import sqlalchemy as sa

from omni_kit.errors import status_details
from omni_kit.idempotency import KEY_REUSED_REASON, PURGE_JOB, RETENTION, idempotency_table
from omni_kit.runtime import Runtime


async def stored_answers(runtime: Runtime, request_id: str) -> list[Any]:
    """The stored answers of a request id in the service's database: (scope, person_ids, answered) rows."""
    async with runtime.engine.connect() as connection:
        result = await connection.execute(
            sa.text(
                "SELECT scope, person_ids, response IS NOT NULL AS answered FROM idempotency_keys "
                "WHERE request_id = :r"
            ),
            {"r": request_id},
        )
        return list(result.all())


def assert_key_reused(error: grpc.aio.AioRpcError, request_id: str) -> None:
    """The refusal of a request id sent again with other content."""
    details = status_details(error)
    assert details.code == grpc.StatusCode.ALREADY_EXISTS, details
    assert details.error_info is not None and details.error_info.reason == KEY_REUSED_REASON
    assert details.error_info.metadata["request_id"] == request_id


async def purge_aged(runtime: Runtime, request_id: str, timeout_s: float = 10.0) -> None:
    """Age a request id's stored answer past the retention, make the service's purge job due and wait until
    the service's own job worker has removed the answer."""
    async with runtime.engine.begin() as connection:
        aged = await connection.execute(
            sa.text(
                "UPDATE idempotency_keys SET created_at = now() - CAST(:age AS interval) WHERE request_id = :r"
            ),
            {"age": RETENTION + timedelta(minutes=1), "r": request_id},
        )
        assert aged.rowcount == 1  # type: ignore[attr-defined]
        due = await connection.execute(
            sa.text("UPDATE scheduled_jobs SET due_at = now() WHERE kind = :kind"), {"kind": PURGE_JOB}
        )
        assert due.rowcount == 1, "the service schedules one purge job"  # type: ignore[attr-defined]
    runtime.jobs.wake()
    await until(lambda: _none_stored(runtime, request_id), timeout_s)


async def forget_shown_answers(
    runtime: Runtime, forget: Callable[[str], Awaitable[object]], timeout_s: float = 10.0
) -> None:
    """Store an answer showing a new person and one showing another, let `forget(person_id)` erase the first
    person through the service's own consumer, and check that only the first answer is gone."""
    shown, other = uuid.uuid4(), uuid.uuid4()
    async with runtime.engine.begin() as connection:
        for person in (shown, other):
            await connection.execute(
                idempotency_table.insert().values(
                    scope="test",
                    request_id=f"shows-{person}",
                    fingerprint=b"",
                    response=b"",
                    person_ids=[person],
                )
            )
    await forget(str(shown))
    await until(lambda: _none_stored(runtime, f"shows-{shown}"), timeout_s)
    assert len(await stored_answers(runtime, f"shows-{other}")) == 1


async def until(check: Callable[[], Awaitable[object]], timeout_s: float = 10.0) -> None:
    """Poll check until it returns something truthy; AssertionError after the timeout."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        if await check():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not so after {timeout_s} s")
        await asyncio.sleep(0.05)


async def _none_stored(runtime: Runtime, request_id: str) -> bool:
    return not await stored_answers(runtime, request_id)
