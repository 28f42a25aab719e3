"""Bytes that are not a protobuf message of the request's type: INVALID_ARGUMENT, nothing written."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from omni.profile.v1 import profile_pb2
from omni_kit.errors import status_details

from .support import Services, event

SERVICE = "/omni.profile.v1.ProfileService"
# A field 1 announcing 100 bytes of content that never come: no protobuf parser accepts it.
GARBAGE = b"\x0a\x64\x01\x02"


def _channel(services: Services) -> grpc.aio.Channel:
    """A channel of its own, to send raw bytes (no serializer) to profile."""
    return grpc.aio.insecure_channel(f"127.0.0.1:{services.profile_runtime.port}")


async def _refused(call: object) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    details = status_details(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.error_info is not None and details.error_info.reason == "MALFORMED_REQUEST"
    assert details.fields == {"request"}


@pytest.mark.parametrize("method", ["TrackEvent", "BatchTrackEvents", "SetTraits", "GetProfile"])
async def test_a_malformed_unary_request_is_refused(services: Services, method: str) -> None:
    before = await services.counts()
    async with _channel(services) as channel:
        await _refused(channel.unary_unary(f"{SERVICE}/{method}")(GARBAGE, timeout=5))
    assert await services.counts() == before


async def test_a_malformed_message_ends_a_stream_after_the_events_before_it(services: Services) -> None:
    # A stream cannot go on past bytes it cannot read; the messages before them were recorded as they came,
    # so the producer resends the stream and they are answered as duplicates.
    first = profile_pb2.StreamTrackEventsRequest(events=[event(), event()])

    async def messages() -> AsyncIterator[bytes]:
        yield first.SerializeToString()
        yield GARBAGE

    before = await services.counts()
    async with _channel(services) as channel:
        await _refused(channel.stream_unary(f"{SERVICE}/StreamTrackEvents")(messages(), timeout=5))
    assert (await services.counts())["events"] == before["events"] + 2
    again = await services.profile.StreamTrackEvents(_one(first))
    assert (again.accepted, again.duplicates) == (0, 2)


async def _one(
    message: profile_pb2.StreamTrackEventsRequest,
) -> AsyncIterator[profile_pb2.StreamTrackEventsRequest]:
    yield message
