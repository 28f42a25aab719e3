"""Decide over gRPC: eligibility by touchpoint and segment membership, ranking, logging and its event."""

from __future__ import annotations

import uuid

from google.protobuf.struct_pb2 import Struct

from omni.common.v1 import common_pb2 as c
from omni.decisioning.v1 import decisioning_pb2 as d
from omni.decisioning.v1 import events_pb2
from omni.events.v1 import envelope_pb2
from omni.identity.v1 import events_pb2 as identity_events
from omni.segmentation.v1 import events_pb2 as segmentation_events
from omni_kit.bus import unpack

from .support import Decisioning

DECISION_MADE = "decisioning.decision_made"


def touchpoint() -> str:
    """A touchpoint of this test only, so offers of other tests stay out of its decisions."""
    return f"web_home_{uuid.uuid4().hex[:8]}"


async def create_offer(
    decisioning: Decisioning,
    name: str,
    *,
    priority: int = 0,
    touchpoints: list[str],
    segment_id: uuid.UUID | None = None,
) -> d.Offer:
    response = await decisioning.stub.CreateOffer(
        d.CreateOfferRequest(
            offer=d.Offer(
                name=f"{name}-{uuid.uuid4().hex[:8]}",
                description=f"{name}: 10% off",
                touchpoints=touchpoints,
                segment_id=str(segment_id) if segment_id else "",
                priority=priority,
            )
        )
    )
    return response.offer


async def membership(
    decisioning: Decisioning, person: uuid.UUID, segment: uuid.UUID, *, entered: bool
) -> envelope_pb2.Envelope:
    """Feed an entered or exited event and wait until decisioning has applied it."""
    payload = (
        segmentation_events.PersonEnteredSegmentEvent(person_id=str(person), segment_id=str(segment))
        if entered
        else segmentation_events.PersonExitedSegmentEvent(person_id=str(person), segment_id=str(segment))
    )
    kind = "entered" if entered else "exited"
    envelope = await decisioning.feed(
        payload, event_type=f"segmentation.person_{kind}_segment", person_id=str(person)
    )
    await decisioning.eventually("SELECT 1 FROM inbox WHERE event_id = :e", e=uuid.UUID(envelope.id))
    return envelope


async def decide(decisioning: Decisioning, person: uuid.UUID, at: str, limit: int = 20) -> d.DecideResponse:
    return await decisioning.stub.Decide(d.DecideRequest(person_id=str(person), touchpoint=at, limit=limit))


def names(response: d.DecideResponse) -> list[str]:
    return [action.offer_name.rsplit("-", 1)[0] for action in response.actions]


async def test_offers_are_ranked_by_priority_then_age(decisioning: Decisioning) -> None:
    at = touchpoint()
    low = await create_offer(decisioning, "low", priority=1, touchpoints=[at])
    first = await create_offer(decisioning, "first", priority=10, touchpoints=[at])
    await create_offer(decisioning, "second", priority=10, touchpoints=[at, "pos_checkout"])
    await create_offer(decisioning, "elsewhere", priority=99, touchpoints=["pos_checkout"])

    response = await decide(decisioning, uuid.uuid4(), at)
    assert names(response) == ["first", "second", "low"]
    assert [a.score for a in response.actions] == [10.0, 10.0, 1.0]
    assert response.actions[0].offer_id == first.id
    assert response.actions[0].description == first.description
    assert response.actions[2].offer_id == low.id


async def test_limit_zero_means_one(decisioning: Decisioning) -> None:
    at = touchpoint()
    await create_offer(decisioning, "a", priority=2, touchpoints=[at])
    await create_offer(decisioning, "b", priority=1, touchpoints=[at])
    assert names(await decide(decisioning, uuid.uuid4(), at, limit=0)) == ["a"]
    assert names(await decide(decisioning, uuid.uuid4(), at, limit=2)) == ["a", "b"]


async def test_segment_offers_go_to_members_only(decisioning: Decisioning) -> None:
    at = touchpoint()
    segment, person, other = await decisioning.segment(), uuid.uuid4(), uuid.uuid4()
    await create_offer(decisioning, "vip", priority=100, touchpoints=[at], segment_id=segment)
    await create_offer(decisioning, "everyone", priority=1, touchpoints=[at])

    assert names(await decide(decisioning, person, at)) == ["everyone"]
    await membership(decisioning, person, segment, entered=True)
    assert names(await decide(decisioning, person, at)) == ["vip", "everyone"]
    assert names(await decide(decisioning, other, at)) == ["everyone"]
    await membership(decisioning, person, segment, entered=False)
    assert names(await decide(decisioning, person, at)) == ["everyone"]


async def test_a_merged_person_decides_as_the_survivor(decisioning: Decisioning) -> None:
    at = touchpoint()
    segment, survivor, merged = await decisioning.segment(), uuid.uuid4(), uuid.uuid4()
    await create_offer(decisioning, "vip", priority=5, touchpoints=[at], segment_id=segment)
    await membership(decisioning, merged, segment, entered=True)
    envelope = await decisioning.feed(
        identity_events.PersonsMergedEvent(survivor_person_id=str(survivor), merged_person_ids=[str(merged)]),
        event_type="identity.persons_merged",
        person_id=str(survivor),
    )
    await decisioning.eventually("SELECT 1 FROM inbox WHERE event_id = :e", e=uuid.UUID(envelope.id))
    assert names(await decide(decisioning, survivor, at)) == ["vip"]
    response = await decide(decisioning, merged, at)
    assert names(response) == ["vip"]
    assert (
        await decisioning.scalar(
            "SELECT person_id FROM decisions WHERE id = :id", id=uuid.UUID(response.decision_id)
        )
        == survivor
    )


async def test_nothing_eligible_is_an_empty_answer_and_still_logged(decisioning: Decisioning) -> None:
    at = touchpoint()
    await create_offer(
        decisioning, "members", priority=5, touchpoints=[at], segment_id=await decisioning.segment()
    )
    response = await decide(decisioning, uuid.uuid4(), at)
    assert list(response.actions) == []
    assert response.decision_id
    assert (
        await decisioning.scalar(
            "SELECT cardinality(offer_ids) FROM decisions WHERE id = :id", id=uuid.UUID(response.decision_id)
        )
        == 0
    )


async def test_the_decision_is_logged_and_announced(decisioning: Decisioning) -> None:
    at = touchpoint()
    person = uuid.uuid4()
    top = await create_offer(decisioning, "top", priority=3, touchpoints=[at])
    nxt = await create_offer(decisioning, "next", priority=2, touchpoints=[at])
    context = Struct()
    context.update({"store_id": "berlin-1"})
    response = await decisioning.stub.Decide(
        d.DecideRequest(
            person_id=str(person), touchpoint=at, channel=c.CHANNEL_STORE, context=context, limit=2
        )
    )

    row = (
        await decisioning.rows(
            "SELECT person_id, touchpoint, channel, context, offer_ids FROM decisions WHERE id = :id",
            id=uuid.UUID(response.decision_id),
        )
    )[0]
    assert row.person_id == person
    assert row.touchpoint == at
    assert row.channel == c.CHANNEL_STORE
    assert row.context == {"store_id": "berlin-1"}
    assert [str(o) for o in row.offer_ids] == [top.id, nxt.id]

    envelope = await decisioning.published.wait_for(
        lambda e: e.type == DECISION_MADE and e.person_id == str(person)
    )
    event = unpack(envelope, events_pb2.DecisionMadeEvent)
    assert event.decision_id == response.decision_id
    assert event.person_id == str(person)
    assert event.touchpoint == at
    assert list(event.offer_ids) == [top.id, nxt.id]


async def test_offers_for_every_touchpoint_and_the_created_offer_echoes_back(
    decisioning: Decisioning,
) -> None:
    at = touchpoint()
    segment = await decisioning.segment()
    anywhere = await create_offer(decisioning, "anywhere", priority=-1000, touchpoints=[], segment_id=segment)
    assert list(anywhere.touchpoints) == []
    assert anywhere.segment_id == str(segment)
    assert anywhere.priority == -1000
    assert anywhere.create_time.seconds > 0
    assert uuid.UUID(anywhere.id).version == 7
    person = uuid.uuid4()
    await membership(decisioning, person, segment, entered=True)
    response = await decide(decisioning, person, at)
    assert anywhere.id in [a.offer_id for a in response.actions]
