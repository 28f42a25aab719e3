"""Segmentation: live membership beside ingestion. Identity, profile and segmentation run as in a deployment;
callers send BatchTrackEvents as in the ingest suite while segmentation applies what profile and identity
publish. Measured: how long after profile received a customer's first order segmentation published that
the customer entered the "buyers" segment, and how many events segmentation applied per second against how
many were published for it.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

import nats
from google.protobuf import duration_pb2
from nats.aio.msg import Msg

from bench.context import BenchContext, Database, cpu_sample, cpu_usage, log
from bench.load import closed_loop, percentile
from bench.results import Baseline, Result, Target
from bench.workloads import ShopEvents
from omni.profile.v1 import profile_pb2
from omni.segmentation.v1 import events_pb2 as segmentation_events
from omni.segmentation.v1 import segmentation_pb2 as pb
from omni.segmentation.v1 import segmentation_pb2_grpc
from omni_kit.bus import envelopes_in, subject_for, unpack

SUITE = "segment_live"
CALLERS = 4
BATCH_MIN, BATCH_MAX = 500, 1000
SEED = 31
METHOD = "/omni.profile.v1.ProfileService/BatchTrackEvents"
ENTERED = "segmentation.person_entered_segment"
DRAIN_S = 120.0
"""How long to wait for segmentation to catch up after the load (a quick run waits 20 s)."""
DAY = duration_pb2.Duration(seconds=86_400)

# What segmentation consumes of profile's and identity's events (published as batches: Omni-Batch counts).
_PUBLISHED_FOR_SEGMENTATION = (
    "SELECT coalesce(sum(coalesce((headers->>'Omni-Batch')::int, 1)), 0) FROM outbox WHERE type = ANY($1)"
)
_PROFILE_TYPES = ["profile.event_tracked", "profile.profile_changed", "profile.person_erased"]
_IDENTITY_TYPES = ["identity.persons_merged", "identity.person_forgotten"]


def _segments() -> dict[str, pb.Condition]:
    """A handful of live segments over events, the cart and time windows."""
    gte = pb.COMPARISON_GTE
    return {
        "buyers": pb.Condition(
            event_count=pb.EventCountCondition(
                event_type="order_completed", window=DAY, comparison=gte, count=1
            )
        ),
        "browsers": pb.Condition(
            event_count=pb.EventCountCondition(event_type="page_viewed", window=DAY, comparison=gte, count=3)
        ),
        "product-fans": pb.Condition(
            event_count=pb.EventCountCondition(
                event_type="product_viewed", window=DAY, comparison=gte, count=5
            )
        ),
        "shopping": pb.Condition(cart=pb.CartCondition(comparison=gte, item_count=1)),
        "big-carts": pb.Condition(cart=pb.CartCondition(comparison=gte, item_count=5)),
    }


async def run(ctx: BenchContext) -> list[Result]:
    """Ingest for the load time with segmentation running, wait for it to catch up, then measure."""
    d = ctx.durations
    load_s = d.ingest / 2
    namespace = ctx.namespace()
    identity_db = ctx.make_database("bench_live_identity")
    profile_db = ctx.make_database("bench_live_profile")
    segmentation_db = ctx.make_database("bench_live_segmentation")
    events = ShopEvents(SEED)
    rng = random.Random(SEED)
    entered_at: dict[str, float] = {}
    subscriber = await nats.connect(ctx.nats.url)

    async def on_entered(message: Msg) -> None:
        received = time.time()
        for envelope in envelopes_in(message.data, message.headers):
            event = unpack(envelope, segmentation_events.PersonEnteredSegmentEvent)
            if event.segment_name == "buyers":
                entered_at.setdefault(event.person_id, received)

    await subscriber.subscribe(subject_for(ENTERED, namespace), cb=on_entered)
    details: dict[str, Any] = {}
    try:
        async with (
            ctx.service("identity", ctx.service_settings(identity_db, namespace)) as identity,
            ctx.service("segmentation", ctx.service_settings(segmentation_db, namespace)) as segmentation,
        ):
            profile_settings = ctx.service_settings(profile_db, namespace, identity_target=identity.target)
            async with (
                ctx.service("profile", profile_settings) as profile,
                ctx.channel(profile.target) as profile_channel,
                ctx.channel(segmentation.target) as segmentation_channel,
            ):
                stub = segmentation_pb2_grpc.SegmentationServiceStub(segmentation_channel)
                for name, condition in _segments().items():
                    await stub.CreateSegment(
                        pb.CreateSegmentRequest(segment=pb.Segment(name=name, condition=condition))
                    )
                track = profile_channel.unary_unary(
                    METHOD, response_deserializer=profile_pb2.BatchTrackEventsResponse.FromString
                )

                async def call(_: int) -> int:
                    size = rng.randint(BATCH_MIN, BATCH_MAX)
                    await track(events.batch_wire(size), timeout=60.0)
                    return size

                children = {"identity": identity, "profile": profile, "segmentation": segmentation}
                before, loop_started = cpu_sample(ctx, children), time.monotonic()
                ingest = await closed_loop(call, concurrency=CALLERS, duration_s=load_s, warmup_s=d.warmup)
                cpu = cpu_usage(before, cpu_sample(ctx, children))
                loop_s = time.monotonic() - loop_started
                published, applied = await _progress(ctx, identity_db, profile_db, segmentation_db)
                log(
                    f"live segments: ingest {ingest.per_second:,.0f} events/s; at the end of the load "
                    f"segmentation applied {applied:,} of {published:,} events; cpu {cpu}"
                )
                details |= {
                    "ingest": ingest.summary(),
                    "cpu_cores": cpu,
                    "published for segmentation at end of load": published,
                    "applied by segmentation at end of load": applied,
                }
                started = time.monotonic()
                drain_s = 20.0 if ctx.quick else DRAIN_S
                while applied < published and time.monotonic() - started < drain_s:
                    await asyncio.sleep(0.5)
                    published, applied = await _progress(ctx, identity_db, profile_db, segmentation_db)
                drained_s = time.monotonic() - started
                details |= {
                    "caught up": applied >= published,
                    "seconds to catch up after the load": round(drained_s, 1),
                    "published for segmentation": published,
                    "applied by segmentation": applied,
                }
                log(f"live segments: caught up {applied >= published} after {drained_s:.1f} s")
                await asyncio.sleep(1.0)  # the relay publishes what the last transactions staged
                latencies = await _latencies(ctx, profile_db, entered_at)
    finally:
        await subscriber.drain()

    # Over the whole loop, warm-up included: the counts start from nothing when the loop starts.
    applied_per_s = details["applied by segmentation at end of load"] / loop_s
    published_per_s = details["published for segmentation at end of load"] / loop_s
    ordered = sorted(latencies)
    p50 = percentile(ordered, 0.50) * 1000 if ordered else None
    p99 = percentile(ordered, 0.99) * 1000 if ordered else None
    call_p99 = ingest.summary()["call_p99_ms"]
    details |= {"buyers entered": len(ordered), "latency p50 ms": p50}
    notes = (
        f"{CALLERS} callers send BatchTrackEvents ({BATCH_MIN}-{BATCH_MAX} events, as in profile_ingest) for "
        f"{load_s:g} s while segmentation keeps 5 live segments (event counts over a day, cart size). "
        "From profile receiving a customer's first order to segmentation's person_entered_segment for "
        "'buyers' arriving at a NATS subscriber; the event is recorded only when its batch's call ends, so "
        "the call's own p99 is the floor."
    )
    return [
        Result(
            SUITE,
            "person_entered_segment after the causing event, p99 (ingest load)",
            p99,
            "ms",
            higher_is_better=False,
            baselines=[Baseline("BatchTrackEvents call p99 (same load)", call_p99, "ms")],
            targets=[Target("<", 1000.0)],
            notes=notes + ingest.health(),
            details=details,
            clean=ingest.clean and bool(ordered),
        ),
        Result(
            SUITE,
            "events applied by segmentation during the ingest load",
            applied_per_s,
            "events/s",
            higher_is_better=True,
            baselines=[Baseline("events published for segmentation", published_per_s, "events/s")],
            targets=[Target(">=", 1.0, on="ratio")],
            notes="profile.event_tracked, profile.profile_changed and identity.persons_merged applied (consumer "
            "inbox) against those staged by profile and identity, both counted at the end of the load; "
            f"ingest {ingest.per_second:,.0f} events/s with segmentation beside it.",
            details={},
            clean=ingest.clean,
        ),
    ]


async def _progress(
    ctx: BenchContext, identity_db: Database, profile_db: Database, segmentation_db: Database
) -> tuple[int, int]:
    """(events published for segmentation so far, events segmentation has applied)."""
    async with (
        ctx.connect(identity_db) as identity,
        ctx.connect(profile_db) as profile,
        ctx.connect(segmentation_db) as segmentation,
    ):
        published = int(await profile.fetchval(_PUBLISHED_FOR_SEGMENTATION, _PROFILE_TYPES)) + int(
            await identity.fetchval(_PUBLISHED_FOR_SEGMENTATION, _IDENTITY_TYPES)
        )
        applied = int(await segmentation.fetchval("SELECT count(*) FROM inbox"))
    return published, applied


async def _latencies(ctx: BenchContext, profile_db: Database, entered_at: dict[str, float]) -> list[float]:
    """Seconds from profile receiving each buyer's first order to the entered event's arrival."""
    if not entered_at:
        return []
    async with ctx.connect(profile_db) as profile:
        rows = await profile.fetch(
            "SELECT person_id, min(received_at) AS first FROM events "
            "WHERE type = 'order_completed' AND person_id = ANY($1::uuid[]) GROUP BY person_id",
            [uuid.UUID(p) for p in entered_at],
        )
    return [max(0.0, entered_at[str(row["person_id"])] - row["first"].timestamp()) for row in rows]
