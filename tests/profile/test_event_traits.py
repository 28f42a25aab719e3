"""Events that carry traits (Event.traits) set them on the profile in the transaction that records them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from omni.profile.v1 import profile_pb2
from omni_kit.errors import status_details

from .support import Services, event, get_profile, ident, struct, track, unique


def _with_traits(
    message: profile_pb2.Event, source: str = "pos_back_office", **traits: Any
) -> profile_pb2.Event:
    message.source = source
    message.traits.CopyFrom(struct(traits))
    return message


async def test_an_event_sets_the_traits_it_carries_from_its_source_as_of_its_time(services: Services) -> None:
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    enrolled = _with_traits(
        event("loyalty_enrolled", identifiers=[ident("loyalty_card", unique("card-"))], occurred_at=when),
        first_name="Ada",
        vip=True,
    )
    person = (await track(services, enrolled)).person_id

    profile = await get_profile(services, person)
    assert dict(profile.traits) == {"first_name": "Ada", "vip": True}
    metadata = profile.trait_metadata["first_name"]
    assert metadata.source == "pos_back_office"
    assert metadata.update_time.ToDatetime(tzinfo=UTC) == when


async def test_the_newer_of_two_events_wins_whatever_arrives_last_and_a_duplicate_sets_nothing(
    services: Services,
) -> None:
    card = unique("card-")
    now = datetime.now(UTC).replace(microsecond=0)
    newer = _with_traits(
        event(
            "profile_updated",
            identifiers=[ident("loyalty_card", card)],
            occurred_at=now - timedelta(minutes=1),
        ),
        plan="gold",
    )
    older = _with_traits(
        event(
            "profile_updated", identifiers=[ident("loyalty_card", card)], occurred_at=now - timedelta(hours=1)
        ),
        plan="silver",
    )
    response = await services.profile.BatchTrackEvents(
        profile_pb2.BatchTrackEventsRequest(events=[newer, older])
    )
    assert response.recorded_count == 2
    person = response.results[0].person_id
    assert dict((await get_profile(services, person)).traits) == {"plan": "gold"}

    # The same source sets another plan later; the first event sent again is a duplicate and sets nothing.
    await services.profile.SetTraits(
        profile_pb2.SetTraitsRequest(
            person_id=person, traits=struct({"plan": "platinum"}), source="pos_back_office"
        )
    )
    again = await services.profile.BatchTrackEvents(profile_pb2.BatchTrackEventsRequest(events=[newer]))
    assert again.duplicate_count == 1
    assert dict((await get_profile(services, person)).traits) == {"plan": "platinum"}


async def test_a_stream_sets_the_traits_its_events_carry(services: Services) -> None:
    card = unique("card-")

    async def messages() -> AsyncIterator[profile_pb2.StreamTrackEventsRequest]:
        yield profile_pb2.StreamTrackEventsRequest(
            events=[_with_traits(event("signed_up", identifiers=[ident("loyalty_card", card)]), city="Oslo")]
        )

    assert (await services.profile.StreamTrackEvents(messages())).accepted == 1
    person = (await track(services, event(identifiers=[ident("loyalty_card", card)]))).person_id
    assert dict((await get_profile(services, person)).traits) == {"city": "Oslo"}


async def test_traits_of_the_wrong_type_reject_their_event_only(services: Services) -> None:
    before = await services.counts()
    bad = _with_traits(event(), vip="yes")
    good = _with_traits(event(), first_name="Bo")
    response = await services.profile.BatchTrackEvents(
        profile_pb2.BatchTrackEventsRequest(events=[bad, good])
    )
    assert [r.status for r in response.results] == [
        profile_pb2.TRACK_STATUS_REJECTED,
        profile_pb2.TRACK_STATUS_RECORDED,
    ]
    assert {v.field for v in response.results[0].field_violations} == {"traits.vip"}
    after = await services.counts()
    assert after["events"] == before["events"] + 1 and after["traits"] == before["traits"] + 1


@pytest.mark.parametrize(
    ("traits", "fields"),
    [
        ({"vip": "yes"}, {"event.traits.vip"}),
        ({"note": "a\x00"}, {"event.traits.note"}),
        ({}, {"event.traits"}),
    ],
    ids=["wrong-type", "nul", "empty"],
)
async def test_track_event_with_bad_traits_is_refused(
    services: Services, traits: dict[str, Any], fields: set[str]
) -> None:
    before = await services.counts()
    message = event()
    message.traits.CopyFrom(struct(traits))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await services.profile.TrackEvent(profile_pb2.TrackEventRequest(event=message))
    details = status_details(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == fields
    assert await services.counts() == before
