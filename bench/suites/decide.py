"""Decisioning: Decide at 1,000 calls/s from its own read model of segment memberships.

The read model holds a million persons (a few thousand in a quick run), seeded by COPY, in 3 of 10 segments
each; a further 600 persons' memberships reach decisioning as they would in a deployment: real
segmentation.person_entered_segment envelopes on the event log, applied by decisioning's consumer. The suite
waits until a sample of both decides as their memberships say, which also gives how fast the read model is
fed. 50 offers, 30 of them restricted to a segment.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import grpc
import nats

from bench.children import ServiceProcess
from bench.context import BenchContext, Database, log
from bench.measure import capacity_and_latency, latency_results
from bench.results import Result
from omni.common.v1 import common_pb2
from omni.decisioning.v1 import decisioning_pb2, decisioning_pb2_grpc
from omni.segmentation.v1 import events_pb2 as segmentation_events
from omni.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc
from omni_kit.bus import make_envelope, subject_for

SUITE = "decide"
RATE = 1000.0
SEED = 41
OFFERS = 50
RESTRICTED = 30
SEGMENTS = 10
SEEDED = 1_000_000
SEEDED_QUICK = 20_000
LIMIT = 3
SEGMENTS_PER_PERSON = 3
TOUCHPOINTS = ("web_home", "app_home", "pos_checkout", "email_footer")
ENTERED = "segmentation.person_entered_segment"


async def run(ctx: BenchContext) -> list[Result]:
    """Create offers, feed memberships through the event log, then decide open loop."""
    rng = random.Random(SEED)
    persons = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(200 if ctx.quick else 600)]
    namespace = ctx.namespace()
    database = ctx.make_database("bench_decide")
    # Segmentation answers only whether an offer's segment exists (decisioning asks it at CreateOffer); it has
    # an event namespace of its own, so it takes none of the suite's events.
    segmentation_settings = ctx.service_settings(
        ctx.make_database("bench_decide_segmentation"), ctx.namespace()
    )
    async with (
        ctx.service("segmentation", segmentation_settings) as segmentation,
        ctx.channel(segmentation.target) as segmentation_channel,
    ):
        segments = await _create_segments(
            segmentation_pb2_grpc.SegmentationServiceStub(segmentation_channel), namespace
        )
        memberships = {p: set(rng.sample(segments, SEGMENTS_PER_PERSON)) for p in persons}
        async with (
            ctx.service(
                "decisioning",
                ctx.service_settings(database, namespace, segmentation_target=segmentation.target),
            ) as decisioning,
            ctx.channel(decisioning.target) as channel,
        ):
            return await _run(
                ctx, rng, namespace, database, persons, segments, memberships, decisioning, channel
            )


async def _create_segments(
    stub: segmentation_pb2_grpc.SegmentationServiceStub, namespace: str
) -> list[uuid.UUID]:
    """SEGMENTS segments in segmentation; nobody is in them there (memberships come as events)."""
    segments = []
    for i in range(SEGMENTS):
        created = await stub.CreateSegment(
            segmentation_pb2.CreateSegmentRequest(
                segment=segmentation_pb2.Segment(
                    name=f"bench-{namespace}-{i}",
                    condition=segmentation_pb2.Condition(
                        trait=segmentation_pb2.TraitCondition(
                            trait="never_set", comparison=segmentation_pb2.COMPARISON_EXISTS
                        )
                    ),
                )
            ),
            timeout=5.0,
        )
        segments.append(uuid.UUID(created.segment.id))
    return segments


async def _run(
    ctx: BenchContext,
    rng: random.Random,
    namespace: str,
    database: Database,
    persons: list[uuid.UUID],
    segments: list[uuid.UUID],
    memberships: dict[uuid.UUID, set[uuid.UUID]],
    decisioning: ServiceProcess,
    channel: grpc.aio.Channel,
) -> list[Result]:
    stub = decisioning_pb2_grpc.DecisioningServiceStub(channel)
    offers = []
    for i in range(OFFERS):
        # RESTRICTED of them restricted to a segment; some offers at every touchpoint, others at one or two.
        segment = str(segments[i % SEGMENTS]) if i < RESTRICTED else ""
        touchpoints = [] if i % 4 == 0 else rng.sample(TOUCHPOINTS, rng.randint(1, 2))
        offer = decisioning_pb2.Offer(
            name=f"bench offer {i} {namespace}",
            description=f"{i * 5}% off",
            touchpoints=touchpoints,
            segment_id=segment,
            priority=rng.randint(-5, 20),
        )
        created = await stub.CreateOffer(decisioning_pb2.CreateOfferRequest(offer=offer), timeout=5.0)
        offers.append(created.offer)

    # Offers rank by priority, then age (the order they were created in).
    ranking = sorted(range(len(offers)), key=lambda i: (-offers[i].priority, i))

    def expected(person: uuid.UUID, touchpoint: str) -> list[str]:
        segments_of = memberships.get(person) or _seeded_segments(person, segments)
        return [
            offers[i].id
            for i in ranking
            if (not offers[i].segment_id or uuid.UUID(offers[i].segment_id) in segments_of)
            and (not offers[i].touchpoints or touchpoint in offers[i].touchpoints)
        ][:20]

    seeded = SEEDED_QUICK if ctx.quick else SEEDED
    seeded_in = await _seed_memberships(ctx, database, seeded, segments)
    log(
        f"decide read model: {seeded * SEGMENTS_PER_PERSON:,} memberships seeded by COPY in {seeded_in:.1f} s"
    )
    published_at = time.monotonic()
    await _publish_memberships(ctx, namespace, memberships)
    published_in = time.monotonic() - published_at
    seeded_sample = [_seeded_person(rng.randrange(seeded)) for _ in range(50)]
    sample = [*rng.sample(persons, 50), persons[-1], *seeded_sample]
    applied_in = await _wait_applied(stub, sample, expected, timeout_s=180.0) + published_in
    count = len(persons) * SEGMENTS_PER_PERSON
    log(f"decide read model: {count} memberships applied in {applied_in:.1f} s")

    requests = [
        decisioning_pb2.DecideRequest(
            # Mostly the seeded million (their rows are spread over the whole table), some event-fed persons.
            person_id=str(
                _seeded_person(rng.randrange(seeded)) if rng.random() < 0.9 else rng.choice(persons)
            ),
            touchpoint=rng.choice(TOUCHPOINTS),
            channel=common_pb2.CHANNEL_WEB,
            limit=LIMIT,
        )
        for _ in range(1000)
    ]
    calls = itertools.count()

    async def call(deadline_s: float) -> None:
        await stub.Decide(requests[next(calls) % len(requests)], timeout=deadline_s)

    measured = await capacity_and_latency(
        ctx, call, rate=RATE, children={"decisioning": decisioning}, label="Decide"
    )
    results = await latency_results(
        ctx,
        SUITE,
        "Decide",
        measured,
        rate=RATE,
        target_p99_ms=10.0,
        notes=f"{OFFERS} offers ({RESTRICTED} segment-restricted), a read model of {seeded:,} persons seeded "
        f"and {len(persons):,} fed by events, in {SEGMENTS_PER_PERSON} of {SEGMENTS} segments each, limit "
        f"{LIMIT}. Each decision is logged and announced (outbox). Open loop, latency from the scheduled send "
        "time.",
    )
    results.append(
        Result(
            SUITE,
            "segment memberships applied to the read model",
            count / applied_in,
            "events/s",
            higher_is_better=True,
            notes=f"{count:,} person_entered_segment envelopes published to JetStream, until a sample of "
            "persons decides as its memberships say (includes publishing).",
            details={"events": count, "seconds": round(applied_in, 2)},
        )
    )
    return results


async def _publish_memberships(
    ctx: BenchContext, namespace: str, memberships: dict[uuid.UUID, set[uuid.UUID]]
) -> None:
    connection = await nats.connect(ctx.nats.url, name="bench-decide")
    try:
        js = connection.jetstream()
        subject = subject_for(ENTERED, namespace)
        pending = []
        for person, segments in memberships.items():
            for segment in segments:
                payload = segmentation_events.PersonEnteredSegmentEvent(
                    person_id=str(person), segment_id=str(segment), segment_name=f"segment {segment}"
                )
                envelope = make_envelope(
                    payload, event_type=ENTERED, producer="segmentation", person_id=str(person)
                )
                pending.append(
                    js.publish(subject, envelope.SerializeToString(), headers={"Nats-Msg-Id": envelope.id})
                )
                if len(pending) >= 200:
                    await asyncio.gather(*pending)
                    pending.clear()
        await asyncio.gather(*pending)
    finally:
        await connection.close()


def _seeded_person(n: int) -> uuid.UUID:
    """The n-th seeded person's id (derived, so a million need not be kept in the suite's memory)."""
    return uuid.UUID(int=random.Random(f"person-{SEED}-{n}").getrandbits(128), version=4)


def _seeded_segments(person: uuid.UUID, segments: list[uuid.UUID]) -> set[uuid.UUID]:
    """The segments a seeded person is a member of (derived from its id)."""
    return set(random.Random(person.int).sample(segments, SEGMENTS_PER_PERSON))


async def _seed_memberships(
    ctx: BenchContext, database: Database, count: int, segments: list[uuid.UUID]
) -> float:
    """COPY `count` persons' memberships into decisioning's read model, in chunks; return seconds."""
    started = time.monotonic()
    as_of = datetime.now(UTC)
    async with ctx.connect(database) as connection:
        for first in range(0, count, 50_000):
            records = [
                (person, segment, True, as_of)
                for person in (_seeded_person(n) for n in range(first, min(count, first + 50_000)))
                for segment in _seeded_segments(person, segments)
            ]
            await connection.copy_records_to_table(
                "memberships", records=records, columns=("person_id", "segment_id", "is_member", "as_of")
            )
        await connection.execute("ANALYZE memberships")
    return time.monotonic() - started


async def _wait_applied(
    stub: decisioning_pb2_grpc.DecisioningServiceStub,
    sample: list[uuid.UUID],
    expected: Callable[[uuid.UUID, str], list[str]],
    *,
    timeout_s: float,
) -> float:
    """Poll Decide for the sample until every person gets exactly its eligible offers; return seconds."""
    started = time.monotonic()
    waiting = list(sample)
    while waiting:
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{len(waiting)} of {len(sample)} sampled persons still decide wrongly")
        still = []
        for person in waiting:
            touchpoint = TOUCHPOINTS[person.int % len(TOUCHPOINTS)]
            response = await stub.Decide(
                decisioning_pb2.DecideRequest(person_id=str(person), touchpoint=touchpoint, limit=20),
                timeout=5.0,
            )
            if [a.offer_id for a in response.actions] != expected(person, touchpoint):
                still.append(person)
        waiting = still
        if waiting:
            await asyncio.sleep(0.2)
    return time.monotonic() - started
