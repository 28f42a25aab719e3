"""CreateSegment by request id (omni_kit.idempotency): a retry answers the first answer and creates nothing,
the same id with another segment is refused, and stored answers are purged after the retention."""

from __future__ import annotations

import grpc
import pytest

from omni.identity.v1 import events_pb2 as identity_events
from omni.segmentation.v1 import segmentation_pb2 as pb
from omni_kit.errors import status_details
from omni_kit.ids import new_id_str

from ..idempotency import assert_key_reused, forget_shown_answers, purge_aged, stored_answers
from .builders import trait
from .support import Segmentation, eventually, unique


def request(name: str, request_id: str = "", plan: str = "gold") -> pb.CreateSegmentRequest:
    return pb.CreateSegmentRequest(
        segment=pb.Segment(name=name, condition=trait("plan", pb.COMPARISON_EQ, plan)), request_id=request_id
    )


async def named(segmentation: Segmentation, name: str) -> int:
    return int(await segmentation.scalar("SELECT count(*) FROM segments WHERE name = :n", n=name))


async def written(segmentation: Segmentation) -> tuple[int, int, int]:
    """Segments, backfills and outbox rows, once the backfills of earlier segments are done."""
    await eventually(lambda: segmentation.scalar("SELECT count(*) = 0 FROM backfills"))
    return (
        await segmentation.scalar("SELECT count(*) FROM segments"),
        await segmentation.scalar("SELECT count(*) FROM backfills"),
        await segmentation.scalar("SELECT count(*) FROM outbox"),
    )


async def test_a_retry_answers_the_first_answer_and_creates_nothing(segmentation: Segmentation) -> None:
    name, request_id = unique("retried"), new_id_str()
    first = await segmentation.stub.CreateSegment(request(name, request_id))
    again = await segmentation.stub.CreateSegment(request(name, request_id))

    assert again == first
    assert await named(segmentation, name) == 1
    assert [(a.scope, a.answered) for a in await stored_answers(segmentation.runtime, request_id)] == [
        ("CreateSegment", True)
    ]


async def test_the_same_id_with_another_segment_is_refused_and_nothing_is_written(
    segmentation: Segmentation,
) -> None:
    name, request_id = unique("first"), new_id_str()
    await segmentation.stub.CreateSegment(request(name, request_id))
    other = unique("other")
    before = await written(segmentation)

    for changed in (request(other, request_id), request(name, request_id, plan="silver")):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await segmentation.stub.CreateSegment(changed)
        assert_key_reused(refused.value, request_id)

    assert await written(segmentation) == before
    assert await named(segmentation, other) == 0


async def test_without_a_request_id_a_second_create_is_refused_as_before(segmentation: Segmentation) -> None:
    name = unique("unkeyed")
    await segmentation.stub.CreateSegment(request(name))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await segmentation.stub.CreateSegment(request(name))
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert await named(segmentation, name) == 1
    assert await stored_answers(segmentation.runtime, "") == []


@pytest.mark.parametrize("request_id", ["x" * 129, "key\x00", "ke\ny"])
async def test_a_malformed_request_id_is_refused(segmentation: Segmentation, request_id: str) -> None:
    name = unique("malformed")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await segmentation.stub.CreateSegment(request(name, request_id))
    details = status_details(refused.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == {"request_id"}
    assert await named(segmentation, name) == 0


async def test_an_answer_past_the_retention_is_purged_and_its_id_free_again(
    segmentation: Segmentation,
) -> None:
    request_id = new_id_str()
    await segmentation.stub.CreateSegment(request(unique("old"), request_id))

    await purge_aged(segmentation.runtime, request_id)

    newer = unique("newer")
    await segmentation.stub.CreateSegment(request(newer, request_id))
    assert await named(segmentation, newer) == 1


async def test_an_erasure_removes_the_answers_showing_the_person(segmentation: Segmentation) -> None:
    async def forget(person_id: str) -> None:
        await segmentation.consumed(
            await segmentation.publish(
                identity_events.PersonForgottenEvent(person_id=person_id),
                event_type="identity.person_forgotten",
                producer="identity",
                person_id=person_id,
            )
        )

    await forget_shown_answers(segmentation.runtime, forget)
