"""Running a transaction again when PostgreSQL aborted it for a concurrent one, and telling an unreachable
database from a wrong statement; against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
import sqlalchemy.exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from omni_kit.db import create_engine, database_unavailable, retry_transaction
from omni_kit.embedded import free_port
from omni_kit.errors import Aborted, Unavailable


@pytest.fixture
async def engine(make_database: Callable[..., str]) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(make_database("retry"), application_name="omni-test-retry")
    async with engine.begin() as connection:
        await connection.execute(
            text("CREATE TABLE shifts (doctor text PRIMARY KEY, on_call boolean NOT NULL)")
        )
        await connection.execute(text("INSERT INTO shifts VALUES ('alice', true), ('bob', true)"))
    yield engine
    await engine.dispose()


async def test_a_serialization_failure_is_run_again_until_it_commits(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    # Write skew: each takes one doctor off call if another is still on call. Run serializably at the same
    # time, PostgreSQL fails one of them (40001); run again, it sees the other's change and keeps its doctor.
    caplog.set_level(logging.WARNING, logger="omni_kit.db")
    both_read = asyncio.Barrier(2)
    runs: list[str] = []

    async def go_off_call(doctor: str) -> bool:
        first = doctor not in runs
        runs.append(doctor)
        async with engine.connect() as connection:
            await connection.execution_options(isolation_level="SERIALIZABLE")
            async with connection.begin():
                on_call = await connection.scalar(text("SELECT count(*) FROM shifts WHERE on_call"))
                if first:
                    await both_read.wait()
                if on_call < 2:
                    return False
                await connection.execute(
                    text("UPDATE shifts SET on_call = false WHERE doctor = :doctor"), {"doctor": doctor}
                )
        return True

    results = await asyncio.gather(
        *(retry_transaction(lambda d=d: go_off_call(d), name="shift change") for d in ("alice", "bob"))  # type: ignore[misc]
    )
    assert sorted(results) == [False, True]
    assert len(runs) == 3
    async with engine.connect() as connection:
        assert await connection.scalar(text("SELECT count(*) FROM shifts WHERE on_call")) == 1
    aborted = [
        r for r in caplog.records if "shift change: the database aborted the transaction" in r.getMessage()
    ]
    assert len(aborted) == 1 and "40001" in aborted[0].getMessage()


class Overtaken(Exception):
    """A caller's own kind of conflict."""


async def test_a_conflict_that_persists_ends_in_the_callers_error_after_the_attempts() -> None:
    calls = 0

    async def overtaken() -> None:
        nonlocal calls
        calls += 1
        raise Overtaken("moved meanwhile")

    with pytest.raises(Aborted, match="conflicted with concurrent work 4 times"):
        await retry_transaction(overtaken, name="moving", attempts=4, conflicts=(Overtaken,))
    assert calls == 4

    calls = 0
    with pytest.raises(Unavailable):
        await retry_transaction(
            overtaken,
            name="moving",
            attempts=2,
            conflicts=(Overtaken,),
            exhausted=lambda error: Unavailable(message=f"busy: {error}"),
        )
    assert calls == 2


async def test_other_errors_are_raised_at_once(engine: AsyncEngine) -> None:
    calls = 0

    async def duplicate() -> None:
        nonlocal calls
        calls += 1
        async with engine.begin() as connection:
            await connection.execute(text("INSERT INTO shifts VALUES ('alice', false)"))

    with pytest.raises(sqlalchemy.exc.IntegrityError):
        await retry_transaction(duplicate, name="hiring")
    assert calls == 1
    # A caller whose locks make a unique violation a race may retry it too.
    with pytest.raises(Aborted):
        await retry_transaction(duplicate, name="hiring", attempts=2, sqlstates={"23505"})
    assert calls == 3


async def test_an_unreachable_database_is_told_from_a_wrong_statement(engine: AsyncEngine) -> None:
    errors: list[Any] = []
    nowhere = create_engine(
        f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none", application_name="omni-test-nowhere"
    )
    try:
        async with nowhere.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as error:
        errors.append(error)
    finally:
        await nowhere.dispose()
    assert len(errors) == 1 and database_unavailable(errors[0])

    with pytest.raises(sqlalchemy.exc.DBAPIError) as wrong:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT * FROM no_such_table"))
    assert not database_unavailable(wrong.value)

    # The server ending a session (as on shutdown) is being unavailable, not a bad statement.
    async with engine.connect() as victim:
        pid = await victim.scalar(text("SELECT pg_backend_pid()"))
        async with engine.connect() as admin:
            await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(sqlalchemy.exc.DBAPIError) as cut:
            await victim.execute(text("SELECT 1"))
    assert database_unavailable(cut.value)

    # The same on a connection of the driver's own (identity's graph statements), used after the cut.
    async with engine.connect() as victim:
        raw = (await victim.get_raw_connection()).driver_connection
        assert raw is not None
        closed_by_server = asyncio.Event()
        raw.add_termination_listener(lambda connection: closed_by_server.set())
        async with engine.connect() as admin:
            await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": raw.get_server_pid()})
        await asyncio.wait_for(closed_by_server.wait(), 5)  # the driver noticed the server's goodbye
        with pytest.raises(asyncpg.InterfaceError, match="connection is closed") as closed:
            await raw.fetchval("SELECT 1")
        assert database_unavailable(closed.value)
        await victim.invalidate()
