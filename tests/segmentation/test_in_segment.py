"""Segments of segments: in_segment rules evaluated after the segments they refer to, in the same pass;
missing, archived and circular references refused; a segment in use cannot be archived."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from omni.segmentation.v1 import segmentation_pb2 as pb
from omni_kit.errors import status_details
from omni_kit.ids import new_id_str

from .builders import all_of, cart, not_, trait
from .support import EventLog, Segmentation, person, unique

ENTERED = "segmentation.person_entered_segment"
EXITED = "segmentation.person_exited_segment"


def member_of(segment_id: str) -> pb.Condition:
    return pb.Condition(in_segment=pb.InSegmentCondition(segment_id=segment_id))


async def test_loyal_but_not_vip(segmentation: Segmentation, events: EventLog) -> None:
    tag = unique("tier")
    loyal = await segmentation.create(
        unique("loyal"), all_of(trait("tag", pb.COMPARISON_EQ, tag), cart(pb.COMPARISON_GTE, 1))
    )
    vip = await segmentation.create(unique("vip"), all_of(member_of(loyal.id), cart(pb.COMPARISON_GTE, 5)))
    almost = await segmentation.create(
        unique("almost-vip"), all_of(member_of(loyal.id), not_(member_of(vip.id)))
    )
    someone = person()
    await segmentation.profile_changed(someone, traits={"tag": tag}, cart={"sku": 2})
    await events.wait_for(ENTERED, someone, count=2)
    assert await segmentation.segments_of(someone) == {loyal.name, almost.name}
    # One change moves the person through all three in one pass: into vip, out of almost-vip.
    await segmentation.profile_changed(someone, traits={"tag": tag}, cart={"sku": 6})
    await events.wait_for(EXITED, someone)
    assert await segmentation.segments_of(someone) == {loyal.name, vip.name}
    answer = await segmentation.stub.ExplainSegmentMembership(
        pb.ExplainSegmentMembershipRequest(segment_id=almost.id, person_id=someone)
    )
    assert [c.summary for c in answer.condition.children] == [
        f"a member of {loyal.name}",
        "the inner condition holds",
    ]

    # Neither a circle nor the archive of a segment in use is allowed.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await segmentation.stub.UpdateSegment(
            pb.UpdateSegmentRequest(
                segment=pb.Segment(id=loyal.id, condition=all_of(member_of(almost.id))),
                update_mask=FieldMask(paths=["condition"]),
            )
        )
    details = status_details(caught.value)
    assert (details.code, details.fields) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        {"segment.condition.all.conditions[0].in_segment.segment_id"},
    )
    circle = details.field_violations[0].description
    assert f"in a circle: {loyal.name} → {almost.name} → " in circle and circle.endswith(f"→ {loyal.name}")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await segmentation.stub.ArchiveSegment(pb.ArchiveSegmentRequest(segment_id=loyal.id))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = status_details(caught.value).error_info
    assert info is not None and info.reason == "SEGMENT_IN_USE"


async def test_references_that_cannot_be(segmentation: Segmentation) -> None:
    gone = await segmentation.create(unique("gone"), cart(pb.COMPARISON_GT, 0))
    await segmentation.stub.ArchiveSegment(pb.ArchiveSegmentRequest(segment_id=gone.id))
    itself = await segmentation.create(unique("itself"), cart(pb.COMPARISON_GT, 1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await segmentation.stub.CreateSegment(
            pb.CreateSegmentRequest(
                segment=pb.Segment(
                    name=unique("refers"),
                    condition=all_of(member_of(new_id_str()), member_of(gone.id), member_of("nope")),
                )
            )
        )
    details = status_details(caught.value)
    assert details.fields == {
        "segment.condition.all.conditions[2].in_segment.segment_id"
    }  # the proto's first
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await segmentation.stub.CreateSegment(
            pb.CreateSegmentRequest(
                segment=pb.Segment(
                    name=unique("refers"), condition=all_of(member_of(new_id_str()), member_of(gone.id))
                )
            )
        )
    details = status_details(caught.value)
    assert details.fields == {
        "segment.condition.all.conditions[0].in_segment.segment_id",
        "segment.condition.all.conditions[1].in_segment.segment_id",
    }
    assert "archived" in details.field_violations[1].description
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await segmentation.stub.UpdateSegment(
            pb.UpdateSegmentRequest(
                segment=pb.Segment(id=itself.id, condition=member_of(itself.id)),
                update_mask=FieldMask(paths=["condition"]),
            )
        )
    assert status_details(caught.value).fields == {"segment.condition.in_segment.segment_id"}
