"""Profile: sustained end-to-end ingestion (resolve through identity + store + cart + outbox), against COPY.

Identity and profile each run in their own process, on fresh databases, sharing one event namespace as in a
deployment. Several callers send BatchTrackEvents back to back. Afterwards the profile database is read
(read-only) for what matters behind the acknowledgement: events stored, and outbox rows not yet published.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from bench import baselines
from bench.context import BenchContext, Database, cpu_sample, cpu_usage, log
from bench.load import closed_loop
from bench.results import Baseline, Result, Target
from bench.workloads import ShopEvents, check_wire
from omni.profile.v1 import profile_pb2

SUITE = "profile_ingest"
CALLERS = 4
BATCH_MIN, BATCH_MAX = 500, 1000
SEED = 21
METHOD = "/omni.profile.v1.ProfileService/BatchTrackEvents"


async def run(ctx: BenchContext) -> list[Result]:
    """Measure ingestion, watch the outbox drain, then measure raw COPY of the same rows."""
    d = ctx.durations
    namespace = ctx.namespace()
    identity_db = ctx.make_database("bench_ingest_identity")
    profile_db = ctx.make_database("bench_ingest_profile")
    events = ShopEvents(SEED)
    check_wire(events.batch_wire(5), 5)
    rng = random.Random(SEED)
    details: dict[str, Any] = {}
    async with ctx.service("identity", ctx.service_settings(identity_db, namespace)) as identity:
        profile_settings = ctx.service_settings(profile_db, namespace, identity_target=identity.target)
        async with (
            ctx.service("profile", profile_settings) as profile,
            ctx.channel(profile.target) as channel,
        ):
            track = channel.unary_unary(
                METHOD, response_deserializer=profile_pb2.BatchTrackEventsResponse.FromString
            )
            duplicates = 0

            async def call(_: int) -> int:
                nonlocal duplicates
                size = rng.randint(BATCH_MIN, BATCH_MAX)
                response = await track(events.batch_wire(size), timeout=60.0)
                if len(response.results) != size:
                    raise RuntimeError(f"{len(response.results)} results for {size} events")
                duplicates += sum(1 for r in response.results if r.duplicate)
                return size

            children = {"identity": identity, "profile": profile}
            before = cpu_sample(ctx, children)
            graph_before, loop_started = await _graph(ctx, identity_db), time.monotonic()
            ingest = await closed_loop(call, concurrency=CALLERS, duration_s=d.ingest, warmup_s=d.warmup)
            cpu = cpu_usage(before, cpu_sample(ctx, children))
            loop_s = time.monotonic() - loop_started
            graph = {
                f"identity {name} per s": round((after - graph_before[name]) / loop_s)
                for name, after in (await _graph(ctx, identity_db)).items()
            }
            log(
                f"ingest: {ingest.per_second:,.0f} events/s {ingest.summary()['errors'] or ''} cpu {cpu} {graph}"
            )
            details |= ingest.summary() | {"duplicates_answered": duplicates, "cpu_cores": cpu} | graph
            details |= await _outbox_after_load(
                ctx, profile_db, identity_db, drain_s=5.0 if ctx.quick else 30.0
            )
            log(f"outbox after load: {details['outbox']}")

    copy = await baselines.copy_rows(
        ctx.make_database("bench_ingest_copy"),
        ddl=baselines.EVENTS_DDL,
        table="events",
        columns=baselines.EVENT_COLUMNS,
        make_rows=events.rows,
        batch_size=(BATCH_MIN + BATCH_MAX) // 2,
        concurrency=CALLERS,
        duration_s=d.copy,
    )
    log(f"raw COPY of event rows: {copy.per_second:,.0f} rows/s")
    details["copy"] = copy.summary()
    return [
        Result(
            SUITE,
            f"BatchTrackEvents end to end ({BATCH_MIN}-{BATCH_MAX}/batch, {CALLERS} callers, {d.ingest:g} s)",
            ingest.per_second,
            "events/s",
            higher_is_better=True,
            baselines=[Baseline("raw COPY of the same event rows", copy.per_second, "rows/s")],
            targets=[Target(">=", 10_000), Target(">=", 0.10, on="ratio")],
            notes="Identity resolution (one BatchResolvePersons per batch) + storage + cart + outbox, "
            "acknowledged by profile. 50,000 customers; page_viewed/product_viewed/cart_item_added/"
            "order_completed on web/app/store. COPY: same rows, already resolved, into a table shaped like "
            "profile's events (primary key + timeline index), batches of 750 from as many connections."
            + ingest.health(),
            details=details,
            clean=ingest.clean,
        )
    ]


async def _outbox_after_load(
    ctx: BenchContext, profile_db: Database, identity_db: Database, *, drain_s: float
) -> dict[str, Any]:
    """Events stored and outbox events unpublished when the load stops, and how long the relay takes to catch up."""
    out: dict[str, Any] = {}
    async with ctx.connect(profile_db) as profile, ctx.connect(identity_db) as identity:
        stored = await profile.fetchval("SELECT count(*) FROM events")
        # Merges identity made and profile applied by the end of the load (profile follows from the log).
        merged_by_identity = await identity.fetchval("SELECT count(DISTINCT merged_id) FROM merges")
        merged_in_profile = await profile.fetchval(
            "SELECT count(*) FROM profiles WHERE merged_into IS NOT NULL"
        )
        unpublished = await _unpublished(profile)
        identity_unpublished = await _unpublished(identity)
        started = time.monotonic()
        remaining = unpublished
        while remaining and time.monotonic() - started < drain_s:
            await asyncio.sleep(0.5)
            remaining = await _unpublished(profile)
        waited = time.monotonic() - started
    out["events_stored"] = stored
    out["persons merged by identity at end"] = merged_by_identity
    out["persons merged in profile at end"] = merged_in_profile
    out["outbox"] = {
        "profile_unpublished_at_end": unpublished,
        "identity_unpublished_at_end": identity_unpublished,
        "profile_unpublished_after_wait": remaining,
        "waited_s": round(waited, 1),
        # Only meaningful when the relay had a backlog to work through for a while.
        "relay_rate_per_s": round((unpublished - remaining) / waited) if waited >= 2 else None,
    }
    return out


async def _graph(ctx: BenchContext, identity_db: Database) -> dict[str, int]:
    """How many persons identity has created and merged so far: the suite is a cold start, every customer
    is met for the first time during it, and merges cost both services more than events do."""
    async with ctx.connect(identity_db) as identity:
        return {
            "persons created": int(await identity.fetchval("SELECT count(*) FROM persons")),
            "merges": int(await identity.fetchval("SELECT count(*) FROM merges")),
        }


async def _unpublished(connection: Any) -> int:
    # Events, not rows: a row holds a run of events staged together (the Omni-Batch header counts them).
    value = await connection.fetchval(
        "SELECT sum(coalesce((headers->>'Omni-Batch')::int, 1)) FROM outbox WHERE published_at IS NULL"
    )
    return int(value or 0)
