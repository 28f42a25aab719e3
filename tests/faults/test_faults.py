"""Faults under a steady load: NATS killed, profile killed, PostgreSQL stopped for longer than the consumers'
deliveries last (POSTGRES_DOWN_S).

Each test sends events for its own persons at a steady rate (tests/faults/load.py: the client's own event ids,
retried on UNAVAILABLE and DEADLINE_EXCEEDED), breaks one component a few seconds in, brings it back, and then
checks that nothing the client was told was recorded went missing or was recorded twice, that every outbox is
drained, that segmentation saw every event and put every person in the segment counting them, and that the
journey on that segment emailed each person exactly once, and that no consumer dead-lettered anything.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import grpc
import nats
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from omni.common.v1 import common_pb2
from omni.decisioning.v1 import decisioning_pb2, decisioning_pb2_grpc
from omni.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from omni.profile.v1 import profile_pb2, profile_pb2_grpc
from omni.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc
from omni_kit.bus import dlq_stream
from tests.faults.load import CHANNEL_OPTIONS, LoadResult, steady_load
from tests.faults.stack import Stack

pytestmark = pytest.mark.faults

PERSONS = 30
RATE = 150.0
"""Events a second; with the stack's five services on this machine's cores, about what it keeps up with."""
LOAD_S = 20.0
FAULT_AFTER_S = 5.0
POSTGRES_DOWN_S = 25.0
"""Longer than a consumer's five deliveries of an event take with the default backoff (0.2 + 1 + 5 + 15 s): a
consumer that counted failures for want of its database would dead-letter the events in hand."""
SETTLE_S = 90.0
"""How long the checks wait for the outboxes, segmentation and the journey to catch up after the load."""


@dataclass
class Audience:
    """The persons of one test, the segment counting their probe events and the journey emailing them."""

    event_type: str
    user_ids: list[str]
    emails: dict[str, str]
    """person id -> email address"""
    segment_id: str


async def prepare(stack: Stack, tag: str) -> Audience:
    """Create the persons (each with an email address and email consent), the segment on ``<tag>_probe``
    events and the journey emailing whoever enters it."""
    event_type = f"{tag}_probe"
    name = tag.replace("_", "-")
    async with (
        grpc.aio.insecure_channel(stack.target("profile")) as profile_channel,
        grpc.aio.insecure_channel(stack.target("segmentation")) as segmentation_channel,
        grpc.aio.insecure_channel(stack.target("gateway")) as gateway_channel,
        grpc.aio.insecure_channel(stack.target("decisioning")) as decisioning_channel,
    ):
        profile = profile_pb2_grpc.ProfileServiceStub(profile_channel)
        user_ids, emails = [], {}
        for n in range(PERSONS):
            user_id, email = (
                f"{tag}-{n}-{uuid.uuid4().hex[:8]}",
                f"{tag}.{n}.{uuid.uuid4().hex[:8]}@example.com",
            )
            occurred = Timestamp()
            occurred.GetCurrentTime()
            answer = await profile.TrackEvent(
                profile_pb2.TrackEventRequest(
                    event=profile_pb2.Event(
                        id=str(uuid.uuid4()),
                        type="signed_up",
                        channel=common_pb2.CHANNEL_WEB,
                        occurred_at=occurred,
                        identifiers=[
                            common_pb2.Identifier(type="user_id", value=user_id),
                            common_pb2.Identifier(type="email", value=email),
                        ],
                    )
                ),
                timeout=10,
            )
            await profile.SetConsent(
                profile_pb2.SetConsentRequest(
                    person_id=answer.person_id,
                    consent=profile_pb2.Consent(
                        channel=common_pb2.CHANNEL_EMAIL,
                        state=profile_pb2.CONSENT_STATE_GRANTED,
                        source="signup",
                    ),
                ),
                timeout=10,
            )
            user_ids.append(user_id)
            emails[answer.person_id] = email
        segment = (
            await segmentation_pb2_grpc.SegmentationServiceStub(segmentation_channel).CreateSegment(
                segmentation_pb2.CreateSegmentRequest(
                    segment=segmentation_pb2.Segment(
                        name=f"{name}-probed",
                        condition=segmentation_pb2.Condition(
                            event_count=segmentation_pb2.EventCountCondition(
                                event_type=event_type,
                                window=Duration(seconds=86400),
                                comparison=segmentation_pb2.COMPARISON_GTE,
                                count=1,
                            )
                        ),
                    )
                ),
                timeout=10,
            )
        ).segment
        template_id = f"{name}-email"
        await gateway_pb2_grpc.GatewayServiceStub(gateway_channel).CreateTemplate(
            gateway_pb2.CreateTemplateRequest(
                template=gateway_pb2.Template(
                    id=template_id,
                    channel=common_pb2.CHANNEL_EMAIL,
                    subject=f"{tag}: welcome",
                    body_text="Hello.",
                )
            ),
            timeout=10,
        )
        await decisioning_pb2_grpc.DecisioningServiceStub(decisioning_channel).CreateJourney(
            decisioning_pb2.CreateJourneyRequest(
                journey=decisioning_pb2.Journey(
                    name=f"{name} welcome",
                    trigger_segment_id=segment.id,
                    channels=[common_pb2.CHANNEL_EMAIL],
                    template_id=template_id,
                )
            ),
            timeout=10,
        )
    return Audience(event_type, user_ids, emails, segment.id)


async def under_load(stack: Stack, audience: Audience, fault: Callable[[], None]) -> LoadResult:
    """Run the steady load, with ``fault`` (blocking: run in a thread) a few seconds in."""

    async def break_it() -> None:
        await asyncio.sleep(FAULT_AFTER_S)
        await asyncio.to_thread(fault)

    load = steady_load(
        stack.target("profile"), audience.event_type, audience.user_ids, rate=RATE, seconds=LOAD_S
    )
    result, _ = await asyncio.gather(load, break_it())
    print(f"\n{audience.event_type}: {result.summary()}")
    return result


async def eventually(probe: Callable[[], Awaitable[str | None]], within_s: float = SETTLE_S) -> None:
    """Poll ``probe`` (which says what is still wrong, or None) until it is content; fail with its last word."""
    deadline = time.monotonic() + within_s
    while (problem := await probe()) is not None:
        assert time.monotonic() < deadline, problem
        await asyncio.sleep(0.5)


async def check_nothing_lost(stack: Stack, audience: Audience, result: LoadResult) -> None:
    """The checks every fault test ends with (see the module's docstring)."""
    acknowledged = list(result.acknowledged)
    assert acknowledged, "no event was acknowledged"
    assert not result.refused, (
        f"refused with a status no client retries: {sorted(set(result.refused.values()))}"
    )

    # Every acknowledged event is on the timeline, once.
    profile_db = await asyncpg.connect(stack.database("profile"))
    try:
        rows = await profile_db.fetch(
            "SELECT id, count(*) AS n FROM events WHERE id = ANY($1::text[]) GROUP BY id", acknowledged
        )
    finally:
        await profile_db.close()
    stored = {row["id"]: row["n"] for row in rows}
    lost = sorted(set(acknowledged) - set(stored))
    doubled = sorted(event_id for event_id, n in stored.items() if n > 1)
    assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged events are not stored: {lost[:5]}"
    assert not doubled, f"{len(doubled)} events are stored more than once: {doubled[:5]}"

    # Every outbox is drained and nothing was dead-lettered.
    async def outboxes() -> str | None:
        waiting = {}
        for service in stack.services:
            connection = await asyncpg.connect(stack.database(service.name))
            try:
                unpublished = await connection.fetchval(
                    "SELECT count(*) FROM outbox WHERE published_at IS NULL"
                )
                dead = await connection.fetchval(
                    "SELECT count(*) FROM information_schema.tables WHERE table_name = 'outbox_dead_letters'"
                )
                if dead:
                    dead = await connection.fetchval("SELECT count(*) FROM outbox_dead_letters")
            finally:
                await connection.close()
            if unpublished or dead:
                waiting[service.name] = f"{unpublished} unpublished, {dead} dead-lettered"
        return f"outboxes not drained: {waiting}" if waiting else None

    checks_began = time.monotonic()
    await eventually(outboxes)
    client = await nats.connect(stack.nats.url)
    try:
        dead_letters = (await client.jetstream().stream_info(dlq_stream())).state.messages
    finally:
        await client.close()
    assert dead_letters == 0, f"{dead_letters} events dead-lettered by consumers"

    # Segmentation saw every acknowledged event, and every person is in the segment counting them.
    async def segmentation_saw_all() -> str | None:
        connection = await asyncpg.connect(stack.database("segmentation"))
        try:
            seen = await connection.fetchval(
                "SELECT count(DISTINCT event_id) FROM event_occurrences WHERE event_id = ANY($1::text[])",
                acknowledged,
            )
        finally:
            await connection.close()
        return None if seen == len(acknowledged) else f"segmentation saw {seen} of {len(acknowledged)} events"

    await eventually(segmentation_saw_all)

    async with grpc.aio.insecure_channel(stack.target("segmentation"), CHANNEL_OPTIONS) as channel:
        segmentation = segmentation_pb2_grpc.SegmentationServiceStub(channel)

        async def all_members() -> str | None:
            outside = []
            for person_id in audience.emails:
                answer = await segmentation.ListPersonSegments(
                    segmentation_pb2.ListPersonSegmentsRequest(person_id=person_id), timeout=10
                )
                if all(m.segment_id != audience.segment_id for m in answer.memberships):
                    outside.append(person_id)
            return f"{len(outside)} of {len(audience.emails)} persons not in the segment" if outside else None

        await eventually(all_members)

    # The journey emailed every person exactly once.
    def sent_to() -> dict[str, int]:
        counts = dict.fromkeys(audience.emails.values(), 0)
        for message in stack.smtp.messages():
            for address in str(message["To"]).split(","):
                address = address.strip().strip("<>").split("<")[-1].rstrip(">")
                if address in counts:
                    counts[address] += 1
        return counts

    async def everyone_emailed() -> str | None:
        missing = [a for a, n in sent_to().items() if n == 0]
        return f"{len(missing)} of {len(audience.emails)} persons got no email" if missing else None

    await eventually(everyone_emailed)
    print(
        f"{audience.event_type}: every person emailed {time.monotonic() - checks_began:.1f} s after the load"
    )
    await asyncio.sleep(3)  # a second email would follow within the relays' and consumers' next rounds
    twice = {address: n for address, n in sent_to().items() if n > 1}
    assert not twice, f"emailed more than once: {twice}"

    for service in stack.services:
        assert stack.processes[service.name].poll() is None, (
            f"{service.name} exited:\n{stack.tail(service.name)}"
        )


async def test_nats_killed_and_started_again(stack: Stack) -> None:
    audience = await prepare(stack, "nats_kill")

    def fault() -> None:
        stack.kill_nats()
        time.sleep(1)
        stack.nats.start()

    result = await under_load(stack, audience, fault)
    await check_nothing_lost(stack, audience, result)


async def test_profile_killed_and_started_again(stack: Stack) -> None:
    audience = await prepare(stack, "profile_kill")

    def fault() -> None:
        stack.kill_service("profile")
        time.sleep(1)
        stack.start_service("profile")
        stack.wait_serving("profile")

    result = await under_load(stack, audience, fault)
    await check_nothing_lost(stack, audience, result)


async def test_postgres_stopped_longer_than_the_consumers_deliveries(stack: Stack) -> None:
    audience = await prepare(stack, "postgres_stop")

    def fault() -> None:
        stack.stop_postgres()
        time.sleep(POSTGRES_DOWN_S)
        stack.start_postgres()

    result = await under_load(stack, audience, fault)
    await check_nothing_lost(stack, audience, result)
