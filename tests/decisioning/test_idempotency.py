"""CreateJourney and CreateOffer by request id (omni_kit.idempotency): a retry answers the first answer and
creates nothing, the same id with other content is refused with nothing written, answers are purged after
the retention and an erasure removes those that show the person."""

from __future__ import annotations

import uuid

import grpc
import pytest

from omni.common.v1 import common_pb2 as c
from omni.decisioning.v1 import decisioning_pb2 as d
from omni_kit.errors import status_details
from omni_kit.ids import new_id_str

from ..idempotency import assert_key_reused, forget_shown_answers, purge_aged, stored_answers
from .support import Decisioning
from .test_erasure import forget


async def journey_request(decisioning: Decisioning, request_id: str = "") -> d.CreateJourneyRequest:
    return d.CreateJourneyRequest(
        journey=d.Journey(
            name=f"journey-{uuid.uuid4().hex[:8]}",
            trigger_segment_id=str(await decisioning.segment()),
            channels=[c.CHANNEL_EMAIL],
            template_id=await decisioning.template(),
        ),
        request_id=request_id,
    )


def offer_request(request_id: str = "", priority: int = 1) -> d.CreateOfferRequest:
    return d.CreateOfferRequest(
        offer=d.Offer(name=f"offer-{uuid.uuid4().hex[:8]}", touchpoints=["web_home"], priority=priority),
        request_id=request_id,
    )


async def counts(decisioning: Decisioning) -> tuple[int, int]:
    return (
        await decisioning.scalar("SELECT count(*) FROM journeys"),
        await decisioning.scalar("SELECT count(*) FROM offers"),
    )


async def test_a_retried_create_journey_answers_the_first_answer_and_creates_one_journey(
    decisioning: Decisioning,
) -> None:
    request = await journey_request(decisioning, new_id_str())
    first = await decisioning.stub.CreateJourney(request)
    again = await decisioning.stub.CreateJourney(request)

    assert again == first
    assert (
        await decisioning.scalar("SELECT count(*) FROM journeys WHERE name = :n", n=request.journey.name) == 1
    )
    assert [(a.scope, a.answered) for a in await stored_answers(decisioning.runtime, request.request_id)] == [
        ("CreateJourney", True)
    ]


async def test_a_retried_create_offer_answers_the_first_answer_and_creates_one_offer(
    decisioning: Decisioning,
) -> None:
    request = offer_request(new_id_str())
    first = await decisioning.stub.CreateOffer(request)
    again = await decisioning.stub.CreateOffer(request)

    assert again == first
    assert await decisioning.scalar("SELECT count(*) FROM offers WHERE name = :n", n=request.offer.name) == 1


async def test_the_same_id_with_other_content_is_refused_and_nothing_is_written(
    decisioning: Decisioning,
) -> None:
    journey = await journey_request(decisioning, new_id_str())
    await decisioning.stub.CreateJourney(journey)
    offer = offer_request(new_id_str())
    await decisioning.stub.CreateOffer(offer)
    before = await counts(decisioning)

    other_journey = await journey_request(decisioning, journey.request_id)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await decisioning.stub.CreateJourney(other_journey)
    assert_key_reused(refused.value, journey.request_id)
    reprioritised = d.CreateOfferRequest()
    reprioritised.CopyFrom(offer)
    reprioritised.offer.priority = 7
    for other in (offer_request(offer.request_id), reprioritised):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await decisioning.stub.CreateOffer(other)
        assert_key_reused(refused.value, offer.request_id)

    assert await counts(decisioning) == before


async def test_request_ids_are_per_method(decisioning: Decisioning) -> None:
    request_id = new_id_str()
    await decisioning.stub.CreateOffer(offer_request(request_id))
    journey = await decisioning.stub.CreateJourney(await journey_request(decisioning, request_id))
    assert journey.journey.id


async def test_without_a_request_id_each_create_is_new(decisioning: Decisioning) -> None:
    request = offer_request()
    await decisioning.stub.CreateOffer(request)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await decisioning.stub.CreateOffer(request)
    details = status_details(refused.value)
    assert details.code == grpc.StatusCode.ALREADY_EXISTS
    assert details.error_info is not None and details.error_info.reason == "OFFER_EXISTS"
    assert await stored_answers(decisioning.runtime, "") == []


@pytest.mark.parametrize("request_id", ["x" * 129, "key\x00", "ke\ny"])
async def test_a_malformed_request_id_is_refused(decisioning: Decisioning, request_id: str) -> None:
    before = await counts(decisioning)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await decisioning.stub.CreateOffer(offer_request(request_id))
    details = status_details(refused.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == {"request_id"}
    assert await counts(decisioning) == before


async def test_an_answer_past_the_retention_is_purged_and_its_id_free_again(decisioning: Decisioning) -> None:
    request_id = new_id_str()
    await decisioning.stub.CreateOffer(offer_request(request_id))

    await purge_aged(decisioning.runtime, request_id)

    newer = offer_request(request_id, priority=3)
    await decisioning.stub.CreateOffer(newer)
    assert await decisioning.scalar("SELECT count(*) FROM offers WHERE name = :n", n=newer.offer.name) == 1


async def test_an_erasure_removes_the_answers_showing_the_person(decisioning: Decisioning) -> None:
    async def erase(person_id: str) -> None:
        await forget(decisioning, uuid.UUID(person_id))

    await forget_shown_answers(decisioning.runtime, erase)
