"""Profile: the 360 view (GetProfile) of a person with 1,000 events, at 500 calls/s, against the echo server."""

from __future__ import annotations

import asyncio

from bench.context import BenchContext
from bench.measure import capacity_and_latency, latency_results
from bench.results import Result
from bench.workloads import ShopEvents
from omni.profile.v1 import profile_pb2, profile_pb2_grpc

SUITE = "profile_read"
RATE = 500.0
EVENTS = 1000
SEED = 31


async def run(ctx: BenchContext) -> list[Result]:
    """Give one person 1,000 events through the API, then read the profile."""
    namespace = ctx.namespace()
    identity_db = ctx.make_database("bench_read_identity")
    profile_db = ctx.make_database("bench_read_profile")
    events = ShopEvents(SEED, customers=10, templates=500)
    async with ctx.service("identity", ctx.service_settings(identity_db, namespace)) as identity:
        profile_settings = ctx.service_settings(profile_db, namespace, identity_target=identity.target)
        async with (
            ctx.service("profile", profile_settings) as profile,
            ctx.channel(profile.target) as channel,
        ):
            track = channel.unary_unary(
                "/omni.profile.v1.ProfileService/BatchTrackEvents",
                response_deserializer=profile_pb2.BatchTrackEventsResponse.FromString,
            )
            person_id = ""
            for _ in range(EVENTS // 500):
                response = await track(events.person_events_wire(500, "bench-reader-1"), timeout=60.0)
                person_id = response.results[0].person_id
            stub = profile_pb2_grpc.ProfileServiceStub(channel)
            request = profile_pb2.GetProfileRequest(person_id=person_id)
            first = await stub.GetProfile(request, timeout=5.0)
            if first.profile.event_count != EVENTS:
                raise RuntimeError(f"profile has {first.profile.event_count} events, expected {EVENTS}")
            await asyncio.sleep(1.0)  # let the relay publish the seeding's outbox rows

            async def call(deadline_s: float) -> None:
                await stub.GetProfile(request, timeout=deadline_s)

            measured = await capacity_and_latency(
                ctx, call, rate=RATE, children={"identity": identity, "profile": profile}, label="GetProfile"
            )
    return await latency_results(
        ctx,
        SUITE,
        f"GetProfile ({EVENTS:,}-event profile)",
        measured,
        rate=RATE,
        target_p99_ms=10.0,
        notes="Default request (20 recent events, response "
        f"{first.ByteSize():,} bytes). Open loop, latency from the scheduled send time.",
    )
