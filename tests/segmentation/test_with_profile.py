"""Computed traits from the real profile service: profile computes orders_in_store and lifetime_value from
tracked events and announces them; segmentation, on the same event log, selects by them live and on a new
segment's backfill."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from omni.common.v1 import common_pb2
from omni.profile.v1 import profile_pb2
from omni.segmentation.v1 import segmentation_pb2 as pb
from omni.segmentation.v1 import segmentation_pb2_grpc
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres
from omni_segmentation.main import start

from ..profile.conftest import running_services
from ..profile.support import Services, event, new_person
from .builders import all_of, trait
from .support import eventually, new_service_settings, unique


@pytest.fixture(scope="module")
async def both(
    postgres: EmbeddedPostgres, nats_server: EmbeddedNats
) -> AsyncIterator[tuple[Services, segmentation_pb2_grpc.SegmentationServiceStub]]:
    """Identity, profile and segmentation on one event namespace."""
    async with running_services(postgres, nats_server) as services:
        settings, database = new_service_settings(postgres, nats_server)
        settings = settings.model_copy(update={"event_namespace": services.namespace})
        runtime = await start(settings)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}")
        try:
            yield services, segmentation_pb2_grpc.SegmentationServiceStub(channel)
        finally:
            await channel.close()
            await runtime.close()
            postgres.drop_database(database)


async def segments_of(stub: segmentation_pb2_grpc.SegmentationServiceStub, person_id: str) -> set[str]:
    answer = await stub.ListPersonSegments(pb.ListPersonSegmentsRequest(person_id=person_id))
    return {m.segment_name for m in answer.memberships}


async def orders(services: Services, person_id: str, count: int, channel: int) -> None:
    batch = [
        event(
            "order_completed",
            person_id=person_id,
            channel=channel,  # type: ignore[arg-type]
            properties={"revenue_minor": 5000, "currency": "EUR"},
        )
        for _ in range(count)
    ]
    await services.profile.BatchTrackEvents(profile_pb2.BatchTrackEventsRequest(events=batch))


async def test_computed_traits_select_live_and_on_backfill(
    both: tuple[Services, segmentation_pb2_grpc.SegmentationServiceStub],
) -> None:
    services, stub = both
    in_store = (
        await stub.CreateSegment(
            pb.CreateSegmentRequest(
                segment=pb.Segment(
                    name=unique("in-store"), condition=trait("orders_in_store", pb.COMPARISON_GTE, 3)
                )
            )
        )
    ).segment
    regular, online = str(await new_person(services)), str(await new_person(services))
    await orders(services, regular, 3, common_pb2.CHANNEL_STORE)
    await orders(services, online, 3, common_pb2.CHANNEL_WEB)

    async def regular_is_in() -> bool:
        return in_store.name in await segments_of(stub, regular)

    await eventually(regular_is_in, timeout_s=15)
    assert in_store.name not in await segments_of(stub, online)

    # A new segment on lifetime value (an object: amount in minor units and a currency) finds both on
    # its backfill: each has spent 150 EUR.
    spenders = (
        await stub.CreateSegment(
            pb.CreateSegmentRequest(
                segment=pb.Segment(
                    name=unique("spenders"),
                    condition=all_of(
                        trait("lifetime_value.amount_minor", pb.COMPARISON_GTE, 15000),
                        trait("lifetime_value.currency_code", pb.COMPARISON_EQ, "EUR"),
                    ),
                )
            )
        )
    ).segment

    async def both_spent() -> bool:
        found = [spenders.name in await segments_of(stub, p) for p in (regular, online)]
        return all(found)

    await eventually(both_spent, timeout_s=15)
