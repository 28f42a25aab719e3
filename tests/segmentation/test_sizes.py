"""A segment's size over time: the clock records each live segment's member count per UTC day, and
ListSegmentSizes answers them, oldest first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from omni.segmentation.v1 import segmentation_pb2 as pb
from omni_kit.errors import status_details

from .builders import trait
from .support import Segmentation, eventually, person, unique


async def test_sizes_per_day(segmentation: Segmentation) -> None:
    tag = unique("grow")
    for _ in range(3):
        await segmentation.consumed(await segmentation.profile_changed(person(), traits={"tag": tag}))
    growing = await segmentation.create(tag, trait("tag", pb.COMPARISON_EQ, tag))
    await eventually(
        lambda: segmentation.scalar(
            "SELECT count(*) = 3 FROM memberships WHERE segment_id = CAST(:s AS uuid)", s=growing.id
        ),
        timeout_s=10,
    )
    # Yesterday's size, as the clock would have recorded it; then today's count, due now.
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date()
    await segmentation.execute(
        "INSERT INTO segment_sizes (segment_id, day, member_count, counted_at) "
        "VALUES (CAST(:s AS uuid), :d, 1, now())",
        s=growing.id,
        d=yesterday,
    )
    await segmentation.execute(
        "UPDATE scheduled_jobs SET due_at = now() - interval '1 second', claim = NULL "
        "WHERE kind = 'segmentation.segment_sizes'"
    )

    async def today() -> list[tuple[str, int]]:
        answer = await segmentation.stub.ListSegmentSizes(pb.ListSegmentSizesRequest(segment_id=growing.id))
        found = [(s.day, s.member_count) for s in answer.sizes]
        return found if len(found) == 2 else []

    sizes = await eventually(today, timeout_s=10)
    assert sizes == [(yesterday.isoformat(), 1), (datetime.now(UTC).date().isoformat(), 3)]
    one_day = await segmentation.stub.ListSegmentSizes(
        pb.ListSegmentSizesRequest(segment_id=growing.id, days=1)
    )
    assert [s.member_count for s in one_day.sizes] == [3]


async def test_bad_size_requests(segmentation: Segmentation) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await segmentation.stub.ListSegmentSizes(pb.ListSegmentSizesRequest(segment_id="x", days=401))
    details = status_details(caught.value)
    assert (details.code, details.fields) == (grpc.StatusCode.INVALID_ARGUMENT, {"segment_id", "days"})
