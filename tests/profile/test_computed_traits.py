"""Computed traits over gRPC: the default set kept up to date as events arrive and announced, definitions
created as data and backfilled from the timeline."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from omni.common.v1 import common_pb2
from omni.profile.v1 import events_pb2, profile_pb2
from omni_kit.bus import unpack
from omni_kit.errors import status_details

from .support import Services, event, get_profile, track, unique

NOW = datetime.now(UTC).replace(microsecond=0)
DEFAULTS = {
    "favourite_category",
    "last_email_open_at",
    "last_login_at",
    "last_purchase_at",
    "lifetime_value",
    "orders_30d",
    "orders_in_store",
    "orders_online",
    "preferred_channel",
}


def _stamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def test_the_default_set_is_defined(services: Services) -> None:
    response = await services.profile.ListComputedTraits(profile_pb2.ListComputedTraitsRequest())
    assert {t.name for t in response.computed_traits} >= DEFAULTS
    by_name = {t.name: t for t in response.computed_traits}
    assert by_name["last_login_at"].per_channel
    assert by_name["orders_30d"].window_days == 30
    assert list(by_name["orders_online"].channels) == [common_pb2.CHANNEL_WEB, common_pb2.CHANNEL_APP]
    assert by_name["lifetime_value"].currency_code == "EUR"


async def test_the_default_traits_follow_the_events(services: Services) -> None:
    person = (await track(services, event("page_viewed", occurred_at=NOW - timedelta(days=60)))).person_id
    batch = [
        event(
            "logged_in", person_id=person, channel=common_pb2.CHANNEL_APP, occurred_at=NOW - timedelta(days=2)
        ),
        event(
            "logged_in", person_id=person, channel=common_pb2.CHANNEL_WEB, occurred_at=NOW - timedelta(days=1)
        ),
        event("email_opened", person_id=person, channel=common_pb2.CHANNEL_EMAIL, occurred_at=NOW),
        event(
            "order_completed",
            person_id=person,
            channel=common_pb2.CHANNEL_WEB,
            occurred_at=NOW - timedelta(days=45),
            properties={"revenue": 99.9, "currency": "EUR", "category": "shoes"},
        ),
        event(
            "order_completed",
            person_id=person,
            channel=common_pb2.CHANNEL_STORE,
            occurred_at=NOW - timedelta(days=3),
            properties={"revenue_minor": 2500, "currency": "EUR", "category": "hats"},
        ),
        event("product_viewed", person_id=person, properties={"category": "hats"}, occurred_at=NOW),
    ]
    await services.profile.BatchTrackEvents(profile_pb2.BatchTrackEventsRequest(events=batch))
    values = dict((await get_profile(services, person)).computed_traits)
    assert {name: values[name] for name in sorted(values)} == {
        "favourite_category": "hats",
        "last_email_open_at": _stamp(NOW),
        "last_login_at": {"app": _stamp(NOW - timedelta(days=2)), "web": _stamp(NOW - timedelta(days=1))},
        "last_purchase_at": _stamp(NOW - timedelta(days=3)),
        "lifetime_value": {"amount_minor": 9990 + 2500, "currency_code": "EUR"},
        "orders_30d": 1,
        "orders_in_store": 1,
        "orders_online": 1,
        "preferred_channel": "web",
    }
    [change] = await services.events.wait_for(
        lambda e: (
            e.type == "profile.profile_changed"
            and e.person_id == person
            and "orders_30d" in unpack(e, events_pb2.ProfileChangedEvent).computed_traits
        )
    )
    payload = unpack(change, events_pb2.ProfileChangedEvent)
    assert "computed_traits" in payload.changed
    assert dict(payload.computed_traits) == values


async def test_a_new_definition_is_backfilled_and_then_kept_up_to_date(services: Services) -> None:
    person = (await track(services, event("page_viewed", properties={"path": "/a"}))).person_id
    for path in ("/b", "/c"):
        await track(services, event("page_viewed", person_id=person, properties={"path": path, "seconds": 4}))
    name = unique("page_views_")
    created = await services.profile.CreateComputedTrait(
        profile_pb2.CreateComputedTraitRequest(
            computed_trait=profile_pb2.ComputedTrait(
                name=name,
                kind=profile_pb2.COMPUTED_TRAIT_KIND_SUM,
                event_type="page_viewed",
                property="seconds",
                window_days=7,
                description="Seconds on pages this week.",
            )
        )
    )
    assert created.computed_trait.state == profile_pb2.COMPUTED_TRAIT_STATE_BACKFILLING
    assert created.computed_trait.HasField("create_time")
    # Applied to new events at once, before the backfill has run.
    await track(services, event("page_viewed", person_id=person, properties={"seconds": 2}))
    async with asyncio.timeout(10):
        while True:
            listed = await services.profile.ListComputedTraits(
                profile_pb2.ListComputedTraitsRequest(page_size=500)
            )
            [mine] = [t for t in listed.computed_traits if t.name == name]
            if mine.state == profile_pb2.COMPUTED_TRAIT_STATE_READY:
                break
            await asyncio.sleep(0.1)
    assert (await get_profile(services, person)).computed_traits[name] == 10
    # The backfill read the properties from the events' encodings: they are not kept twice.
    stored_twice = await services.scalar(
        "SELECT count(*) FROM events WHERE person_id = :person AND properties IS NOT NULL",
        person=uuid.UUID(person),
    )
    assert stored_twice == 0
    await track(services, event("page_viewed", person_id=person, properties={"seconds": 5}))
    assert (await get_profile(services, person)).computed_traits[name] == 15


async def test_a_taken_name_is_refused(services: Services) -> None:
    request = profile_pb2.CreateComputedTraitRequest(
        computed_trait=profile_pb2.ComputedTrait(
            name="orders_online", kind=profile_pb2.COMPUTED_TRAIT_KIND_COUNT
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await services.profile.CreateComputedTrait(request)
    details = status_details(raised.value)
    assert details.code == grpc.StatusCode.ALREADY_EXISTS
    assert details.error_info is not None and details.error_info.reason == "COMPUTED_TRAIT_EXISTS"


async def test_definitions_page_by_name(services: Services) -> None:
    first = await services.profile.ListComputedTraits(profile_pb2.ListComputedTraitsRequest(page_size=4))
    assert len(first.computed_traits) == 4 and first.next_page_token
    rest = await services.profile.ListComputedTraits(
        profile_pb2.ListComputedTraitsRequest(page_size=500, page_token=first.next_page_token)
    )
    names = [t.name for t in first.computed_traits] + [t.name for t in rest.computed_traits]
    assert names == sorted(names) and set(names) >= DEFAULTS
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await services.profile.ListComputedTraits(profile_pb2.ListComputedTraitsRequest(page_token="@@"))
    assert status_details(raised.value).fields == {"page_token"}
