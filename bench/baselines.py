"""Baselines measured in the same run: a bare gRPC echo server, raw COPY, raw database round-trips.

Each is the cheapest honest way to do the same work without Omni: the service's figure divided by the
baseline's says how much of the machine's possible the service reaches, which survives a noisy machine
better than the raw figure. Results are cached in the context, so suites measuring at the same rate share
one measurement.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from bench.context import BenchContext, Database, cpu_sample, cpu_usage
from bench.echo import echo_callable
from bench.load import LatencyRun, ThroughputRun, closed_loop, open_loop
from bench.workloads import Identifier, IdentifierSets

ECHO_PAYLOAD = b"x" * 128
"""About the size of a single resolve or decide request."""

EVENTS_DDL = """
CREATE TABLE events (
    id text PRIMARY KEY,
    person_id uuid NOT NULL,
    type text NOT NULL,
    channel text,
    occurred_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    identifiers jsonb NOT NULL,
    properties jsonb NOT NULL,
    cart_item jsonb
);
CREATE INDEX events_timeline ON events (person_id, occurred_at DESC, id DESC);
"""
EVENT_COLUMNS = (
    "id",
    "person_id",
    "type",
    "channel",
    "occurred_at",
    "received_at",
    "identifiers",
    "properties",
    "cart_item",
)

IDENTITY_DDL = """
CREATE TABLE persons (
    id uuid PRIMARY KEY,
    created_at timestamptz NOT NULL,
    merged_into uuid REFERENCES persons (id)
);
CREATE TABLE identifiers (
    type text NOT NULL,
    value text NOT NULL,
    person_id uuid NOT NULL REFERENCES persons (id),
    source text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL,
    PRIMARY KEY (type, value)
);
CREATE INDEX identifiers_person_id ON identifiers (person_id);
"""

# One statement looks up every identifier of a batch; one inserts the new persons and their identifiers.
_LOOKUP = """
SELECT i.type, i.value, i.person_id
FROM identifiers i
JOIN unnest($1::text[], $2::text[]) AS q(type, value) ON i.type = q.type AND i.value = q.value
"""
_INSERT = """
WITH new_persons AS (
    INSERT INTO persons (id, created_at) SELECT unnest($1::uuid[]), $5
)
INSERT INTO identifiers (type, value, person_id, source, created_at)
SELECT t, v, p, 'bench', $5 FROM unnest($2::text[], $3::text[], $4::uuid[]) AS x(t, v, p)
ON CONFLICT (type, value) DO NOTHING
"""


# -- gRPC ----------------------------------------------------------------------------------------------


async def echo_latency(ctx: BenchContext, rate: float) -> LatencyRun:
    """The echo server's latency at an open-loop ``rate`` for the latency duration (cached per rate)."""
    key = f"echo_latency_{rate:g}"
    if key not in ctx.cache:
        async with ctx.service("echo", {}) as echo, ctx.channel(echo.target) as channel:
            call = echo_callable(channel)
            await _warm(lambda: call(ECHO_PAYLOAD, timeout=5.0))
            before = cpu_sample(ctx, {"echo": echo})
            run = await open_loop(
                lambda _: call(ECHO_PAYLOAD, timeout=5.0), rate=rate, duration_s=ctx.durations.latency
            )
            run.cpu_cores = cpu_usage(before, cpu_sample(ctx, {"echo": echo}))
            ctx.cache[key] = run
    cached: LatencyRun = ctx.cache[key]
    return cached


async def echo_throughput(ctx: BenchContext, concurrency: int) -> ThroughputRun:
    """Echo calls per second with ``concurrency`` callers back to back (cached per concurrency)."""
    key = f"echo_throughput_{concurrency}"
    if key not in ctx.cache:
        async with ctx.service("echo", {}) as echo, ctx.channel(echo.target) as channel:
            call = echo_callable(channel)

            async def one(_: int) -> int:
                await call(ECHO_PAYLOAD, timeout=5.0)
                return 1

            before = cpu_sample(ctx, {"echo": echo})
            throughput = await closed_loop(
                one,
                concurrency=concurrency,
                duration_s=ctx.durations.throughput / 2,
                warmup_s=ctx.durations.warmup,
            )
            throughput.cpu_cores = cpu_usage(before, cpu_sample(ctx, {"echo": echo}))
            ctx.cache[key] = throughput
    cached: ThroughputRun = ctx.cache[key]
    return cached


async def _warm(call: Callable[[], Any], count: int = 200) -> None:
    for _ in range(count):
        await call()


# -- COPY ----------------------------------------------------------------------------------------------


async def copy_rows(
    database: Database,
    *,
    ddl: str,
    table: str,
    columns: tuple[str, ...],
    make_rows: Callable[[int], list[tuple[Any, ...]]],
    batch_size: int,
    concurrency: int,
    duration_s: float,
) -> ThroughputRun:
    """COPY batches of ``make_rows(batch_size)`` into ``table`` from ``concurrency`` connections.

    Each batch is one COPY in its own transaction, the shape of one service call; rows per second.
    """
    connections = [await asyncpg.connect(database.dsn) for _ in range(concurrency)]
    try:
        await connections[0].execute(ddl)

        async def one(caller: int) -> int:
            rows = make_rows(batch_size)
            await connections[caller].copy_records_to_table(table, records=rows, columns=columns)
            return len(rows)

        return await closed_loop(one, concurrency=concurrency, duration_s=duration_s, warmup_s=0.5)
    finally:
        for connection in connections:
            await connection.close()


async def copy_identity_rows(
    database: Database, *, seed: int, batch_size: int, concurrency: int, duration_s: float
) -> ThroughputRun:
    """COPY new persons and their identifiers (sets of the same mix, all treated as new); sets per second."""
    sets = IdentifierSets(seed, new_share=1.0)
    connections = [await asyncpg.connect(database.dsn) for _ in range(concurrency)]
    try:
        await connections[0].execute(IDENTITY_DDL)

        async def one(caller: int) -> int:
            now = datetime.now(UTC)
            persons: list[tuple[Any, ...]] = []
            identifiers: list[tuple[Any, ...]] = []
            for identifier_set in sets.batch(batch_size):
                person_id = uuid.uuid4()
                persons.append((person_id, now))
                identifiers.extend((t, v, person_id, "bench", now) for t, v in identifier_set)
            connection = connections[caller]
            async with connection.transaction():
                await connection.copy_records_to_table(
                    "persons", records=persons, columns=("id", "created_at")
                )
                await connection.copy_records_to_table(
                    "identifiers",
                    records=identifiers,
                    columns=("type", "value", "person_id", "source", "created_at"),
                )
            return batch_size

        return await closed_loop(one, concurrency=concurrency, duration_s=duration_s, warmup_s=0.5)
    finally:
        for connection in connections:
            await connection.close()


# -- resolve-like round-trips ---------------------------------------------------------------------------


async def _resolve_like(connection: asyncpg.Connection, sets: list[list[Identifier]]) -> None:
    """Look up a batch's identifiers, then insert new persons and new identifiers: no merges, no events."""
    types = [t for identifier_set in sets for t, _ in identifier_set]
    values = [v for identifier_set in sets for _, v in identifier_set]
    async with connection.transaction():
        found = {
            (r["type"], r["value"]): r["person_id"] for r in await connection.fetch(_LOOKUP, types, values)
        }
        new_persons: list[uuid.UUID] = []
        rows: list[tuple[str, str, uuid.UUID]] = []
        for identifier_set in sets:
            person = next((found[i] for i in identifier_set if i in found), None)
            if person is None:
                person = uuid.uuid4()
                new_persons.append(person)
            for identifier in identifier_set:
                if identifier not in found:
                    found[identifier] = person
                    rows.append((identifier[0], identifier[1], person))
        # Inserting keys in one global order keeps concurrent batches over the same new keys from deadlocking.
        rows.sort()
        await connection.execute(
            _INSERT,
            new_persons,
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            datetime.now(UTC),
        )


async def raw_resolve_throughput(
    database: Database, *, seed: int, batch_size: int, concurrency: int, duration_s: float, warmup_s: float
) -> ThroughputRun:
    """The database work of batch resolve, done directly: identifier sets per second."""
    sets = IdentifierSets(seed)
    pool = await asyncpg.create_pool(database.dsn, min_size=concurrency, max_size=concurrency)
    try:
        async with pool.acquire() as connection:
            await connection.execute(IDENTITY_DDL)

        async def one(_: int) -> int:
            batch = sets.batch(batch_size)
            async with pool.acquire() as connection:
                await _resolve_like(connection, batch)
            return batch_size

        return await closed_loop(one, concurrency=concurrency, duration_s=duration_s, warmup_s=warmup_s)
    finally:
        await pool.close()


async def raw_resolve_latency(
    database: Database, *, seed: int, rate: float, duration_s: float, pool_size: int = 10
) -> LatencyRun:
    """The database work of one resolve, done directly at an open-loop rate (pool like the service's)."""
    sets = IdentifierSets(seed)
    pool = await asyncpg.create_pool(database.dsn, min_size=pool_size, max_size=pool_size)
    try:
        async with pool.acquire() as connection:
            await connection.execute(IDENTITY_DDL)

        async def one(_: int) -> None:
            batch = [sets.next_set()]
            async with pool.acquire(timeout=5.0) as connection:
                await _resolve_like(connection, batch)

        for _ in range(200):
            await one(0)
        return await open_loop(one, rate=rate, duration_s=duration_s)
    finally:
        await pool.close()
