"""Traits, consent, the 360 view and the timeline, over gRPC on real PostgreSQL, NATS and identity."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from omni.common.v1 import common_pb2
from omni.identity.v1 import identity_pb2
from omni.profile.v1 import events_pb2, profile_pb2
from omni_kit.bus import unpack
from omni_kit.errors import status_details

from .support import Services, event, get_profile, ident, struct, track, unique


async def _tracked_person(services: Services) -> str:
    return (await track(services, event("page_viewed"))).person_id


async def _identity_only_person(services: Services) -> str:
    response = await services.identity.ResolvePerson(
        identity_pb2.ResolvePersonRequest(
            identifiers=[ident("email", f"{unique()}@example.com")], source="crm"
        )
    )
    return response.resolution.person_id


def _changed_for(person_id: str):  # type: ignore[no-untyped-def]
    """Announcements of trait changes of a person."""
    return lambda e: (
        e.type == "profile.profile_changed"
        and unpack(e, events_pb2.ProfileChangedEvent).person_id == person_id
        and "traits" in unpack(e, events_pb2.ProfileChangedEvent).changed
    )


async def test_traits_are_set_replaced_and_removed_by_precedence(services: Services) -> None:
    person = await _tracked_person(services)
    first = await services.profile.SetTraits(
        profile_pb2.SetTraitsRequest(
            person_id=person, traits=struct({"first_name": "Ada", "tier": "gold", "visits": 3}), source="crm"
        )
    )
    assert dict(first.profile.traits) == {"first_name": "Ada", "tier": "gold", "visits": 3}
    # The web shop ranks below the CRM: it cannot change what the CRM set, only add.
    second = await services.profile.SetTraits(
        profile_pb2.SetTraitsRequest(
            person_id=person, traits=struct({"tier": None, "visits": 4, "city": "Oslo"}), source="web"
        )
    )
    assert sorted(second.ignored_traits) == ["tier", "visits"]
    assert dict(second.profile.traits) == {"first_name": "Ada", "tier": "gold", "visits": 3, "city": "Oslo"}
    third = await services.profile.SetTraits(
        profile_pb2.SetTraitsRequest(
            person_id=person, traits=struct({"tier": None, "visits": 4}), source="crm"
        )
    )
    assert not third.ignored_traits
    assert dict(third.profile.traits) == {"first_name": "Ada", "visits": 4, "city": "Oslo"}
    assert third.profile.event_count == 1
    profile = await get_profile(services, person)
    assert dict(profile.traits) == {"first_name": "Ada", "visits": 4, "city": "Oslo"}
    assert {name: m.source for name, m in profile.trait_metadata.items()} == {
        "first_name": "crm",
        "visits": "crm",
        "city": "web",
    }
    assert (
        profile.trait_metadata["visits"].update_time.ToDatetime()
        > profile.trait_metadata["first_name"].update_time.ToDatetime()
    )

    changes = await services.events.wait_for(_changed_for(person), count=3)
    payloads = [unpack(e, events_pb2.ProfileChangedEvent) for e in changes]
    assert [list(p.changed) for p in payloads] == [["traits"], ["traits"], ["traits"]]
    assert dict(payloads[-1].traits) == {"first_name": "Ada", "visits": 4, "city": "Oslo"}


async def test_the_trait_history_pages_backwards_through_every_change(services: Services) -> None:
    person = await _tracked_person(services)
    for value in ("bronze", "silver", "gold"):
        await services.profile.SetTraits(
            profile_pb2.SetTraitsRequest(person_id=person, traits=struct({"tier": value, "seen": True}))
        )
    await services.profile.SetTraits(
        profile_pb2.SetTraitsRequest(person_id=person, traits=struct({"tier": None}))
    )
    request = profile_pb2.ListTraitHistoryRequest(person_id=person, trait_name="tier", page_size=3)
    first = await services.profile.ListTraitHistory(request)
    newest = first.trait_changes[0]
    assert (newest.old_value.string_value, newest.new_value.WhichOneof("kind")) == ("gold", "null_value")
    assert [c.new_value.string_value for c in first.trait_changes[1:]] == ["gold", "silver"]
    assert first.next_page_token
    request.page_token = first.next_page_token
    second = await services.profile.ListTraitHistory(request)
    assert [(c.old_value.WhichOneof("kind"), c.new_value.string_value) for c in second.trait_changes] == [
        ("null_value", "bronze")
    ]
    assert not second.next_page_token
    assert {c.source for c in first.trait_changes} == {"api"}
    everything = await services.profile.ListTraitHistory(
        profile_pb2.ListTraitHistoryRequest(person_id=person)
    )
    assert len(everything.trait_changes) == 5  # four of tier, one of seen (set once)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await services.profile.ListTraitHistory(
            profile_pb2.ListTraitHistoryRequest(person_id=person, page_token=first.next_page_token)
        )
    assert status_details(raised.value).fields == {"page_token"}


async def test_setting_the_same_traits_again_announces_nothing_new(services: Services) -> None:
    person = await _tracked_person(services)
    request = profile_pb2.SetTraitsRequest(person_id=person, traits=struct({"tier": "gold"}), source="crm")
    await services.profile.SetTraits(request)
    await services.profile.SetTraits(request)
    await services.events.wait_for(_changed_for(person))
    marker = await track(services, event("page_viewed", person_id=person))
    await services.events.wait_for(
        lambda e: e.type == "profile.event_tracked" and e.person_id == marker.person_id, 2
    )
    assert len(services.events.matching(_changed_for(person))) == 1


async def test_a_person_known_only_to_identity_can_get_traits_and_consent(services: Services) -> None:
    person = await _identity_only_person(services)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await get_profile(services, person)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND

    response = await services.profile.SetTraits(
        profile_pb2.SetTraitsRequest(person_id=person, traits=struct({"first_name": "Grace"}))
    )
    assert response.profile.person_id == person
    profile = await get_profile(services, person)
    assert dict(profile.traits) == {"first_name": "Grace"}
    assert profile.event_count == 0
    assert (
        await services.scalar("SELECT source FROM traits WHERE person_id = CAST(:p AS uuid)", p=person)
        == "api"
    )


async def test_consent_is_recorded_with_history_and_announced(services: Services) -> None:
    person = await _tracked_person(services)
    granted = await services.profile.SetConsent(
        profile_pb2.SetConsentRequest(
            person_id=person,
            consent=profile_pb2.Consent(
                channel=common_pb2.CHANNEL_EMAIL, state=profile_pb2.CONSENT_STATE_GRANTED, source="app_signup"
            ),
        )
    )
    assert granted.consent.state == profile_pb2.CONSENT_STATE_GRANTED
    assert granted.consent.source == "app_signup"
    assert abs(granted.consent.update_time.ToDatetime(tzinfo=UTC) - datetime.now(UTC)) < timedelta(seconds=30)
    await services.profile.SetConsent(
        profile_pb2.SetConsentRequest(
            person_id=person,
            consent=profile_pb2.Consent(
                channel=common_pb2.CHANNEL_SMS, state=profile_pb2.CONSENT_STATE_DENIED
            ),
        )
    )
    await services.profile.SetConsent(
        profile_pb2.SetConsentRequest(
            person_id=person,
            consent=profile_pb2.Consent(
                channel=common_pb2.CHANNEL_EMAIL,
                state=profile_pb2.CONSENT_STATE_REVOKED,
                source="unsubscribe_link",
            ),
        )
    )
    profile = await get_profile(services, person)
    assert {(c.channel, c.state, c.source) for c in profile.consents} == {
        (common_pb2.CHANNEL_EMAIL, profile_pb2.CONSENT_STATE_REVOKED, "unsubscribe_link"),
        (common_pb2.CHANNEL_SMS, profile_pb2.CONSENT_STATE_DENIED, "api"),
    }
    history = await services.scalar(
        "SELECT string_agg(channel || ':' || state, ',' ORDER BY recorded_at) FROM consent_history "
        "WHERE person_id = CAST(:p AS uuid)",
        p=person,
    )
    assert history == "email:granted,sms:denied,email:revoked"

    announced = await services.events.wait_for(
        lambda e: e.type == "profile.consent_changed" and e.person_id == person, count=3
    )
    last = unpack(announced[-1], events_pb2.ConsentChangedEvent)
    assert last.person_id == person
    assert last.consent.state == profile_pb2.CONSENT_STATE_REVOKED


async def test_the_profile_shows_recent_events_newest_first_and_counts_all(services: Services) -> None:
    person = await _tracked_person(services)
    start = datetime.now(UTC) - timedelta(hours=1)
    for minute in (5, 1, 3, 4, 2):
        await track(
            services,
            event(
                "product_viewed",
                person_id=person,
                occurred_at=start + timedelta(minutes=minute),
                properties={"minute": minute},
            ),
        )
    profile = await get_profile(services, person, recent=4)
    assert profile.event_count == 6
    # The first event (page_viewed) happened now, after the others.
    assert profile.recent_events[0].type == "page_viewed"
    assert [e.properties["minute"] for e in profile.recent_events[1:]] == [5, 4, 3]
    assert len((await get_profile(services, person)).recent_events) == 6


async def test_the_timeline_pages_backwards_through_everything(services: Services) -> None:
    person = await _tracked_person(services)
    moment = datetime.now(UTC) - timedelta(days=2)
    batch = [
        event(
            "product_viewed",
            id_=f"{person}-{n:02d}",
            person_id=person,
            occurred_at=moment + timedelta(minutes=n // 2),
        )
        for n in range(11)
    ]
    await services.profile.BatchTrackEvents(profile_pb2.BatchTrackEventsRequest(events=batch))
    expected = [e.id for e in (await get_profile(services, person, recent=200)).recent_events]
    assert len(expected) == 12

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await services.profile.ListTimeline(
            profile_pb2.ListTimelineRequest(person_id=person, page_size=5, page_token=token)
        )
        seen.extend(e.id for e in page.events)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert seen == expected
    stamps = [(e.occurred_at.ToDatetime(), e.id) for e in batch]
    assert seen[1:] == [event_id for _, event_id in sorted(stamps, reverse=True)]


async def test_a_page_token_of_another_person_is_refused(services: Services) -> None:
    person, other = await _tracked_person(services), await _tracked_person(services)
    for _ in range(2):
        await track(services, event("page_viewed", person_id=person))
    page = await services.profile.ListTimeline(profile_pb2.ListTimelineRequest(person_id=person, page_size=1))
    assert page.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await services.profile.ListTimeline(
            profile_pb2.ListTimelineRequest(person_id=other, page_token=page.next_page_token)
        )
    details = status_details(raised.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == {"page_token"}
