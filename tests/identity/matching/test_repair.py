"""Cluster repair through the running service: a person split in two (the same customer filed under two
persons) is proposed for a merge, or, with OMNI_IDENTITY_MATCHING_REPAIR=merge, merged through the graph's
own merge (lineage, unmerge) and the record linked to the survivor."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from omni.common.v1 import common_pb2
from omni.identity.v1 import identity_pb2, matching_pb2
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres

from .conftest import running_matching
from .support import MatchingServer, person, unique_word

LINKED = matching_pb2.MATCH_DECISION_LINKED
REVIEW = matching_pb2.MATCH_DECISION_REVIEW
NEW_PERSON = matching_pb2.MATCH_DECISION_NEW_PERSON


@pytest.fixture(scope="module")
async def merging(postgres: EmbeddedPostgres, nats_server: EmbeddedNats) -> AsyncIterator[MatchingServer]:
    """A server whose repair rule merges."""
    async with running_matching(postgres, nats_server, repair="merge") as running:
        yield running


async def match(server: MatchingServer, record: matching_pb2.PersonRecord) -> matching_pb2.MatchResult:
    response = await server.stub.MatchRecord(matching_pb2.MatchRecordRequest(record=record, source="pos"))
    return response.result


async def split_person(server: MatchingServer) -> tuple[matching_pb2.PersonRecord, str, str]:
    """One customer filed under two persons: the second record carried an email another person holds, went
    to review, and an operator settled it as a new person."""
    record = person()
    first = await match(server, record)
    assert first.decision == NEW_PERSON
    email = common_pb2.Identifier(type="email", value=f"{unique_word()}@example.com")
    holder = await server.identity.ResolvePerson(
        identity_pb2.ResolvePersonRequest(identifiers=[email], source="web")
    )
    copy = matching_pb2.PersonRecord()
    copy.CopyFrom(record)
    copy.identifiers.append(email)
    review = await match(server, copy)
    assert review.decision == REVIEW
    assert list(review.identifier_person_ids) == [holder.resolution.person_id]
    settled = await server.stub.SettleMatchReview(
        matching_pb2.SettleMatchReviewRequest(
            decision_id=review.decision_id,
            outcome=matching_pb2.MATCH_REVIEW_OUTCOME_NEW_PERSON,
            reviewer="ops@example.com",
            reason="not the email's owner",
            request_id=f"settle-{uuid.uuid4()}",
        )
    )
    second = settled.result.person_id
    assert second and second != first.person_id
    return record, first.person_id, second


async def test_a_record_matching_a_split_person_proposes_the_merge(server: MatchingServer) -> None:
    record, first, second = await split_person(server)
    result = await match(server, record)
    assert result.decision == REVIEW
    assert list(result.proposed_merge_person_ids) == sorted([first, second])
    reviews = await server.stub.ListMatchReviews(matching_pb2.ListMatchReviewsRequest(page_size=1000))
    [listed] = [r for r in reviews.reviews if r.id == result.decision_id]
    assert list(listed.proposed_merge_person_ids) == sorted([first, second])
    # Nothing was merged: that is the operator's call under the default rule.
    got = await server.identity.GetPerson(identity_pb2.GetPersonRequest(person_id=second))
    assert got.person.id == second


async def test_under_the_merge_rule_the_split_heals_with_lineage(merging: MatchingServer) -> None:
    record, first, second = await split_person(merging)
    survivor, merged = sorted([first, second])
    result = await match(merging, record)
    assert result.decision == LINKED
    assert result.person_id == survivor
    assert list(result.proposed_merge_person_ids) == [survivor, merged]
    lineage = await merging.identity.ListPersonMerges(
        identity_pb2.ListPersonMergesRequest(person_id=survivor)
    )
    [merge] = [m for m in lineage.merges if m.merged_person_id == merged]
    assert merge.survivor_person_id == survivor
    assert merge.rule == identity_pb2.MERGE_RULE_OPERATOR
    assert merge.reason.startswith("match repair")
    # The review the record went to is settled by the repair, and the next record links without one.
    decisions = await merging.stub.ListMatchDecisions(
        matching_pb2.ListMatchDecisionsRequest(person_id=survivor)
    )
    [review] = [
        d
        for d in decisions.decisions
        if d.decision == REVIEW and d.settlement.decision_id == result.decision_id
    ]
    assert review.settlement.reviewer == "match repair"
    again = await match(merging, record)
    assert again.decision == LINKED and again.person_id == survivor
    assert not again.proposed_merge_person_ids
    # An operator can still undo it.
    await merging.identity.UnmergePerson(
        identity_pb2.UnmergePersonRequest(
            person_id=merged, request_id=f"unmerge-{uuid.uuid4()}", reason="they were two after all"
        )
    )
    got = await merging.identity.GetPerson(identity_pb2.GetPersonRequest(person_id=merged))
    assert got.person.id == merged
