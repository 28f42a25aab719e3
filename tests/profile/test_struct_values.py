"""Free-form Structs (properties, context, traits) over gRPC: nesting within what reads can decode, finite numbers.

Reads wrap a stored event in GetProfileResponse → Profile → Event, and protobuf decoders refuse messages nested
past 100 levels: a Struct nested deeper than the documented limit would be stored and then make every read of
its person fail. NaN and ±Infinity cannot be written as JSON (nor stored in JSONB).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError

from omni.profile.v1 import profile_pb2
from omni_kit.errors import status_details
from omni_profile import validation

from .support import Services, event, get_profile, ident, struct, track, unique

DEPTH = validation.MAX_STRUCT_DEPTH


def nested(levels: int, leaf: Any = "leaf", key: str = "a") -> Any:
    """A JSON object nested `levels` deep (counting itself) holding leaf."""
    value = leaf
    for _ in range(levels):
        value = {key: value}
    return value


def deep_path(prefix: str, levels: int, key: str = "a") -> str:
    """The path of the object or array at level `levels` of a nested value under prefix (itself the first)."""
    return prefix + f".{key}" * (levels - 1)


def _properties_event(properties: dict[str, Any]) -> profile_pb2.Event:
    message = event("product_viewed")
    message.properties.CopyFrom(struct(properties))
    return message


async def _refusal(services: Services, message: profile_pb2.Event) -> set[str]:
    before = await services.counts()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await track(services, message)
    details = status_details(raised.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT, details.message
    assert await services.counts() == before, "a refused event must write nothing"
    return details.fields


async def test_properties_nested_to_the_limit_are_kept_and_read_back(services: Services) -> None:
    message = _properties_event(nested(DEPTH))
    message.context.update(nested(DEPTH, key="c"))
    message.traits.update({"prefs": nested(DEPTH - 1, key="t")})
    person = (await track(services, message)).person_id
    (shown,) = (await get_profile(services, person, recent=5)).recent_events
    assert shown.properties == message.properties and shown.context == message.context
    timeline = await services.profile.ListTimeline(profile_pb2.ListTimelineRequest(person_id=person))
    assert [e.id for e in timeline.events] == [message.id]
    assert (await get_profile(services, person)).traits["prefs"] == message.traits["prefs"]


async def test_properties_one_level_past_the_limit_are_refused_with_the_field(services: Services) -> None:
    # 32 objects and a list inside the last: the request itself decodes, a GetProfile answer would not.
    message = _properties_event(nested(DEPTH, leaf=["too deep"]))
    assert await _refusal(services, message) == {deep_path("event.properties", DEPTH + 1)}


@pytest.mark.parametrize("field", ["context", "traits"])
async def test_context_and_traits_past_the_limit_are_refused(services: Services, field: str) -> None:
    message = event("signed_up")
    getattr(message, field).update(nested(DEPTH, leaf=[1]))
    assert await _refusal(services, message) == {deep_path(f"event.{field}", DEPTH + 1)}


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
async def test_numbers_that_are_not_finite_are_refused_with_the_field(
    services: Services, number: float
) -> None:
    message = _properties_event({"price": 9.5, "basket": {"total": number}})
    assert await _refusal(services, message) == {"event.properties.basket.total"}
    message = event()
    message.context.update({"screen": {"density": [1, number]}})
    assert await _refusal(services, message) == {"event.context.screen.density[1]"}
    message = event()
    message.traits.update({"score": number})
    assert await _refusal(services, message) == {"event.traits.score"}


async def test_set_traits_refuses_deep_or_infinite_values(services: Services) -> None:
    person = (await track(services, event())).person_id
    for traits, field in [
        ({"score": math.inf}, "traits.score"),
        ({"prefs": nested(DEPTH - 1, leaf=[1])}, deep_path("traits.prefs", DEPTH)),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await services.profile.SetTraits(
                profile_pb2.SetTraitsRequest(person_id=person, traits=struct(traits))
            )
        details = status_details(raised.value)
        assert (details.code, details.fields) == (grpc.StatusCode.INVALID_ARGUMENT, {field})
    assert not (await get_profile(services, person)).traits


def _bad_events() -> list[profile_pb2.Event]:
    deep = _properties_event(nested(DEPTH, leaf=[0]))
    infinite = event()
    infinite.context.update({"x": math.inf})
    not_a_number = event()
    not_a_number.traits.update({"score": math.nan})
    return [deep, infinite, not_a_number]


async def test_a_batch_rejects_the_bad_events_and_records_the_others(services: Services) -> None:
    anonymous = unique("anon-")
    good = [event(identifiers=[ident("anonymous_id", anonymous)]) for _ in range(2)]
    deep, infinite, not_a_number = _bad_events()
    response = await services.profile.BatchTrackEvents(
        profile_pb2.BatchTrackEventsRequest(events=[good[0], deep, infinite, not_a_number, good[1]])
    )
    assert [
        (profile_pb2.TrackStatus.Name(r.status), [v.field for v in r.field_violations])
        for r in response.results
    ] == [
        ("TRACK_STATUS_RECORDED", []),
        ("TRACK_STATUS_REJECTED", [deep_path("properties", DEPTH + 1)]),
        ("TRACK_STATUS_REJECTED", ["context.x"]),
        ("TRACK_STATUS_REJECTED", ["traits.score"]),
        ("TRACK_STATUS_RECORDED", []),
    ]
    person = response.results[0].person_id
    assert sorted(e.id for e in (await get_profile(services, person, recent=10)).recent_events) == sorted(
        e.id for e in good
    )


async def test_a_stream_reports_the_bad_events_and_records_the_others(services: Services) -> None:
    good = event()
    deep, infinite, not_a_number = _bad_events()

    async def requests() -> AsyncIterator[profile_pb2.StreamTrackEventsRequest]:
        yield profile_pb2.StreamTrackEventsRequest(events=[deep, good])
        yield profile_pb2.StreamTrackEventsRequest(events=[infinite, not_a_number])

    response = await services.profile.StreamTrackEvents(requests())
    assert (response.accepted, response.rejected) == (1, 3)
    assert [(e.position, [v.field for v in e.field_violations]) for e in response.errors] == [
        (0, [deep_path("properties", DEPTH + 1)]),
        (2, ["context.x"]),
        (3, ["traits.score"]),
    ]
    assert await services.scalar("SELECT count(*) FROM events WHERE id = :id", id=good.id) == 1


def test_the_limit_is_what_a_profile_read_can_decode() -> None:
    """The deepest Struct allowed decodes inside the deepest answer that carries it, and one level more does
    not: the limit is as high as reads allow, and no higher."""

    def read_back(properties: Any) -> None:
        message = profile_pb2.Event(id="e", type="t")
        message.properties.update(properties)
        wrapped = b"".join(
            [
                # GetProfileResponse.profile (1) → Profile.recent_events (5) → the event, written as bytes.
                _length_delimited(1, _length_delimited(5, message.SerializeToString())),
            ]
        )
        profile_pb2.GetProfileResponse.FromString(wrapped)

    read_back(nested(DEPTH))
    with pytest.raises(DecodeError):
        read_back(nested(DEPTH + 1))


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


async def test_a_nul_in_a_property_a_computed_trait_reads_is_recorded_and_not_counted(
    services: Services,
) -> None:
    # favourite_category is the most frequent properties.category: its values are keys of a JSONB document,
    # which cannot hold a NUL (the event answered INTERNAL, and failed its whole batch).
    anonymous = unique("anon-")
    boots = event("product_viewed", identifiers=[ident("anonymous_id", anonymous)])
    boots.properties.update({"category": "boots"})
    broken = event("product_viewed", identifiers=[ident("anonymous_id", anonymous)])
    broken.properties.update({"category": "bo\x00ots"})
    response = await services.profile.BatchTrackEvents(
        profile_pb2.BatchTrackEventsRequest(events=[boots, broken])
    )
    assert (response.recorded_count, response.rejected_count) == (2, 0)
    profile = await get_profile(services, response.results[0].person_id, recent=5)
    assert profile.computed_traits["favourite_category"] == "boots"
    assert {e.properties["category"] for e in profile.recent_events} == {"boots", "bo\x00ots"}
