"""A segment's lifecycle over gRPC: update (a new version, members re-evaluated, only the difference
announced), archive (members exit, announced), members listed, counted and exported, request ids, and
bad input answered with field violations."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from omni.segmentation.v1 import events_pb2
from omni.segmentation.v1 import segmentation_pb2 as pb
from omni_kit.bus import unpack
from omni_kit.errors import status_details
from omni_kit.ids import new_id_str

from .builders import all_of, cart, trait
from .support import EventLog, Segmentation, eventually, person, unique

ENTERED = "segmentation.person_entered_segment"
EXITED = "segmentation.person_exited_segment"


async def with_cart(segmentation: Segmentation, units: int) -> str:
    """A new person with that many units in the cart, applied."""
    someone = person()
    await segmentation.consumed(
        await segmentation.profile_changed(someone, cart={"sku": units} if units else {}, changed=("cart",))
    )
    return someone


async def backfilled(segmentation: Segmentation) -> None:
    await eventually(lambda: segmentation.scalar("SELECT count(*) = 0 FROM backfills"), timeout_s=10)


def of_segment(events: EventLog, event_type: str, segment_id: str) -> list[str]:
    """The persons of the enter (or exit) events of one segment."""
    payload_type = (
        events_pb2.PersonEnteredSegmentEvent if event_type == ENTERED else events_pb2.PersonExitedSegmentEvent
    )
    found = []
    for envelope in events.of(event_type):
        payload = unpack(envelope, payload_type)
        if payload.segment_id == segment_id:
            found.append(payload.person_id)
    return found


def reason(error: grpc.aio.AioRpcError) -> str:
    info = status_details(error).error_info
    return info.reason if info is not None else ""


async def refused(call: object, request: object) -> tuple[grpc.StatusCode, set[str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(request)  # type: ignore[operator]
    details = status_details(caught.value)
    return details.code, details.fields


async def test_a_changed_condition_is_a_new_version_announcing_only_the_difference(
    segmentation: Segmentation, events: EventLog
) -> None:
    one, three, five = [await with_cart(segmentation, units) for units in (1, 3, 5)]
    shopping = await segmentation.create(unique("shopping"), cart(pb.COMPARISON_GTE, 1))
    await backfilled(segmentation)
    for someone in (one, three, five):
        await events.wait_for(ENTERED, someone)  # the relay publishes the backfill's entries a moment later
    assert {one, three, five} <= set(of_segment(events, ENTERED, shopping.id))
    assert shopping.version == 1

    changed = pb.Segment(id=shopping.id, condition=cart(pb.COMPARISON_GTE, 3), description="bigger carts")
    response = await segmentation.stub.UpdateSegment(
        pb.UpdateSegmentRequest(segment=changed, update_mask=FieldMask(paths=["condition", "description"]))
    )
    assert response.segment.version == 2
    assert response.segment.description == "bigger carts"
    assert response.segment.name == shopping.name  # not in the mask: kept
    assert response.segment.update_time.ToDatetime() > shopping.create_time.ToDatetime()
    await backfilled(segmentation)
    await eventually(lambda: _exited(events, shopping.id, one))
    assert of_segment(events, EXITED, shopping.id) == [one]
    assert sorted(of_segment(events, ENTERED, shopping.id)).count(three) == 1
    assert shopping.name in await segmentation.segments_of(five)
    assert shopping.name not in await segmentation.segments_of(one)

    # Live evaluation follows the new version at once.
    two = await with_cart(segmentation, 2)
    four = await with_cart(segmentation, 4)
    assert shopping.name not in await segmentation.segments_of(two)
    assert shopping.name in await segmentation.segments_of(four)

    fetched = await segmentation.stub.GetSegment(pb.GetSegmentRequest(segment_id=shopping.id))
    assert fetched.segment == response.segment


async def _exited(events: EventLog, segment_id: str, person_id: str) -> bool:
    return person_id in of_segment(events, EXITED, segment_id)


async def test_an_update_changing_nothing_keeps_the_version(segmentation: Segmentation) -> None:
    gold = await segmentation.create(unique("gold"), trait("plan", pb.COMPARISON_EQ, "gold"))
    same = pb.Segment(id=gold.id, name=gold.name, description=gold.description, condition=gold.condition)
    response = await segmentation.stub.UpdateSegment(pb.UpdateSegmentRequest(segment=same))
    assert response.segment == gold
    renamed = await segmentation.stub.UpdateSegment(
        pb.UpdateSegmentRequest(
            segment=pb.Segment(id=gold.id, name=unique("golden")), update_mask=FieldMask(paths=["name"])
        )
    )
    assert renamed.segment.version == 1
    assert renamed.segment.condition == gold.condition


async def test_an_update_naming_another_segment_or_an_old_version(segmentation: Segmentation) -> None:
    first = await segmentation.create(unique("first"), cart(pb.COMPARISON_GT, 0))
    second = await segmentation.create(unique("second"), cart(pb.COMPARISON_GT, 1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await segmentation.stub.UpdateSegment(
            pb.UpdateSegmentRequest(
                segment=pb.Segment(id=second.id, name=first.name), update_mask=FieldMask(paths=["name"])
            )
        )
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert reason(caught.value) == "SEGMENT_NAME_TAKEN"

    await segmentation.stub.UpdateSegment(
        pb.UpdateSegmentRequest(
            segment=pb.Segment(id=second.id, condition=cart(pb.COMPARISON_GT, 2)),
            update_mask=FieldMask(paths=["condition"]),
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await segmentation.stub.UpdateSegment(
            pb.UpdateSegmentRequest(
                segment=pb.Segment(id=second.id, condition=cart(pb.COMPARISON_GT, 3)),
                update_mask=FieldMask(paths=["condition"]),
                expected_version=1,
            )
        )
    assert caught.value.code() == grpc.StatusCode.ABORTED
    assert reason(caught.value) == "SEGMENT_VERSION_CHANGED"

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await segmentation.stub.UpdateSegment(
            pb.UpdateSegmentRequest(
                segment=pb.Segment(id=new_id_str(), description="x"),
                update_mask=FieldMask(paths=["description"]),
            )
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_bad_updates(segmentation: Segmentation) -> None:
    gold = await segmentation.create(unique("gold"), trait("plan", pb.COMPARISON_EQ, "gold"))
    update = segmentation.stub.UpdateSegment
    assert await refused(update, pb.UpdateSegmentRequest()) == (grpc.StatusCode.INVALID_ARGUMENT, {"segment"})
    assert await refused(
        update,
        pb.UpdateSegmentRequest(
            segment=pb.Segment(id="nope", name="ok"), update_mask=FieldMask(paths=["name"])
        ),
    ) == (grpc.StatusCode.INVALID_ARGUMENT, {"segment.id"})
    assert await refused(
        update,
        pb.UpdateSegmentRequest(
            segment=pb.Segment(id=gold.id, name="Bad Name"),
            update_mask=FieldMask(paths=["name", "version", "create_time"]),
        ),
    ) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        {"segment.name", "update_mask.paths[1]", "update_mask.paths[2]"},
    )
    assert await refused(
        update,
        pb.UpdateSegmentRequest(
            segment=pb.Segment(id=gold.id, condition=all_of(trait("plan", pb.COMPARISON_GT, {"a": 1}))),
            update_mask=FieldMask(paths=["condition"]),
        ),
    ) == (grpc.StatusCode.INVALID_ARGUMENT, {"segment.condition.all.conditions[0].trait.value"})
    # The condition is required when the mask names it.
    assert await refused(
        update,
        pb.UpdateSegmentRequest(segment=pb.Segment(id=gold.id), update_mask=FieldMask(paths=["condition"])),
    ) == (grpc.StatusCode.INVALID_ARGUMENT, {"segment.condition"})
    assert await refused(
        update,
        pb.UpdateSegmentRequest(
            segment=pb.Segment(id=gold.id, description="x"),
            update_mask=FieldMask(paths=["description"]),
            request_id="a\x00b",
        ),
    ) == (grpc.StatusCode.INVALID_ARGUMENT, {"request_id"})
    fetched = await segmentation.stub.GetSegment(pb.GetSegmentRequest(segment_id=gold.id))
    assert fetched.segment == gold


async def test_an_update_once_per_request_id(segmentation: Segmentation) -> None:
    gold = await segmentation.create(unique("gold"), trait("plan", pb.COMPARISON_EQ, "gold"))
    request_id = new_id_str()
    request = pb.UpdateSegmentRequest(
        segment=pb.Segment(id=gold.id, condition=trait("plan", pb.COMPARISON_EQ, "platinum")),
        update_mask=FieldMask(paths=["condition"]),
        request_id=request_id,
    )
    first = await segmentation.stub.UpdateSegment(request)
    again = await segmentation.stub.UpdateSegment(request)
    assert again == first
    assert first.segment.version == 2
    other = pb.UpdateSegmentRequest()
    other.CopyFrom(request)
    other.segment.condition.CopyFrom(trait("plan", pb.COMPARISON_EQ, "silver"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await segmentation.stub.UpdateSegment(other)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert reason(caught.value) == "IDEMPOTENCY_KEY_REUSED"
    fetched = await segmentation.stub.GetSegment(pb.GetSegmentRequest(segment_id=gold.id))
    assert fetched.segment.version == 2


async def test_archiving_takes_every_member_out(segmentation: Segmentation, events: EventLog) -> None:
    a, b = await with_cart(segmentation, 1), await with_cart(segmentation, 2)
    shopping = await segmentation.create(unique("shopping"), cart(pb.COMPARISON_GTE, 1))
    await backfilled(segmentation)
    assert shopping.name in await segmentation.segments_of(a)
    members = await segmentation.stub.CountSegmentMembers(
        pb.CountSegmentMembersRequest(segment_id=shopping.id)
    )
    assert members.member_count >= 2

    request_id = new_id_str()
    archived = await segmentation.stub.ArchiveSegment(
        pb.ArchiveSegmentRequest(segment_id=shopping.id, request_id=request_id)
    )
    assert archived.exited_count == members.member_count
    assert archived.segment.HasField("archive_time")
    again = await segmentation.stub.ArchiveSegment(
        pb.ArchiveSegmentRequest(segment_id=shopping.id, request_id=request_id)
    )
    assert again == archived
    await events.wait_for(EXITED, a)
    await events.wait_for(EXITED, b)
    assert set(of_segment(events, EXITED, shopping.id)) >= {a, b}
    assert shopping.name not in await segmentation.segments_of(a)
    count = await segmentation.stub.CountSegmentMembers(pb.CountSegmentMembersRequest(segment_id=shopping.id))
    assert count.member_count == 0

    # Nobody enters it again, and it cannot be changed; it stays readable.
    c = await with_cart(segmentation, 3)
    assert shopping.name not in await segmentation.segments_of(c)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await segmentation.stub.UpdateSegment(
            pb.UpdateSegmentRequest(
                segment=pb.Segment(id=shopping.id, description="x"),
                update_mask=FieldMask(paths=["description"]),
            )
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(caught.value) == "SEGMENT_ARCHIVED"
    fetched = await segmentation.stub.GetSegment(pb.GetSegmentRequest(segment_id=shopping.id))
    assert fetched.segment.HasField("archive_time")
    # Archiving again answers it as it is.
    third = await segmentation.stub.ArchiveSegment(pb.ArchiveSegmentRequest(segment_id=shopping.id))
    assert third.exited_count == 0


async def test_members_listed_counted_and_exported(segmentation: Segmentation) -> None:
    tag = unique("cohort")
    persons = []
    for _ in range(7):
        someone = person()
        persons.append(someone)
        await segmentation.profile_changed(someone, traits={"cohort": tag}, changed=("traits",))
    cohort = await segmentation.create(tag, trait("cohort", pb.COMPARISON_EQ, tag))
    await eventually(
        lambda: segmentation.scalar(
            "SELECT count(*) = 7 FROM memberships WHERE segment_id = CAST(:s AS uuid)", s=cohort.id
        ),
        timeout_s=10,
    )
    count = await segmentation.stub.CountSegmentMembers(pb.CountSegmentMembersRequest(segment_id=cohort.id))
    assert count.member_count == 7

    listed, token, pages = [], "", 0
    while True:
        page = await segmentation.stub.ListSegmentMembers(
            pb.ListSegmentMembersRequest(segment_id=cohort.id, page_size=3, page_token=token)
        )
        pages += 1
        listed += [m.person_id for m in page.members]
        assert all(m.HasField("enter_time") for m in page.members)
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert listed == sorted(persons)

    exported = [
        person_id
        async for chunk in segmentation.stub.ExportSegmentMembers(
            pb.ExportSegmentMembersRequest(segment_id=cohort.id)
        )
        for person_id in chunk.person_ids
    ]
    assert exported == sorted(persons)


async def test_bad_member_requests(segmentation: Segmentation) -> None:
    stub = segmentation.stub
    gold = await segmentation.create(unique("gold"), trait("plan", pb.COMPARISON_EQ, "gold"))
    assert await refused(
        stub.ListSegmentMembers, pb.ListSegmentMembersRequest(segment_id="x", page_size=-1, page_token="junk")
    ) == (grpc.StatusCode.INVALID_ARGUMENT, {"segment_id", "page_size", "page_token"})
    assert await refused(stub.CountSegmentMembers, pb.CountSegmentMembersRequest()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        {"segment_id"},
    )
    assert await refused(stub.ArchiveSegment, pb.ArchiveSegmentRequest(segment_id="nope")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        {"segment_id"},
    )
    # A token of the segments' listing is not one of the members'.
    segments_page = await stub.ListSegments(pb.ListSegmentsRequest(page_size=1))
    if segments_page.next_page_token:
        assert await refused(
            stub.ListSegmentMembers,
            pb.ListSegmentMembersRequest(segment_id=gold.id, page_token=segments_page.next_page_token),
        ) == (grpc.StatusCode.INVALID_ARGUMENT, {"page_token"})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.ExportSegmentMembers(pb.ExportSegmentMembersRequest(segment_id=new_id_str())):
            pass
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.ExportSegmentMembers(pb.ExportSegmentMembersRequest(segment_id="x")):
            pass
    details = status_details(caught.value)
    assert (details.code, details.fields) == (grpc.StatusCode.INVALID_ARGUMENT, {"segment_id"})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CountSegmentMembers(pb.CountSegmentMembersRequest(segment_id=new_id_str()))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
