"""The real segment-analytics-python library, pointed at Omni, lands events on the right profiles."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from segment import analytics
from segment.analytics.client import Client
from segment.analytics.request import APIError

from omni.common.v1 import common_pb2
from omni.identity.v1 import identity_pb2
from omni.profile.v1 import profile_pb2

from ..support import unique
from .conftest import Endpoint, key


def _at(event: profile_pb2.Event) -> datetime:
    return event.occurred_at.ToDatetime(tzinfo=UTC)


def _oldest_first(profile: profile_pb2.Profile) -> list[profile_pb2.Event]:
    return list(reversed(profile.recent_events))


async def _eventually(check: Callable[[], Awaitable[bool]], within_s: float = 10.0) -> None:
    """Poll until check passes: the merge reaches profile through the event log, in the background."""
    for _ in range(int(within_s / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not true within {within_s} s")


@pytest.fixture
async def client(endpoint: Endpoint) -> AsyncIterator[Client]:
    """A library client in sync mode: each call posts at once and raises on an error answer."""
    yield Client("wk_web", host=endpoint.url, sync_mode=True)


async def test_identify_track_page_and_screen_land_on_one_profile(endpoint: Endpoint) -> None:
    user, mids = unique("user-"), [unique("mid-") for _ in range(4)]
    email = f"{user}@example.com"
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    saved = (analytics.write_key, analytics.host, analytics.sync_mode, analytics.default_client)
    # Configured as an application configures it: the module's settings, then the module's calls.
    analytics.write_key, analytics.host, analytics.sync_mode = "wk_web", endpoint.url, True
    analytics.default_client = None
    try:
        await asyncio.to_thread(
            analytics.identify, user, {"email": email, "plan": "gold"}, timestamp=start, message_id=mids[0]
        )
        await asyncio.to_thread(
            analytics.track,
            user,
            "Product Added",
            {"product_id": "sku-1", "price": 19.99, "currency": "EUR"},
            timestamp=start + timedelta(minutes=1),
            message_id=mids[1],
        )
        await asyncio.to_thread(
            analytics.page,
            user,
            "Shop",
            "Boots",
            {"path": "/boots"},
            timestamp=start + timedelta(minutes=2),
            message_id=mids[2],
        )
        await asyncio.to_thread(
            analytics.screen, user, None, "Cart", timestamp=start + timedelta(minutes=3), message_id=mids[3]
        )
    finally:
        analytics.write_key, analytics.host, analytics.sync_mode, analytics.default_client = saved

    profile = await endpoint.profile_of("user_id", user)
    assert await endpoint.person_of("email", email) == profile.person_id
    assert dict(profile.traits) == {"email": email, "plan": "gold"}
    events = _oldest_first(profile)
    assert [e.type for e in events] == ["identified", "cart_item_added", "page_viewed", "screen_viewed"]
    assert [key(e) for e in events] == [f"web:{m}" for m in mids]
    assert {e.channel for e in events} == {common_pb2.CHANNEL_WEB}
    assert dict(events[1].properties) == {"product_id": "sku-1", "price": 19.99, "currency": "EUR"}
    assert [(i.product_id, i.quantity, i.unit_price.amount_minor) for i in profile.cart.items] == [
        ("sku-1", 1, 1999)
    ]
    assert dict(events[2].properties) == {"path": "/boots", "name": "Boots", "category": "Shop"}
    assert dict(events[3].properties) == {"name": "Cart"}
    # Sent at once from this machine, the skew correction moves the times by the network delay only.
    for offset, event in enumerate(events):
        assert abs(_at(event) - (start + timedelta(minutes=offset))) < timedelta(seconds=2)


async def test_alias_joins_the_anonymous_visits_to_the_identified_user(
    endpoint: Endpoint, client: Client
) -> None:
    cookie, user = unique("cookie-"), unique("user-")
    await asyncio.to_thread(
        client.track, anonymous_id=cookie, event="Product Viewed", properties={"sku": "a"}
    )
    await asyncio.to_thread(client.identify, user_id=user, traits={"first_name": "Ada"})
    anonymous, identified = (
        await endpoint.person_of("anonymous_id", cookie),
        await endpoint.person_of("user_id", user),
    )
    assert anonymous != identified

    # A server library sends previousId alone; identity knows it as the cookie.
    await asyncio.to_thread(client.alias, previous_id=cookie, user_id=user)

    survivor = await endpoint.person_of("user_id", user)
    assert await endpoint.person_of("anonymous_id", cookie) == survivor

    async def merged() -> bool:
        profile = await endpoint.profile_of("user_id", user)
        return profile.event_count == 3

    await _eventually(merged)
    profile = await endpoint.profile_of("user_id", user)
    assert sorted(e.type for e in profile.recent_events) == ["aliased", "identified", "product_viewed"]
    assert dict(profile.traits) == {"first_name": "Ada"}
    person = await endpoint.services.identity.GetPerson(identity_pb2.GetPersonRequest(person_id=survivor))
    held = {(i.type, i.value) for i in person.person.identifiers}
    assert ("anonymous_id", cookie) in held
    assert ("user_id", cookie) not in held


async def test_group_records_the_group_joined(endpoint: Endpoint, client: Client) -> None:
    user = unique("user-")
    await asyncio.to_thread(
        client.group, user_id=user, group_id="acme-1", traits={"name": "Acme", "employees": 40}
    )
    (event,) = (await endpoint.profile_of("user_id", user)).recent_events
    assert event.type == "group_joined"
    assert event.properties["group_id"] == "acme-1"
    assert dict(event.properties["group_traits"]) == {"name": "Acme", "employees": 40}


async def test_batches_queued_in_the_background_and_gzipped_all_arrive(endpoint: Endpoint) -> None:
    customers = [unique("pos-customer-") for _ in range(3)]
    background = Client("wk_pos", host=endpoint.url, gzip=True, upload_size=50, upload_interval=0.05)
    try:
        for index in range(120):
            background.track(
                user_id=customers[index % 3],
                event="Order Completed",
                properties={"order_id": f"o-{index}", "total": index},
            )
        await asyncio.to_thread(background.flush)
    finally:
        await asyncio.to_thread(background.join)
    for customer in customers:
        profile = await endpoint.profile_of("user_id", customer, recent=100)
        assert profile.event_count == 40
        # The point-of-sale key's source says store; a server library does not say otherwise.
        assert {e.channel for e in profile.recent_events} == {common_pb2.CHANNEL_STORE}
        assert {e.type for e in profile.recent_events} == {"order_completed"}


async def test_a_message_sent_twice_is_recorded_once(endpoint: Endpoint, client: Client) -> None:
    user, mid = unique("user-"), unique("mid-")
    for _ in range(2):
        await asyncio.to_thread(client.track, user_id=user, event="Signed Up", message_id=mid)
    profile = await endpoint.profile_of("user_id", user)
    assert profile.event_count == 1
    assert [key(e) for e in profile.recent_events] == [f"web:{mid}"]


async def test_the_library_gets_a_clear_400_for_a_refused_message(endpoint: Endpoint, client: Client) -> None:
    user = unique("user-")
    with pytest.raises(APIError) as raised:
        await asyncio.to_thread(
            client.track, user_id=user, event="Signed Up", timestamp=datetime.now(UTC) + timedelta(days=3)
        )
    assert raised.value.status == 400
    assert raised.value.code == "invalid_request"
    assert "timestamp" in raised.value.message and "future" in raised.value.message


async def test_the_library_gets_401_for_an_unknown_write_key(endpoint: Endpoint) -> None:
    stranger = Client("wk_nobody", host=endpoint.url, sync_mode=True)
    with pytest.raises(APIError) as raised:
        await asyncio.to_thread(stranger.track, user_id=unique("user-"), event="Signed Up")
    assert (raised.value.status, raised.value.code) == (401, "unauthorized")
    assert "write key" in raised.value.message


async def test_product_added_and_removed_fill_the_cart(endpoint: Endpoint, client: Client) -> None:
    user = unique("user-")
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    calls = [
        ("Product Added", {"product_id": "sku-1", "name": "Boots", "price": 129.9, "currency": "EUR"}),
        ("Product Added", {"sku": "sku-2", "name": "Hat", "quantity": 2, "price": 19.99, "currency": "eur"}),
        ("Product Added", {"product_id": "sku-1", "quantity": 2}),
        ("product_removed", {"product_id": "sku-2"}),
        ("Product Removed", {"product_id": "sku-1", "quantity": 1}),
    ]
    for offset, (name, properties) in enumerate(calls):
        await asyncio.to_thread(
            client.track,
            user_id=user,
            event=name,
            properties=properties,
            timestamp=start + timedelta(minutes=offset),
        )
    profile = await endpoint.profile_of("user_id", user)
    assert [
        (i.product_id, i.quantity, i.name, i.unit_price.amount_minor, i.unit_price.currency_code)
        for i in profile.cart.items
    ] == [("sku-1", 2, "Boots", 12990, "EUR"), ("sku-2", 1, "Hat", 1999, "EUR")]
    assert [e.type for e in _oldest_first(profile)] == ["cart_item_added"] * 3 + ["cart_item_removed"] * 2


async def test_the_context_the_library_sends_stays_with_the_event(endpoint: Endpoint, client: Client) -> None:
    # Where a customer came from (campaign), with what (user agent) and from where (page, IP) is kept on
    # the event for attribution; context.traits is read for identifiers and goes to the profile instead.
    user = unique("user-")
    email = f"{user}@example.com"
    context = {
        "campaign": {"source": "newsletter", "medium": "email", "name": "spring-sale"},
        "page": {
            "url": "https://shop.example/boots?utm_source=newsletter",
            "referrer": "https://mail.example/",
        },
        "userAgent": "Mozilla/5.0 (iPhone)",
        "ip": "203.0.113.7",
        "locale": "de-DE",
        "traits": {"email": email},
    }
    await asyncio.to_thread(client.track, user_id=user, event="Signed Up", properties={}, context=context)

    profile = await endpoint.profile_of("user_id", user)
    assert await endpoint.person_of("email", email) == profile.person_id
    (event,) = profile.recent_events
    kept = dict(event.context)
    assert dict(kept["campaign"]) == context["campaign"]
    assert dict(kept["page"]) == context["page"]
    assert (kept["userAgent"], kept["ip"], kept["locale"]) == ("Mozilla/5.0 (iPhone)", "203.0.113.7", "de-DE")
    # The library names itself in every context it sends.
    assert kept["library"]["name"] == "analytics-python"
    assert "traits" not in kept


async def test_an_oversize_context_loses_its_largest_parts_and_the_event_is_kept(
    endpoint: Endpoint, client: Client
) -> None:
    user = unique("user-")
    campaign = {"source": "newsletter", "name": "spring-sale"}
    await asyncio.to_thread(
        client.track, user_id=user, event="Signed Up", context={"note": "x" * 9000, "campaign": campaign}
    )
    (event,) = (await endpoint.profile_of("user_id", user)).recent_events
    assert event.type == "signed_up"
    assert sorted(event.context) == ["campaign", "library"]
    assert dict(event.context["campaign"]) == campaign


async def test_an_order_with_only_a_total_counts_for_the_lifetime_value(
    endpoint: Endpoint, client: Client
) -> None:
    user = unique("user-")
    await asyncio.to_thread(client.track, user_id=user, event="Product Added", properties={"product_id": "a"})
    await asyncio.to_thread(
        client.track, user_id=user, event="Order Completed", properties={"order_id": "o-1", "total": 129.9}
    )
    await asyncio.to_thread(
        client.track,
        user_id=user,
        event="Order Completed",
        properties={"order_id": "o-2", "value": 10, "currency": "EUR"},
    )
    profile = await endpoint.profile_of("user_id", user)
    assert dict(profile.computed_traits["lifetime_value"]) == {"amount_minor": 13990, "currency_code": "EUR"}
    assert list(profile.cart.items) == []


@pytest.mark.parametrize(
    ("properties", "field"),
    [
        ({"product_id": "sku-1", "price": "19.99", "currency": "EUR"}, "properties.price"),
        ({"product_id": "sku-1", "price": -1, "currency": "EUR"}, "properties.price"),
        ({"product_id": "sku-1", "price": 5, "currency": "euros"}, "properties.currency"),
        ({"product_id": "sku-1", "quantity": 0}, "properties.quantity"),
        ({"product_id": "sku-1", "quantity": 1.5}, "properties.quantity"),
        ({"product_id": "sku-1", "quantity": "2"}, "properties.quantity"),
        ({"name": "Boots"}, "properties.product_id"),
    ],
)
async def test_a_product_added_with_a_bad_line_is_400_with_the_field(
    endpoint: Endpoint, client: Client, properties: dict[str, object], field: str
) -> None:
    before = await endpoint.services.counts()
    with pytest.raises(APIError) as raised:
        await asyncio.to_thread(
            client.track, user_id=unique("user-"), event="Product Added", properties=properties
        )
    assert (raised.value.status, raised.value.code) == (400, "invalid_request")
    assert raised.value.message.startswith(f"{field}: ")
    assert await endpoint.services.counts() == before


@pytest.mark.parametrize("newest_first", [True, False])
async def test_of_two_identify_calls_the_newer_sets_the_trait_whatever_arrives_last(
    endpoint: Endpoint, client: Client, newest_first: bool
) -> None:
    user = unique("user-")
    older = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    newer = older + timedelta(hours=1)
    calls = [("gold", older), ("platinum", newer)]
    for plan, at in reversed(calls) if newest_first else calls:
        # A queued call the device sends late: its timestamp says when it was made, sentAt when it was sent.
        await asyncio.to_thread(client.identify, user_id=user, traits={"plan": plan}, timestamp=at)
    profile = await endpoint.profile_of("user_id", user)
    assert dict(profile.traits) == {"plan": "platinum"}
    metadata = profile.trait_metadata["plan"]
    assert metadata.source == "web"
    assert abs(metadata.update_time.ToDatetime(tzinfo=UTC) - newer) < timedelta(seconds=2)
