"""An event id is the event's identity within its source: sent again with the same content it is a duplicate;
with other content it is an id reused for something else, refused (the first event stays) on every transport
rather than answered duplicate as if the second had been recorded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from omni.profile.v1 import profile_pb2
from omni_kit.bus.envelope import length_delimited
from omni_kit.errors import status_details
from omni_profile.envelopes import struct_bytes

from .conftest import WRITE_KEY
from .support import Services, event, ident, track, unique

NOW = datetime.now(UTC)


def _batch(*events: profile_pb2.Event) -> profile_pb2.BatchTrackEventsRequest:
    return profile_pb2.BatchTrackEventsRequest(events=events)


async def _properties(services: Services, event_id: str) -> dict[str, Any]:
    count = await services.scalar("SELECT count(*) FROM events WHERE id = :id", id=event_id)
    assert count == 1
    wire = await services.scalar("SELECT wire FROM events WHERE id = :id", id=event_id)
    stored = profile_pb2.Event.FromString(wire)
    return {key: value for key, value in stored.properties.items()}


async def test_the_same_id_with_other_content_is_refused_and_the_first_stays(tracked: Services) -> None:
    first = event("order_completed", properties={"order_id": "o-1", "total": 120})
    recorded = await track(tracked, first)
    assert (await track(tracked, first)).status == profile_pb2.TRACK_STATUS_DUPLICATE
    other = profile_pb2.Event()
    other.CopyFrom(first)
    other.properties["total"] = 12
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await track(tracked, other)
    details = status_details(refused.value)
    assert details.code == grpc.StatusCode.ALREADY_EXISTS
    assert details.error_info is not None
    assert details.error_info.reason == "EVENT_ID_REUSED"
    assert dict(details.error_info.metadata) == {
        "source": "api",
        "id": first.id,
        "person_id": recorded.person_id,
    }
    assert await _properties(tracked, first.id) == {"order_id": "o-1", "total": 120}


async def test_times_the_service_sets_are_not_content_but_a_time_the_sender_gave_is(
    tracked: Services,
) -> None:
    # Left out, occurred_at is the receive time: a resend a second later is the same event.
    untimed = event("page_viewed")
    await track(tracked, untimed)
    await asyncio.sleep(0.01)
    assert (await track(tracked, untimed)).status == profile_pb2.TRACK_STATUS_DUPLICATE
    # A receive_time the sender filled is overwritten by the service: not content either.
    received = profile_pb2.Event()
    received.CopyFrom(untimed)
    received.receive_time.FromDatetime(NOW - timedelta(hours=1))
    assert (await track(tracked, received)).status == profile_pb2.TRACK_STATUS_DUPLICATE
    timed = event("page_viewed", occurred_at=NOW - timedelta(minutes=5))
    await track(tracked, timed)
    moved = profile_pb2.Event()
    moved.CopyFrom(timed)
    moved.occurred_at.FromDatetime(NOW - timedelta(minutes=4))
    answer = await tracked.profile.BatchTrackEvents(_batch(moved))
    assert answer.results[0].status == profile_pb2.TRACK_STATUS_ID_REUSED


async def test_the_order_of_a_maps_entries_is_not_content(tracked: Services) -> None:
    base = event("product_viewed", identifiers=[ident("anonymous_id", unique("anon-"))])
    encoded = base.SerializeToString()
    properties = {"sku": "sku-1", "price": 10, "colour": "red"}
    one_way = encoded + length_delimited(6, struct_bytes(properties))
    other_way = encoded + length_delimited(6, struct_bytes(dict(reversed(properties.items()))))
    assert one_way != other_way
    target = f"127.0.0.1:{tracked.profile_runtime.port}"
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary("/omni.profile.v1.ProfileService/TrackEvent")
        answers = [
            profile_pb2.TrackEventResponse.FromString(bytes(await call(length_delimited(1, encoded))))
            for encoded in (one_way, other_way)
        ]
    assert [a.status for a in answers] == [
        profile_pb2.TRACK_STATUS_RECORDED,
        profile_pb2.TRACK_STATUS_DUPLICATE,
    ]


async def test_a_batch_answers_a_reused_id_per_event(tracked: Services) -> None:
    first, kept = event("product_viewed", properties={"sku": "a"}), event("page_viewed")
    other = profile_pb2.Event()
    other.CopyFrom(first)
    other.properties["sku"] = "b"
    answer = await tracked.profile.BatchTrackEvents(_batch(first, other, kept, first))
    assert [r.status for r in answer.results] == [
        profile_pb2.TRACK_STATUS_RECORDED,
        profile_pb2.TRACK_STATUS_ID_REUSED,
        profile_pb2.TRACK_STATUS_RECORDED,
        profile_pb2.TRACK_STATUS_DUPLICATE,
    ]
    reused = answer.results[1]
    assert (reused.reason, reused.duplicate, reused.person_id) == (
        "EVENT_ID_REUSED",
        True,
        answer.results[0].person_id,
    )
    assert [v.field for v in reused.field_violations] == ["id"]
    assert (answer.recorded_count, answer.duplicate_count, answer.rejected_count) == (2, 1, 1)
    again = await tracked.profile.BatchTrackEvents(_batch(other, first))
    assert [r.status for r in again.results] == [
        profile_pb2.TRACK_STATUS_ID_REUSED,
        profile_pb2.TRACK_STATUS_DUPLICATE,
    ]
    assert await _properties(tracked, first.id) == {"sku": "a"}


async def test_a_stream_reports_a_reused_id(tracked: Services) -> None:
    first = event("page_viewed", properties={"path": "/a"})
    await track(tracked, first)
    other = profile_pb2.Event()
    other.CopyFrom(first)
    other.properties["path"] = "/b"

    async def requests() -> AsyncIterator[profile_pb2.StreamTrackEventsRequest]:
        yield profile_pb2.StreamTrackEventsRequest(events=[event("page_viewed"), other, first])

    answer = await tracked.profile.StreamTrackEvents(requests())
    assert (answer.accepted, answer.duplicates, answer.rejected) == (1, 1, 1)
    [error] = answer.errors
    assert (error.position, error.event_id, error.reason) == (1, first.id, "EVENT_ID_REUSED")


def _http_track(message_id: str, **fields: Any) -> dict[str, Any]:
    return {"type": "track", "event": "Order Completed", "messageId": message_id, "userId": "u-1", **fields}


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def test_http_retries_are_duplicates_and_a_reused_message_id_is_listed(tracked: Services) -> None:
    message_id = unique("m-")
    sent = {"timestamp": _iso(NOW - timedelta(minutes=2)), "properties": {"total": 50}}
    # A library's retry: the same message, sent again later (another sentAt: another corrected time).
    status, answer = await tracked.post(
        "/v1/track", _http_track(message_id, sentAt=_iso(NOW), **sent), WRITE_KEY
    )
    assert status == 200, answer
    retry = _http_track(message_id, sentAt=_iso(NOW + timedelta(seconds=3)), **sent)
    status, answer = await tracked.post("/v1/batch", {"batch": [retry]}, WRITE_KEY)
    assert (status, answer["duplicates"], answer["errors"]) == (200, 1, []), answer
    reused = _http_track(message_id, properties={"total": 70})
    status, answer = await tracked.post("/v1/track", reused, WRITE_KEY)
    assert status == 400, answer
    [error] = answer["errors"]
    assert (error["messageId"], error["reason"]) == (message_id, "EVENT_ID_REUSED")
    assert [f["field"] for f in error["fields"]] == ["messageId"]
    fresh = _http_track(unique("m-"))
    status, answer = await tracked.post("/v1/batch", {"batch": [reused, fresh]}, WRITE_KEY)
    assert (status, answer["accepted"], answer["rejected"]) == (200, 1, 1), answer
    assert [(e["index"], e["reason"]) for e in answer["errors"]] == [(0, "EVENT_ID_REUSED")]
