"""Rules on consent per channel and purpose: profile's contact verdicts (profile.contact_verdict_changed,
kept by omni_kit.contact), live, on backfill and in preview and explain; newest version wins; erasure
forgets them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import grpc
import pytest

from omni.common.v1 import common_pb2
from omni.events.v1 import envelope_pb2
from omni.identity.v1 import events_pb2 as identity_events
from omni.profile.v1 import profile_pb2
from omni.segmentation.v1 import segmentation_pb2 as pb
from omni_kit import contact
from omni_kit.errors import status_details

from .builders import all_of, not_, trait
from .support import EventLog, Segmentation, eventually, person, unique

ENTERED = "segmentation.person_entered_segment"
EXITED = "segmentation.person_exited_segment"
PUSH, EMAIL = common_pb2.CHANNEL_PUSH, common_pb2.CHANNEL_EMAIL


def reachable(
    channel: int, purpose: int = profile_pb2.CONSENT_PURPOSE_MARKETING, allowed: bool = True
) -> pb.Condition:
    return pb.Condition(contact=pb.ContactCondition(channel=channel, purpose=purpose, allowed=allowed))  # type: ignore[arg-type]


async def verdicts(
    segmentation: Segmentation, person_id: str, version: int, **allowed: bool
) -> envelope_pb2.Envelope:
    """Publish profile's marketing verdicts for channels by name (push=True, email=False)."""
    items = [
        contact.Verdict(
            common_pb2.Channel.Value(f"CHANNEL_{name.upper()}"),
            contact.Purpose.MARKETING,
            ok,
            contact.Reason.CONSENT_GRANTED if ok else contact.Reason.REVOKED,
        )
        for name, ok in allowed.items()
    ]
    payload = contact.verdict_changed_event(
        uuid.UUID(person_id), items, version=version, decided_at=datetime.now(UTC)
    )
    return await segmentation.publish(
        payload, event_type=contact.CONTACT_VERDICT_CHANGED, producer="profile", person_id=person_id
    )


async def test_opted_in_to_push_live_and_by_version(segmentation: Segmentation, events: EventLog) -> None:
    opted_in = await segmentation.create(unique("push-opt-in"), reachable(PUSH))
    someone = person()
    await verdicts(segmentation, someone, 5, push=True, email=False)
    await events.wait_for(ENTERED, someone)
    assert opted_in.name in await segmentation.segments_of(someone)

    # An older announcement arriving late changes nothing; a newer one takes the person out.
    stale = await verdicts(segmentation, someone, 3, push=False)
    await segmentation.consumed(stale)
    assert opted_in.name in await segmentation.segments_of(someone)
    await verdicts(segmentation, someone, 6, push=False)
    await events.wait_for(EXITED, someone)
    assert opted_in.name not in await segmentation.segments_of(someone)


async def test_no_answer_is_refused_marketing_and_allowed_transactional(
    segmentation: Segmentation,
) -> None:
    tag = unique("silent")
    silent = person()
    await segmentation.consumed(await segmentation.profile_changed(silent, traits={"tag": tag}))
    ours = trait("tag", pb.COMPARISON_EQ, tag)
    marketing = await segmentation.stub.PreviewSegment(
        pb.PreviewSegmentRequest(condition=all_of(ours, reachable(EMAIL)))
    )
    refused = await segmentation.stub.PreviewSegment(
        pb.PreviewSegmentRequest(condition=all_of(ours, reachable(EMAIL, allowed=False)))
    )
    receipts = await segmentation.stub.PreviewSegment(
        pb.PreviewSegmentRequest(
            condition=all_of(ours, reachable(EMAIL, profile_pb2.CONSENT_PURPOSE_TRANSACTIONAL))
        )
    )
    assert (marketing.match_count, refused.match_count, receipts.match_count) == (0, 1, 1)


async def test_consent_on_backfill_and_explained(segmentation: Segmentation, events: EventLog) -> None:
    tag = unique("consented")
    granted, revoked = person(), person()
    for someone in (granted, revoked):
        await segmentation.consumed(await segmentation.profile_changed(someone, traits={"tag": tag}))
    await segmentation.consumed(
        await verdicts(segmentation, granted, 1, email=True),
        await verdicts(segmentation, revoked, 1, email=False),
    )
    newsletter = await segmentation.create(tag, all_of(trait("tag", pb.COMPARISON_EQ, tag), reachable(EMAIL)))
    await events.wait_for(ENTERED, granted, timeout_s=10)
    assert newsletter.name not in await segmentation.segments_of(revoked)
    answer = await segmentation.stub.ExplainSegmentMembership(
        pb.ExplainSegmentMembershipRequest(segment_id=newsletter.id, person_id=revoked)
    )
    node = answer.condition.children[1]
    assert (node.kind, node.holds) == ("contact", False)
    assert node.summary == "marketing on email is refused: revoked (asked: allowed)"


async def test_erasure_forgets_the_verdicts(segmentation: Segmentation) -> None:
    someone = person()
    await segmentation.consumed(await verdicts(segmentation, someone, 1, push=True))
    assert (
        await segmentation.scalar(
            "SELECT count(*) FROM contact_verdicts WHERE person_id = CAST(:p AS uuid)", p=someone
        )
        == 1
    )
    forgotten = await segmentation.publish(
        _forgotten(someone), event_type="identity.person_forgotten", producer="identity", person_id=someone
    )
    await segmentation.consumed(forgotten)
    await eventually(
        lambda: segmentation.scalar(
            "SELECT verdicts = '[]'::jsonb FROM contact_verdicts WHERE person_id = CAST(:p AS uuid)",
            p=someone,
        )
    )
    late = await verdicts(segmentation, someone, 2, push=True)
    await segmentation.consumed(late)
    assert (
        await segmentation.scalar(
            "SELECT count(*) FROM persons WHERE person_id = CAST(:p AS uuid)", p=someone
        )
        == 0
    )


def _forgotten(person_id: str) -> identity_events.PersonForgottenEvent:
    return identity_events.PersonForgottenEvent(person_id=person_id, forgotten_person_ids=[person_id])


@pytest.mark.parametrize(
    ("condition", "fields"),
    [
        (reachable(0), {"segment.condition.contact.channel"}),
        (reachable(99), {"segment.condition.contact.channel"}),
        (reachable(PUSH, profile_pb2.CONSENT_PURPOSE_ANALYTICS), {"segment.condition.contact.purpose"}),
        (not_(reachable(PUSH, 0)), {"segment.condition.not.contact.purpose"}),
    ],
)
async def test_bad_contact_rules(
    segmentation: Segmentation, condition: pb.Condition, fields: set[str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await segmentation.stub.CreateSegment(
            pb.CreateSegmentRequest(segment=pb.Segment(name=unique("bad-contact"), condition=condition))
        )
    details = status_details(caught.value)
    assert (details.code, details.fields) == (grpc.StatusCode.INVALID_ARGUMENT, fields)
