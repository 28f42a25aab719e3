"""Decide in groups: calls arriving together are decided and logged in one transaction, each answered with
its own decision; offers are kept in memory and a change made through any replica is seen at once."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import cast

import grpc

from omni.decisioning.v1 import decisioning_pb2 as d
from omni.decisioning.v1 import decisioning_pb2_grpc, events_pb2
from omni_decisioning.main import Settings, start
from omni_kit.bus import unpack

from .support import WAIT_S, Decisioning
from .test_decide import DECISION_MADE, create_offer, decide, membership, touchpoint


async def test_calls_arriving_together_each_get_their_own_logged_and_announced_decision(
    decisioning: Decisioning,
) -> None:
    at = touchpoint()
    segment = await decisioning.segment()
    members_offer = await create_offer(
        decisioning, "members", priority=5, touchpoints=[at], segment_id=segment
    )
    open_offer = await create_offer(decisioning, "open", priority=1, touchpoints=[at])
    members = [uuid.uuid4() for _ in range(5)]
    for person in members:
        await membership(decisioning, person, segment, entered=True)
    others = [uuid.uuid4() for _ in range(5)]
    # 200 calls at once, each person asked about many times over.
    asked = [(members + others)[n % 10] for n in range(200)]
    answers = await asyncio.gather(*(decide(decisioning, person, at, limit=2) for person in asked))

    assert len({answer.decision_id for answer in answers}) == 200
    for person, answer in zip(asked, answers, strict=True):
        expected = [members_offer.id, open_offer.id] if person in members else [open_offer.id]
        assert [action.offer_id for action in answer.actions] == expected
    logged = await decisioning.rows(
        "SELECT id, person_id, offer_ids FROM decisions WHERE id = ANY(CAST(:ids AS uuid[]))",
        ids=[uuid.UUID(answer.decision_id) for answer in answers],
    )
    by_id = {row.id: row for row in logged}
    assert len(by_id) == 200
    for person, answer in zip(asked, answers, strict=True):
        row = by_id[uuid.UUID(answer.decision_id)]
        assert row.person_id == person
        assert [str(offer) for offer in row.offer_ids] == [action.offer_id for action in answer.actions]

    ids = {answer.decision_id for answer in answers}

    def announced() -> Counter[str]:
        return Counter(
            event.decision_id
            for event in (
                unpack(envelope, events_pb2.DecisionMadeEvent)
                for envelope in decisioning.published.matching(lambda e: e.type == DECISION_MADE)
            )
            if event.decision_id in ids
        )

    async with asyncio.timeout(WAIT_S):
        while True:
            if len(announced()) == 200:
                break
            await asyncio.sleep(0.05)
    assert set(announced().values()) == {1}


async def test_an_offer_created_through_another_replica_is_decided_at_once(decisioning: Decisioning) -> None:
    at = touchpoint()
    person = uuid.uuid4()
    first = await create_offer(decisioning, "first", priority=1, touchpoints=[at])
    assert [a.offer_id for a in (await decide(decisioning, person, at)).actions] == [first.id]

    settings = cast(Settings, decisioning.runtime.settings)
    replica = await start(settings.model_copy(update={"grpc_port": 0}))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as channel:
            other = decisioning_pb2_grpc.DecisioningServiceStub(channel)
            created = await other.CreateOffer(
                d.CreateOfferRequest(
                    offer=d.Offer(name=f"better-{uuid.uuid4().hex[:8]}", touchpoints=[at], priority=9)
                )
            )
            # The first replica cached the offers a moment ago; the new one is in its very next answer.
            assert [a.offer_id for a in (await decide(decisioning, person, at)).actions] == [
                created.offer.id,
                first.id,
            ]
            # And the replica that created it decides with it too.
            answer = await other.Decide(d.DecideRequest(person_id=str(person), touchpoint=at, limit=5))
            assert [a.offer_id for a in answer.actions] == [created.offer.id, first.id]
    finally:
        await replica.close()


async def test_a_touchpoint_no_offer_names_gets_the_offers_open_everywhere(decisioning: Decisioning) -> None:
    person = uuid.uuid4()
    everywhere = await create_offer(decisioning, "everywhere", priority=2_000_000_000, touchpoints=[])
    answer = await decide(decisioning, person, f"never_named_{uuid.uuid4().hex[:8]}", limit=20)
    offers = [action.offer_id for action in answer.actions]
    assert offers[0] == everywhere.id
    named = await decisioning.rows("SELECT id FROM offers WHERE cardinality(touchpoints) > 0")
    assert not {str(row.id) for row in named} & set(offers)
