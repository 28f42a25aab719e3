"""Identity: batch resolve throughput and single resolve latency, against the raw database work.

The identity service runs in its own process on a fresh database. Baselines: the same work done directly
with asyncpg (look up a batch's identifiers in one SELECT, insert new persons and identifiers in one
statement, one transaction per batch: no merges, no lineage, no events), raw COPY of persons and
identifiers, and the echo server at the same rate.
"""

from __future__ import annotations

from bench import baselines
from bench.context import BenchContext, cpu_sample, cpu_usage, log
from bench.load import closed_loop
from bench.measure import capacity_and_latency, latency_results
from bench.results import Baseline, Result, Target
from bench.workloads import IdentifierSets, resolve_request
from omni.identity.v1 import identity_pb2, identity_pb2_grpc

SUITE = "identity_resolve"
BATCH = 500
CALLERS = 4
RATE = 1000.0
BATCH_SEED = 11
SINGLE_SEED = 12


async def run(ctx: BenchContext) -> list[Result]:
    """Measure the service, then the baselines (with the service stopped)."""
    d = ctx.durations
    database = ctx.make_database("bench_identity")
    settings = ctx.service_settings(database, ctx.namespace())
    async with ctx.service("identity", settings) as identity, ctx.channel(identity.target) as channel:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        sets = IdentifierSets(BATCH_SEED)

        async def batch_call(_: int) -> int:
            request = identity_pb2.BatchResolvePersonsRequest(
                requests=[resolve_request(s) for s in sets.batch(BATCH)]
            )
            response = await stub.BatchResolvePersons(request, timeout=30.0)
            return len(response.resolutions)

        before = cpu_sample(ctx, {"identity": identity})
        batch = await closed_loop(batch_call, concurrency=CALLERS, duration_s=d.throughput, warmup_s=d.warmup)
        batch.cpu_cores = cpu_usage(before, cpu_sample(ctx, {"identity": identity}))
        log(f"identity batch resolve: {batch.per_second:,.0f} sets/s {batch.summary()['errors'] or ''}")

        singles = IdentifierSets(SINGLE_SEED)

        async def single_call(deadline_s: float) -> None:
            await stub.ResolvePerson(resolve_request(singles.next_set()), timeout=deadline_s)

        single = await capacity_and_latency(
            ctx, single_call, rate=RATE, children={"identity": identity}, label="ResolvePerson"
        )

    raw_batch = await baselines.raw_resolve_throughput(
        ctx.make_database("bench_identity_raw"),
        seed=BATCH_SEED,
        batch_size=BATCH,
        concurrency=CALLERS,
        duration_s=d.throughput / 2,
        warmup_s=d.warmup,
    )
    log(f"raw resolve-like SQL: {raw_batch.per_second:,.0f} sets/s {raw_batch.summary()['errors'] or ''}")
    copy = await baselines.copy_identity_rows(
        ctx.make_database("bench_identity_copy"),
        seed=BATCH_SEED,
        batch_size=BATCH,
        concurrency=CALLERS,
        duration_s=d.copy,
    )
    log(f"raw COPY persons + identifiers: {copy.per_second:,.0f} sets/s")
    raw_single = await baselines.raw_resolve_latency(
        ctx.make_database("bench_identity_raw1"), seed=SINGLE_SEED, rate=RATE, duration_s=d.latency
    )
    log(
        f"raw single SQL round-trip at {RATE:g}/s: p50 {raw_single.p50_ms:.2f} ms, p99 {raw_single.p99_ms:.2f} ms"
    )

    batch_result = Result(
        SUITE,
        f"BatchResolvePersons, batches of {BATCH}, {CALLERS} callers",
        batch.per_second,
        "sets/s",
        higher_is_better=True,
        baselines=[
            Baseline("raw resolve-like SQL (same batches)", raw_batch.per_second, "sets/s"),
            Baseline("raw COPY persons+identifiers", copy.per_second, "sets/s"),
        ],
        targets=[Target(">=", 20_000)],
        notes="Mix: 70% new sets of 1-3 identifiers, 29% known identifiers (some with a new anonymous "
        "id), 1% linking two known persons (merges)." + batch.health(),
        details=batch.summary() | {"raw_sql": raw_batch.summary(), "copy": copy.summary()},
        clean=batch.clean,
    )
    single_results = await latency_results(
        ctx,
        SUITE,
        "ResolvePerson",
        single,
        rate=RATE,
        target_p99_ms=5.0,
        notes="Open loop, latency from the scheduled send time; same mix of sets as the batch run; the "
        "raw SQL baseline does one SELECT and one INSERT in a transaction through a pool of 10.",
        extra_p99=[Baseline("raw SQL round-trip p99", raw_single.p99_ms, "ms")],
        extra_p50=[Baseline("raw SQL round-trip p50", raw_single.p50_ms, "ms")],
        details={"raw_sql": raw_single.summary()},
    )
    return [batch_result, *single_results]
