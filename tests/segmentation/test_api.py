"""Segments over gRPC: create, get, list with paging, and every kind of bad input (nothing written)."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from omni.segmentation.v1 import segmentation_pb2 as pb
from omni_kit.errors import status_details
from omni_kit.ids import new_id_str

from .builders import abandoned_cart, all_of, event_count, not_, since_last, trait
from .support import Segmentation, eventually, person, unique


async def counts(segmentation: Segmentation) -> tuple[int, int, int]:
    """Rows in segments, backfills and outbox: what a refused request must not change.

    Backfills of segments created earlier finish first, so that the clock changes nothing meanwhile.
    """
    await eventually(lambda: segmentation.scalar("SELECT count(*) = 0 FROM backfills"))
    return (
        await segmentation.scalar("SELECT count(*) FROM segments"),
        await segmentation.scalar("SELECT count(*) FROM backfills"),
        await segmentation.scalar("SELECT count(*) FROM outbox"),
    )


async def refused(segmentation: Segmentation, segment: pb.Segment | None) -> tuple[grpc.StatusCode, set[str]]:
    """Try to create the segment; return the error's code and violated fields, checking nothing was written."""
    before = await counts(segmentation)
    request = pb.CreateSegmentRequest(segment=segment) if segment is not None else pb.CreateSegmentRequest()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await segmentation.stub.CreateSegment(request)
    assert await counts(segmentation) == before
    details = status_details(caught.value)
    return details.code, details.fields


async def test_create_get_and_list(segmentation: Segmentation) -> None:
    name = unique("abandoned-cart")
    condition = abandoned_cart(30)
    created = await segmentation.create(name, condition, description="Cart left behind for 30 s")
    assert created.id and created.name == name
    assert created.condition == condition
    assert created.create_time.seconds > 0

    got = (await segmentation.stub.GetSegment(pb.GetSegmentRequest(segment_id=created.id))).segment
    assert got == created

    stored = await segmentation.rows("SELECT name, condition FROM segments WHERE id = :id", id=created.id)
    assert stored[0].name == name
    assert stored[0].condition["all"]["conditions"][1]["event_count"]["window"] == "3600s"

    listed = await segmentation.stub.ListSegments(pb.ListSegmentsRequest(page_size=500))
    assert created in listed.segments


async def test_paging_walks_every_segment_once_oldest_first(segmentation: Segmentation) -> None:
    ids = [
        (await segmentation.create(unique("page"), trait("plan", pb.COMPARISON_EXISTS))).id for _ in range(5)
    ]
    seen: list[str] = []
    token = ""
    while True:
        page = await segmentation.stub.ListSegments(pb.ListSegmentsRequest(page_size=2, page_token=token))
        assert len(page.segments) <= 2
        seen += [s.id for s in page.segments]
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen))
    assert [i for i in seen if i in ids] == ids
    assert seen == sorted(seen)


async def test_a_person_unknown_to_segmentation_is_in_no_segment(segmentation: Segmentation) -> None:
    response = await segmentation.stub.ListPersonSegments(pb.ListPersonSegmentsRequest(person_id=person()))
    assert list(response.memberships) == []


# -- bad input: one test per kind -------------------------------------------------------------------------


async def test_missing_segment(segmentation: Segmentation) -> None:
    assert await refused(segmentation, None) == (grpc.StatusCode.INVALID_ARGUMENT, {"segment"})


async def test_empty_rules(segmentation: Segmentation) -> None:
    code, fields = await refused(segmentation, pb.Segment(name=unique("empty")))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, {"segment.condition"})
    code, fields = await refused(segmentation, pb.Segment(name=unique("empty"), condition=pb.Condition()))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, {"segment.condition"})


async def test_empty_all_list(segmentation: Segmentation) -> None:
    code, fields = await refused(segmentation, pb.Segment(name=unique("empty-all"), condition=all_of()))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, {"segment.condition.all.conditions"})


async def test_missing_trait_name(segmentation: Segmentation) -> None:
    condition = all_of(trait("plan", pb.COMPARISON_EXISTS), not_(trait("", pb.COMPARISON_EQ, "gold")))
    code, fields = await refused(segmentation, pb.Segment(name=unique("no-trait"), condition=condition))
    assert (code, fields) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        {"segment.condition.all.conditions[1].not.trait.trait"},
    )


async def test_bad_window(segmentation: Segmentation) -> None:
    condition = all_of(
        trait("plan", pb.COMPARISON_EXISTS), event_count("order_completed", 0.2, pb.COMPARISON_EQ, 0)
    )
    code, fields = await refused(segmentation, pb.Segment(name=unique("bad-window"), condition=condition))
    assert (code, fields) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        {"segment.condition.all.conditions[1].event_count.window"},
    )


@pytest.mark.parametrize("seconds", [2**63 - 1, -(2**63 - 1), 315_576_000_000, 34_560_001])
async def test_a_window_past_400_days(segmentation: Segmentation, seconds: int) -> None:
    window = pb.Condition(
        event_count=pb.EventCountCondition(
            event_type="order_completed", window=Duration(seconds=seconds), comparison=pb.COMPARISON_EQ
        )
    )
    since = pb.Condition(
        since_last_event=pb.SinceLastEventCondition(
            event_type="cart_item_added", at_least=Duration(seconds=seconds)
        )
    )
    code, fields = await refused(
        segmentation, pb.Segment(name=unique("long-window"), condition=all_of(window, since))
    )
    assert (code, fields) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        {
            "segment.condition.all.conditions[0].event_count.window",
            "segment.condition.all.conditions[1].since_last_event.at_least",
        },
    )


@pytest.mark.parametrize(
    "event_type", ["page.viewed", "Товар_добавлен", "order__completed", "9lives", "e" * 101]
)
async def test_a_rule_on_a_type_no_event_can_have(segmentation: Segmentation, event_type: str) -> None:
    # Profile records types by one rule (omni_kit.event_types): a rule on anything else would never match.
    condition = event_count(event_type, 3600, pb.COMPARISON_GT, 0)
    code, fields = await refused(segmentation, pb.Segment(name=unique("never"), condition=condition))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, {"segment.condition.event_count.event_type"})


@pytest.mark.parametrize("event_type", ["product_added", "product_removed"])
async def test_a_rule_on_an_event_type_profile_never_records(
    segmentation: Segmentation, event_type: str
) -> None:
    # Segment's "Product Added" is recorded as cart_item_added: a rule on product_added would never match.
    condition = all_of(
        event_count(event_type, 3600, pb.COMPARISON_GT, 0),
        since_last(event_type, 60),
        trait("x", pb.COMPARISON_EXISTS),
    )
    code, fields = await refused(segmentation, pb.Segment(name=unique("product-added"), condition=condition))
    assert (code, fields) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        {
            "segment.condition.all.conditions[0].event_count.event_type",
            "segment.condition.all.conditions[1].since_last_event.event_type",
        },
    )


async def test_a_trait_value_over_4_kib(segmentation: Segmentation) -> None:
    condition = all_of(trait("note", pb.COMPARISON_EQ, "x" * 5000), trait("plan", pb.COMPARISON_EXISTS))
    code, fields = await refused(segmentation, pb.Segment(name=unique("long-value"), condition=condition))
    assert (code, fields) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        {"segment.condition.all.conditions[0].trait.value"},
    )


@pytest.mark.parametrize("name", ["", "Abandoned Cart", "cart_abandoned", "x" * 101])
async def test_bad_name(segmentation: Segmentation, name: str) -> None:
    code, fields = await refused(segmentation, pb.Segment(name=name, condition=abandoned_cart(5)))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, {"segment.name"})


async def test_every_violation_is_reported_at_once(segmentation: Segmentation) -> None:
    code, fields = await refused(segmentation, pb.Segment(name="Bad Name", condition=all_of(all_of())))
    assert (code, fields) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        {"segment.name", "segment.condition.all.conditions[0].all.conditions"},
    )


async def test_duplicate_name(segmentation: Segmentation) -> None:
    name = unique("dup")
    await segmentation.create(name, abandoned_cart(5))
    before = await counts(segmentation)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await segmentation.create(name, trait("plan", pb.COMPARISON_EXISTS))
    assert await counts(segmentation) == before
    details = status_details(caught.value)
    assert details.code == grpc.StatusCode.ALREADY_EXISTS
    assert details.error_info is not None and details.error_info.reason == "SEGMENT_NAME_TAKEN"
    assert details.error_info.metadata["name"] == name


async def test_malformed_segment_id(segmentation: Segmentation) -> None:
    for value in ("", "not-a-uuid"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await segmentation.stub.GetSegment(pb.GetSegmentRequest(segment_id=value))
        details = status_details(caught.value)
        assert (details.code, details.fields) == (grpc.StatusCode.INVALID_ARGUMENT, {"segment_id"})


async def test_unknown_segment_id(segmentation: Segmentation) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await segmentation.stub.GetSegment(pb.GetSegmentRequest(segment_id=new_id_str()))
    details = status_details(caught.value)
    assert details.code == grpc.StatusCode.NOT_FOUND
    assert details.error_info is not None and details.error_info.reason == "SEGMENT_NOT_FOUND"


async def test_malformed_person_id(segmentation: Segmentation) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await segmentation.stub.ListPersonSegments(pb.ListPersonSegmentsRequest(person_id="42"))
    details = status_details(caught.value)
    assert (details.code, details.fields) == (grpc.StatusCode.INVALID_ARGUMENT, {"person_id"})


async def test_bad_paging(segmentation: Segmentation) -> None:
    for request, field in (
        (pb.ListSegmentsRequest(page_size=-1), "page_size"),
        (pb.ListSegmentsRequest(page_token="garbage"), "page_token"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await segmentation.stub.ListSegments(request)
        details = status_details(caught.value)
        assert (details.code, details.fields) == (grpc.StatusCode.INVALID_ARGUMENT, {field})


# PostgreSQL cannot store a NUL (text refuses it, JSONB refuses \u0000): it reached the database and answered
# INTERNAL. Names, event types and trait names hold no control characters; a description and the strings of
# a trait's value may keep tabs and line breaks.
def _segment(condition: pb.Condition | None = None, **fields: str) -> pb.Segment:
    values = {"name": unique("ctrl"), "description": "", **fields}
    return pb.Segment(condition=condition or abandoned_cart(5), **values)


def _in_all(leaf: pb.Condition) -> pb.Condition:
    return all_of(trait("plan", pb.COMPARISON_EXISTS), leaf)


LEAF = "segment.condition.all.conditions[1]"


@pytest.mark.parametrize(
    ("segment", "field"),
    [
        (_segment(name="cart\x00"), "segment.name"),
        (_segment(name="cart\n"), "segment.name"),
        (_segment(description="Cart left\x00behind"), "segment.description"),
        (_segment(description="\x1b[31mred"), "segment.description"),
        (_segment(_in_all(trait("pl\x00an", pb.COMPARISON_EXISTS))), f"{LEAF}.trait.trait"),
        (_segment(_in_all(trait("plan\n", pb.COMPARISON_EXISTS))), f"{LEAF}.trait.trait"),
        (_segment(_in_all(trait("plan", pb.COMPARISON_EQ, "gold\x00"))), f"{LEAF}.trait.value"),
        (
            _segment(_in_all(trait("address", pb.COMPARISON_EQ, {"city": "Par\x00is"}))),
            f"{LEAF}.trait.value.city",
        ),
        (_segment(_in_all(trait("address", pb.COMPARISON_EQ, {"ci\x00ty": "Paris"}))), f"{LEAF}.trait.value"),
        (_segment(_in_all(trait("tags", pb.COMPARISON_EQ, ["vip", "x\x00"]))), f"{LEAF}.trait.value[1]"),
        (
            _segment(_in_all(event_count("order\x00", 60, pb.COMPARISON_EQ, 0))),
            f"{LEAF}.event_count.event_type",
        ),
        (
            _segment(_in_all(event_count("order_completed\n", 60, pb.COMPARISON_EQ, 0))),
            f"{LEAF}.event_count.event_type",
        ),
        (_segment(_in_all(since_last("visit\x00", 60))), f"{LEAF}.since_last_event.event_type"),
    ],
    ids=[
        "name",
        "name-line-break",
        "description",
        "description-escape",
        "trait-name",
        "trait-name-line-break",
        "trait-value",
        "trait-value-object-value",
        "trait-value-object-key",
        "trait-value-list-item",
        "event-count-type",
        "event-count-type-line-break",
        "since-last-event-type",
    ],
)
async def test_control_characters(segmentation: Segmentation, segment: pb.Segment, field: str) -> None:
    assert await refused(segmentation, segment) == (grpc.StatusCode.INVALID_ARGUMENT, {field})


async def test_free_text_keeps_tabs_and_line_breaks(segmentation: Segmentation) -> None:
    condition = trait("address", pb.COMPARISON_EQ, {"street": "1 Main St\nFlat 2", "note": "a\tb"})
    created = await segmentation.create(unique("free-text"), condition, description="Line one\nline\ttwo\r\n")
    assert created.description == "Line one\nline\ttwo\r\n"
    assert created.condition == condition


@pytest.mark.parametrize(
    ("call", "request_", "field"),
    [
        ("GetSegment", pb.GetSegmentRequest(segment_id="\x00"), "segment_id"),
        ("ListPersonSegments", pb.ListPersonSegmentsRequest(person_id=f"{new_id_str()}\x00"), "person_id"),
        ("ListSegments", pb.ListSegmentsRequest(page_token="\x00"), "page_token"),
    ],
    ids=["segment-id", "person-id", "page-token"],
)
async def test_nul_in_a_read(segmentation: Segmentation, call: str, request_: object, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(segmentation.stub, call)(request_)
    details = status_details(caught.value)
    assert (details.code, details.fields) == (grpc.StatusCode.INVALID_ARGUMENT, {field})
