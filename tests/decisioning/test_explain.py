"""Decide with explain: every live offer with the stage that left it out, or its place among the eligible."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from google.protobuf.field_mask_pb2 import FieldMask

from omni.decisioning.v1 import decisioning_pb2 as d

from .support import Decisioning
from .test_decide import create_offer, membership, touchpoint
from .test_offers import stamp

V = d.Explanation.Verdict


async def test_each_offer_says_why_it_was_chosen_or_left_out(decisioning: Decisioning) -> None:
    at = touchpoint()
    person = uuid.uuid4()
    segment, other_segment = await decisioning.segment(), await decisioning.segment()
    await membership(decisioning, person, segment, entered=True)
    best = await create_offer(decisioning, "best", priority=1_000_001, touchpoints=[at], segment_id=segment)
    elsewhere = await create_offer(
        decisioning, "elsewhere", priority=1_000_002, touchpoints=["somewhere_else"]
    )
    members = await create_offer(
        decisioning, "members", priority=1_000_003, touchpoints=[at], segment_id=other_segment
    )
    later = await create_offer(decisioning, "later", priority=1_000_004, touchpoints=[at])
    await decisioning.stub.UpdateOffer(
        d.UpdateOfferRequest(
            offer=d.Offer(id=later.id, valid_from=stamp(datetime.now(UTC) + timedelta(days=1))),
            update_mask=FieldMask(paths=["valid_from"]),
        )
    )
    second = await create_offer(decisioning, "second", priority=1_000_000, touchpoints=[at])

    answer = await decisioning.stub.Decide(
        d.DecideRequest(person_id=str(person), touchpoint=at, limit=1, explain=True)
    )
    assert [a.offer_id for a in answer.actions] == [best.id]
    mine = {best.id, elsewhere.id, members.id, later.id, second.id}
    explained = {e.offer_id: e for e in answer.explanations if e.offer_id in mine}
    assert {offer_id: e.verdict for offer_id, e in explained.items()} == {
        best.id: V.VERDICT_CHOSEN,
        elsewhere.id: V.VERDICT_NOT_AT_TOUCHPOINT,
        members.id: V.VERDICT_NOT_IN_SEGMENT,
        later.id: V.VERDICT_NOT_VALID_NOW,
        second.id: V.VERDICT_OUTRANKED,
    }
    assert (explained[best.id].rank, explained[second.id].rank) == (1, 2)
    assert explained[elsewhere.id].rank == 0 and explained[elsewhere.id].score == 1_000_002
    assert "not shown at" in explained[elsewhere.id].detail
    assert explained[second.id].detail == "ranked 2nd; the limit is 1"
    # Ranking order, and what the explanation calls chosen is exactly what was answered.
    scores = [e.score for e in answer.explanations]
    assert scores == sorted(scores, reverse=True)
    assert [e.offer_id for e in answer.explanations if e.verdict == V.VERDICT_CHOSEN] == [
        a.offer_id for a in answer.actions
    ]


async def test_without_explain_there_are_no_explanations(decisioning: Decisioning) -> None:
    at = touchpoint()
    await create_offer(decisioning, "plain", touchpoints=[at])
    answer = await decisioning.stub.Decide(d.DecideRequest(person_id=str(uuid.uuid4()), touchpoint=at))
    assert len(answer.actions) == 1 and not answer.explanations
