"""Tracked events and profile changes that arrive together are applied together: each person evaluated once
per consumer transaction, with the outcome of applying them one by one."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import nats
import pytest

from omni.events.v1 import envelope_pb2
from omni.segmentation.v1 import segmentation_pb2 as pb
from omni.segmentation.v1 import segmentation_pb2_grpc
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres
from omni_segmentation.main import Settings, start

from ..events import recording
from .builders import cart, event_count, trait
from .support import EventLog, Segmentation, new_service_settings, person, trace_id_of, unique
from .test_membership import ENTERED, EXITED, entered_names


@pytest.fixture
async def stopped(
    postgres: EmbeddedPostgres, nats_server: EmbeddedNats
) -> AsyncIterator[tuple[Settings, list[Segmentation]]]:
    """Settings of a segmentation service on a fresh database and namespace, and a list the test fills
    with the services it starts (closed at the end)."""
    settings, database = new_service_settings(postgres, nats_server)
    started: list[Segmentation] = []
    try:
        yield settings, started
    finally:
        for service in started:
            await service.runtime.close()
        postgres.drop_database(database)


async def serve(settings: Settings, started: list[Segmentation]) -> Segmentation:
    """Start the service (its consumer resumes where it stopped)."""
    runtime = await start(settings)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}")
    client = await nats.connect(settings.nats_url)
    service = Segmentation(
        runtime,
        segmentation_pb2_grpc.SegmentationServiceStub(channel),
        settings.event_namespace,
        client.jetstream(),
    )
    started.append(service)
    return service


async def test_a_transactions_events_are_applied_together_as_one_by_one(
    stopped: tuple[Settings, list[Segmentation]], nats_server: EmbeddedNats
) -> None:
    settings, started = stopped
    service = await serve(settings, started)
    gold = await service.create(unique("gold"), trait("plan", pb.COMPARISON_EQ, "gold"))
    busy = await service.create(unique("busy"), event_count("page_viewed", 600, pb.COMPARISON_GTE, 3))
    shopping = await service.create(unique("shopping"), cart(pb.COMPARISON_GTE, 1))
    # A person in a segment before the run, merged during it by a merge naming nobody the run gathered.
    earlier, earlier_survivor = person(), person()
    await service.consumed(await service.profile_changed(earlier, cart={"sku-2": 1}, changed=("cart",)))
    assert await service.segments_of(earlier) == {shopping.name}
    # Stop the service: everything below waits on the stream and is fetched in one go when it is back.
    await service.runtime.close()
    started.remove(service)

    viewer, flip_flop, late, merged, survivor, traced, computed = (person() for _ in range(7))
    now = datetime.now(UTC)
    sent: list[envelope_pb2.Envelope] = []
    for _ in range(3):
        sent.append(await service.track(viewer, "page_viewed"))
    # Entered and left again within the run: nothing to announce, no membership.
    sent.append(await service.profile_changed(flip_flop, traits={"plan": "gold"}, occurred_at=now))
    sent.append(
        await service.profile_changed(
            flip_flop, traits={"plan": "silver"}, occurred_at=now + timedelta(seconds=1)
        )
    )
    # A change older than one applied before it in the run is ignored.
    sent.append(
        await service.profile_changed(late, traits={"plan": "gold"}, occurred_at=now + timedelta(seconds=1))
    )
    sent.append(await service.profile_changed(late, traits={"plan": "silver"}, occurred_at=now))
    # Two views before the merge, one after it (the merged id still on the event): the survivor has three.
    sent.append(await service.track(merged, "page_viewed"))
    sent.append(await service.track(merged, "page_viewed"))
    sent.append(await service.profile_changed(merged, cart={"sku-1": 1}, changed=("cart",)))
    sent.append(await service.merged(survivor, merged))
    sent.append(await service.merged(earlier_survivor, earlier))
    sent.append(await service.track(merged, "page_viewed"))
    # A change of parts segmentation does not keep (consents) is not applied.
    sent.append(await service.profile_changed(computed, traits={"plan": "gold"}, changed=("consents",)))
    trace_id = uuid.uuid4().hex
    sent.append(await service.track(traced, "page_viewed", trace_id=trace_id))
    sent.append(await service.track(traced, "page_viewed", trace_id=trace_id))
    sent.append(await service.track(traced, "page_viewed", trace_id=trace_id))

    async with recording(EventLog(), nats_server.url, settings.event_namespace) as log:
        service = await serve(settings, started)
        await service.consumed(*sent)
        # One consumer transaction (the inbox keeps the transaction's time).
        times = await service.rows(
            "SELECT DISTINCT processed_at FROM inbox WHERE event_id = ANY(:ids)",
            ids=[uuid.UUID(e.id) for e in sent],
        )
        assert len(times) == 1

        assert await service.segments_of(viewer) == {busy.name}
        assert await service.segments_of(flip_flop) == set()
        assert await service.segments_of(late) == {gold.name}
        assert await service.segments_of(survivor) == {busy.name, shopping.name}
        assert await service.segments_of(merged) == set()
        assert await service.segments_of(traced) == {busy.name}
        assert await service.segments_of(computed) == set()
        assert (
            await service.scalar("SELECT count(*) FROM persons WHERE person_id = :p", p=uuid.UUID(computed))
            == 0
        )
        assert (
            await service.scalar(
                "SELECT count(*) FROM event_occurrences WHERE person_id = :p", p=uuid.UUID(survivor)
            )
            == 3
        )

        await log.wait_for(ENTERED, traced)
        await log.wait_for(ENTERED, survivor, count=2)
        await log.wait_for(ENTERED, earlier_survivor)
        await log.wait_for(EXITED, count=2)
        assert entered_names(log.of(ENTERED, viewer)) == [busy.name]
        assert entered_names(log.of(ENTERED, late)) == [gold.name]
        assert sorted(entered_names(log.of(ENTERED, survivor))) == sorted([busy.name, shopping.name])
        assert [trace_id_of(e) for e in log.of(ENTERED, traced)] == [trace_id]
        assert log.of(ENTERED, flip_flop) == [] and log.of(EXITED, flip_flop) == []
        assert await service.segments_of(earlier_survivor) == {shopping.name}
        assert await service.segments_of(earlier) == set()
        # The merged persons were members of the cart segment before their merges: they leave.
        assert sorted(e.person_id for e in log.of(EXITED)) == sorted([merged, earlier])
        assert entered_names(log.of(ENTERED, earlier_survivor)) == [shopping.name]
