"""An operator undoes a wrong merge: two customers merged by mistake are split again, and profile and
segmentation follow identity. The restored customer's events go back to her profile, those from before the
merge and those identity resolved to the other customer while they were one; she is in the segments her own
behaviour earns, the other customer leaves those he held only through her, and her later events count for
her alone."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from typing import TypeVar

from google.protobuf.duration_pb2 import Duration

from omni.common.v1 import common_pb2
from omni.identity.v1 import identity_pb2
from omni.profile.v1 import profile_pb2
from omni.segmentation.v1 import segmentation_pb2
from tests.e2e.conftest import Omni
from tests.e2e.test_abandoned_cart import event, eventually

T = TypeVar("T")


def _store_visits(at_least: int) -> segmentation_pb2.Condition:
    """At least that many store visits in the last hour."""
    return segmentation_pb2.Condition(
        event_count=segmentation_pb2.EventCountCondition(
            event_type="store_visited",
            window=Duration(seconds=3600),
            comparison=segmentation_pb2.COMPARISON_GTE,
            count=at_least,
        )
    )


async def test_an_operator_unmerge_splits_profile_and_segments(omni: Omni) -> None:
    for name, visits in (("store-visitors", 1), ("store-regulars", 2), ("store-loyals", 3)):
        await omni.segmentation.CreateSegment(
            segmentation_pb2.CreateSegmentRequest(
                segment=segmentation_pb2.Segment(name=name, condition=_store_visits(visits))
            )
        )
    tag = uuid.uuid4().hex[:8]
    ana_email, bea_email = f"ana.garcia.{tag}@example.com", f"bea.garcia.{tag}@example.com"

    async def track(kind: str, channel: int, email: str) -> str:
        response = await omni.profile.TrackEvent(
            profile_pb2.TrackEventRequest(event=event(kind, channel, ("email", email)))
        )
        return response.person_id

    async def segments_of(person_id: str) -> set[str]:
        response = await omni.segmentation.ListPersonSegments(
            segmentation_pb2.ListPersonSegmentsRequest(person_id=person_id)
        )
        return {m.segment_name for m in response.memberships}

    async def event_types(person_id: str) -> list[str]:
        response = await omni.profile.GetProfile(profile_pb2.GetProfileRequest(person_id=person_id))
        return sorted(e.type for e in response.profile.recent_events)

    ana = await track("page_viewed", common_pb2.CHANNEL_WEB, ana_email)
    bea = await track("store_visited", common_pb2.CHANNEL_STORE, bea_email)
    await eventually(
        lambda: _equal(segments_of(bea), {"store-visitors"}), "Bea in store-visitors after her visit"
    )

    # Two customers of the same surname, merged by mistake.
    await omni.identity.MergePersons(
        identity_pb2.MergePersonsRequest(
            request_id=f"merge-{tag}", survivor_person_id=ana, merged_person_id=bea, reason="same customer?"
        )
    )
    await eventually(
        lambda: _equal(segments_of(ana), {"store-visitors"}), "Ana in store-visitors through Bea's visit"
    )
    await eventually(
        lambda: _equal(event_types(ana), ["page_viewed", "store_visited"]), "Bea's visit on Ana's profile"
    )
    # While they are one, Bea's next visit (her email) is resolved to Ana: it counts for Ana everywhere.
    assert await track("store_visited", common_pb2.CHANNEL_STORE, bea_email) == ana
    await eventually(
        lambda: _equal(segments_of(ana), {"store-visitors", "store-regulars"}), "Ana a regular through Bea"
    )

    unmerged = await omni.identity.UnmergePerson(
        identity_pb2.UnmergePersonRequest(request_id=f"unmerge-{tag}", person_id=bea, reason="not the same")
    )
    assert unmerged.restored_person.id == bea
    assert unmerged.survivor_person.id == ana

    # Both of Bea's visits go back to her, the one from before the merge and the one made while they were one.
    await eventually(
        lambda: _equal(event_types(bea), ["store_visited", "store_visited"]),
        "Bea's visits back on her profile",
    )
    assert await event_types(ana) == ["page_viewed"]
    await eventually(lambda: _equal(segments_of(ana), set()), "Ana out of the store segments")
    await eventually(
        lambda: _equal(segments_of(bea), {"store-visitors", "store-regulars"}), "Bea a store regular again"
    )

    # Bea comes back to the store: her third visit counts for her, not for Ana.
    assert await track("store_visited", common_pb2.CHANNEL_STORE, bea_email) == bea
    await eventually(
        lambda: _equal(segments_of(bea), {"store-visitors", "store-regulars", "store-loyals"}),
        "Bea a loyal store customer",
    )
    assert await segments_of(ana) == set()


async def _equal(actual: Awaitable[T], expected: T) -> bool:
    """Whether the awaited value equals expected (a probe for eventually)."""
    return await actual == expected
