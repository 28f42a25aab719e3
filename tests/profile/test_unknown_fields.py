"""Fields profile does not know (a newer sender's, or padding) are discarded on the way in: an event is stored
and announced as this build's fields describe it, so a 1.5 MB unknown field neither sits in the timeline nor
makes the announcement larger than NATS takes (which stalled every later announcement)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc

from omni.events.v1 import envelope_pb2
from omni.profile.v1 import events_pb2, profile_pb2
from omni_kit.bus import unpack
from omni_kit.bus.envelope import length_delimited

from .support import Services, event, track

# 1.5 MB in a field number no version of omni.profile.v1.Event uses; NATS takes 1 MB a message.
_PADDING = length_delimited(4000, b"x" * 1_500_000)
_SMALL = 16 * 1024


def _padded(message: profile_pb2.Event) -> bytes:
    """The event encoded with the unknown field appended, also inside its properties."""
    properties = message.properties.SerializeToString() + length_delimited(99, b"nested unknown")
    return message.SerializeToString() + length_delimited(6, properties) + _PADDING


def _tracked(event_id: str) -> Callable[[envelope_pb2.Envelope], bool]:
    def matches(envelope: envelope_pb2.Envelope) -> bool:
        if envelope.type != "profile.event_tracked":
            return False
        return unpack(envelope, events_pb2.EventTrackedEvent).event.id == event_id

    return matches


async def _stored_size(services: Services, event_id: str) -> int:
    return int(await services.scalar("SELECT length(wire) FROM events WHERE id = :id", id=event_id))


async def _raw_call(services: Services, method: str, request: bytes) -> bytes:
    target = f"127.0.0.1:{services.profile_runtime.port}"
    async with grpc.aio.insecure_channel(target, options=[("grpc.max_send_message_length", -1)]) as channel:
        return bytes(await channel.unary_unary(f"/omni.profile.v1.ProfileService/{method}")(request))


async def test_an_unknown_field_is_neither_stored_nor_announced(services: Services) -> None:
    message = event("page_viewed", properties={"path": "/shoes"})
    answer = profile_pb2.TrackEventResponse.FromString(
        await _raw_call(services, "TrackEvent", length_delimited(1, _padded(message)))
    )
    assert answer.status == profile_pb2.TRACK_STATUS_RECORDED
    assert await _stored_size(services, message.id) < _SMALL
    # Announced as it is stored, and the announcements after it are not held up.
    later = event("page_viewed")
    await track(services, later)
    for event_id in (message.id, later.id):
        [envelope] = await services.events.wait_for(_tracked(event_id), within_s=10)
        assert envelope.ByteSize() < _SMALL
    [shown] = (
        await services.profile.ListTimeline(profile_pb2.ListTimelineRequest(person_id=answer.person_id))
    ).events
    assert shown.id == message.id
    assert dict(shown.properties) == {"path": "/shoes"}
    # The same event sent again without the unknown field is the same event.
    again = await track(services, message)
    assert again.status == profile_pb2.TRACK_STATUS_DUPLICATE


async def test_unknown_fields_in_a_batch_and_a_stream_are_dropped(services: Services) -> None:
    batched, streamed = event("page_viewed"), event("page_viewed")
    answer = profile_pb2.BatchTrackEventsResponse.FromString(
        await _raw_call(
            services,
            "BatchTrackEvents",
            length_delimited(1, event("page_viewed").SerializeToString())
            + length_delimited(1, _padded(batched)),
        )
    )
    assert answer.recorded_count == 2

    async def requests() -> AsyncIterator[bytes]:
        yield length_delimited(1, _padded(streamed))

    target = f"127.0.0.1:{services.profile_runtime.port}"
    async with grpc.aio.insecure_channel(target) as channel:
        stream = channel.stream_unary("/omni.profile.v1.ProfileService/StreamTrackEvents")
        summary = profile_pb2.StreamTrackEventsResponse.FromString(bytes(await stream(requests())))
    assert summary.accepted == 1
    for message in (batched, streamed):
        assert await _stored_size(services, message.id) < _SMALL
