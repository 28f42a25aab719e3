"""Tracking over gRPC with the real identity service: persons, idempotency, batches, the cart, announcements."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from omni.common.v1 import common_pb2
from omni.events.v1 import envelope_pb2
from omni.profile.v1 import events_pb2, profile_pb2
from omni_kit.bus import unpack

from .support import Services, cart_of, event, get_profile, ident, item, track, unique


def _tracked(event_id: str):  # type: ignore[no-untyped-def]
    def matches(envelope: envelope_pb2.Envelope) -> bool:
        return (
            envelope.type == "profile.event_tracked"
            and unpack(envelope, events_pb2.EventTrackedEvent).event.id == event_id
        )

    return matches


async def test_web_visit_app_cart_and_login_end_on_one_profile(services: Services) -> None:
    cookie, device, email = unique("cookie-"), unique("device-"), f"{unique('ada-')}@example.com"
    now = datetime.now(UTC)
    visit = await track(
        services,
        event(
            "product_viewed",
            identifiers=[ident("anonymous_id", cookie)],
            occurred_at=now - timedelta(minutes=3),
        ),
    )
    added = await track(
        services,
        event(
            "cart_item_added",
            identifiers=[ident("device_id", device)],
            channel=common_pb2.CHANNEL_APP,
            occurred_at=now - timedelta(minutes=2),
            cart_item=item("sku-boots", 2, name="Trail boots", price_minor=12900),
        ),
    )
    login = await track(
        services,
        event(
            "logged_in",
            identifiers=[ident("device_id", device), ident("email", email), ident("anonymous_id", cookie)],
            channel=common_pb2.CHANNEL_APP,
            occurred_at=now - timedelta(minutes=1),
        ),
    )
    assert not (visit.duplicate or added.duplicate or login.duplicate)
    person = login.person_id
    assert person in {visit.person_id, added.person_id}

    # Identity merged the cookie's and the device's persons; its event moves the other profile over.
    await services.events.wait_for(
        lambda e: (
            e.type == "profile.profile_changed"
            and unpack(e, events_pb2.ProfileChangedEvent).person_id == person
            and len(unpack(e, events_pb2.ProfileChangedEvent).merged_person_ids) > 0
        )
    )
    profile = await get_profile(services, person)
    assert [e.type for e in profile.recent_events] == ["logged_in", "cart_item_added", "product_viewed"]
    assert profile.event_count == 3
    assert {e.person_id for e in profile.recent_events} == {person}
    assert cart_of(profile) == {"sku-boots": 2}
    assert profile.cart.items[0].name == "Trail boots"
    assert profile.cart.items[0].unit_price.amount_minor == 12900
    for old in {visit.person_id, added.person_id} - {person}:
        assert (await get_profile(services, old)).person_id == person


async def test_the_same_event_id_twice_is_recorded_once(services: Services) -> None:
    message = event("page_viewed", properties={"path": "/shoes"})
    first = await track(services, message)
    second = await track(services, message)
    assert not first.duplicate
    assert second.duplicate
    assert second.person_id == first.person_id
    assert await services.scalar("SELECT count(*) FROM events WHERE id = :id", id=message.id) == 1
    profile = await get_profile(services, first.person_id)
    assert profile.event_count == 1
    await services.events.wait_for(_tracked(message.id))
    assert len(services.events.matching(_tracked(message.id))) == 1


async def test_a_batch_resolves_each_event_and_answers_in_order(services: Services) -> None:
    cookie = unique("cookie-")
    repeated = event("page_viewed", identifiers=[ident("anonymous_id", cookie)])
    batch = [
        repeated,
        event("product_viewed", identifiers=[ident("anonymous_id", cookie)]),
        event("page_viewed"),
        repeated,
    ]
    response = await services.profile.BatchTrackEvents(profile_pb2.BatchTrackEventsRequest(events=batch))
    results = list(response.results)
    assert [r.duplicate for r in results] == [False, False, False, True]
    assert results[0].person_id == results[1].person_id == results[3].person_id
    assert results[2].person_id != results[0].person_id
    again = await services.profile.BatchTrackEvents(profile_pb2.BatchTrackEventsRequest(events=batch[:2]))
    assert [r.duplicate for r in again.results] == [True, True]
    assert (await get_profile(services, results[0].person_id)).event_count == 2


async def test_an_event_with_a_person_id_skips_identity(services: Services) -> None:
    first = await track(services, event("page_viewed"))
    second = await track(
        services, event("email_opened", person_id=first.person_id, channel=common_pb2.CHANNEL_EMAIL)
    )
    assert second.person_id == first.person_id
    profile = await get_profile(services, first.person_id)
    assert [e.type for e in profile.recent_events] == ["email_opened", "page_viewed"]
    assert profile.recent_events[0].channel == common_pb2.CHANNEL_EMAIL


async def test_the_cart_follows_adds_removes_and_orders_from_any_channel(services: Services) -> None:
    person = (await track(services, event("app_opened", channel=common_pb2.CHANNEL_APP))).person_id

    async def cart_event(
        type_: str, channel: common_pb2.Channel.ValueType, line: common_pb2.CartItem | None
    ) -> None:
        await track(services, event(type_, person_id=person, channel=channel, cart_item=line))

    await cart_event("cart_item_added", common_pb2.CHANNEL_APP, item("sku-a", 1, name="A"))
    await cart_event("cart_item_added", common_pb2.CHANNEL_WEB, item("sku-a", 2))
    await cart_event("cart_item_added", common_pb2.CHANNEL_WEB, item("sku-b", 1))
    profile = await get_profile(services, person)
    assert cart_of(profile) == {"sku-a": 3, "sku-b": 1}
    assert profile.cart.items[0].name == "A"

    await cart_event("cart_item_removed", common_pb2.CHANNEL_APP, item("sku-a", 1))
    await cart_event("cart_item_removed", common_pb2.CHANNEL_WEB, item("sku-b", 5))
    await cart_event("cart_item_removed", common_pb2.CHANNEL_WEB, item("sku-never-added", 1))
    assert cart_of(await get_profile(services, person)) == {"sku-a": 2}

    await cart_event("order_completed", common_pb2.CHANNEL_STORE, None)
    assert cart_of(await get_profile(services, person)) == {}

    changes = await services.events.wait_for(
        lambda e: (
            e.type == "profile.profile_changed"
            and unpack(e, events_pb2.ProfileChangedEvent).person_id == person
            and "cart" in unpack(e, events_pb2.ProfileChangedEvent).changed
        ),
        count=6,
    )
    payloads = [unpack(e, events_pb2.ProfileChangedEvent) for e in changes]
    assert [{i.product_id: i.quantity for i in p.cart.items} for p in payloads] == [
        {"sku-a": 1},
        {"sku-a": 3},
        {"sku-a": 3, "sku-b": 1},
        {"sku-a": 2, "sku-b": 1},
        {"sku-a": 2},
        {},
    ]


async def test_a_tracked_event_is_announced_with_its_person(services: Services) -> None:
    message = event(
        "product_viewed",
        channel=common_pb2.CHANNEL_WEB,
        properties={"product_id": "sku-1", "price": 19.5, "tags": ["new"]},
        occurred_at=datetime.now(UTC) - timedelta(hours=1),
    )
    response = await track(services, message)
    [envelope] = await services.events.wait_for(_tracked(message.id))
    assert envelope.person_id == response.person_id
    assert envelope.producer == "profile"
    announced = unpack(envelope, events_pb2.EventTrackedEvent).event
    assert announced.person_id == response.person_id
    assert announced.type == "product_viewed"
    assert announced.channel == common_pb2.CHANNEL_WEB
    assert dict(announced.properties)["product_id"] == "sku-1"
    assert announced.occurred_at.ToDatetime(tzinfo=UTC) == message.occurred_at.ToDatetime(tzinfo=UTC)
    assert announced.HasField("receive_time")


async def test_persons_merged_within_one_batch_end_on_one_person(services: Services) -> None:
    cookie, device = unique("cookie-"), unique("device-")
    batch = [
        event("page_viewed", identifiers=[ident("anonymous_id", cookie)]),
        event("app_opened", identifiers=[ident("device_id", device)], channel=common_pb2.CHANNEL_APP),
        event("logged_in", identifiers=[ident("device_id", device), ident("anonymous_id", cookie)]),
    ]
    response = await services.profile.BatchTrackEvents(profile_pb2.BatchTrackEventsRequest(events=batch))
    assert len({r.person_id for r in response.results}) == 1
    profile = await get_profile(services, response.results[0].person_id)
    assert profile.event_count == 3


async def test_a_full_batch_of_1000_events_is_recorded(services: Services) -> None:
    cookies = [unique("cookie-") for _ in range(250)]
    batch = [
        event(
            "cart_item_added" if (n // 250) % 2 else "page_viewed",
            identifiers=[ident("anonymous_id", cookies[n % 250])],
            cart_item=item(f"sku-{n % 7}", 1) if (n // 250) % 2 else None,
        )
        for n in range(1000)
    ]
    response = await services.profile.BatchTrackEvents(profile_pb2.BatchTrackEventsRequest(events=batch))
    assert len(response.results) == 1000
    assert not any(r.duplicate for r in response.results)
    assert len({r.person_id for r in response.results}) == 250
    profile = await get_profile(services, response.results[1].person_id)
    assert profile.event_count == 4
    assert sum(cart_of(profile).values()) == 2


async def test_concurrent_copies_of_one_event_are_recorded_once(services: Services) -> None:
    message = event("page_viewed", identifiers=[ident("anonymous_id", unique("cookie-"))])
    responses = await asyncio.gather(*(track(services, message) for _ in range(8)))
    assert sum(not r.duplicate for r in responses) == 1
    assert len({r.person_id for r in responses}) == 1
    assert await services.scalar("SELECT count(*) FROM events WHERE id = :id", id=message.id) == 1
    assert (await get_profile(services, responses[0].person_id)).event_count == 1


async def test_concurrent_cart_additions_all_count(services: Services) -> None:
    person = (await track(services, event("app_opened"))).person_id
    await asyncio.gather(
        *(
            track(services, event("cart_item_added", person_id=person, cart_item=item("sku-socks", 1)))
            for _ in range(20)
        )
    )
    profile = await get_profile(services, person)
    assert cart_of(profile) == {"sku-socks": 20}
    assert profile.event_count == 21


async def test_concurrent_batches_of_one_person_sum_up_in_its_computed_traits(services: Services) -> None:
    # Each batch plans its profile change from a read without locks; a batch that finds the row written
    # since by another plans again from the locked row, so no order and no amount is lost.
    person = (await track(services, event("app_opened"))).person_id
    channels = [common_pb2.CHANNEL_WEB, common_pb2.CHANNEL_STORE]

    async def orders(n: int) -> None:
        batch = [
            event(
                "order_completed",
                person_id=person,
                channel=channels[(n + k) % 2],
                properties={"revenue": 1.25, "currency": "EUR"},
            )
            for k in range(3)
        ]
        await services.profile.BatchTrackEvents(profile_pb2.BatchTrackEventsRequest(events=batch))

    await asyncio.gather(*(orders(n) for n in range(12)))
    profile = await get_profile(services, person)
    assert profile.event_count == 37
    assert profile.computed_traits["lifetime_value"]["amount_minor"] == 36 * 125
    assert profile.computed_traits["orders_online"] + profile.computed_traits["orders_in_store"] == 36
    assert profile.computed_traits["orders_online"] == 18


async def test_an_events_context_is_kept_and_shown_on_the_timeline(services: Services) -> None:
    sent = event("page_viewed")
    sent.context.update({"campaign": {"source": "newsletter"}, "userAgent": "pos-terminal/4.2"})
    person = (await track(services, sent)).person_id
    [shown] = (await get_profile(services, person, recent=5)).recent_events
    assert shown.id == sent.id
    assert dict(shown.context["campaign"]) == {"source": "newsletter"}
    assert shown.context["userAgent"] == "pos-terminal/4.2"
