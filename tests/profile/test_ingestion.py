"""Ingestion semantics over gRPC: ids scoped by source, and late or out-of-order events ending with the same
profile as in-order ones."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from omni.common.v1 import common_pb2
from omni.profile.v1 import profile_pb2

from .support import Services, cart_of, event, get_profile, item, track, unique

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)


def _sourced(message: profile_pb2.Event, source: str) -> profile_pb2.Event:
    message.source = source
    return message


async def test_the_same_id_from_two_sources_is_two_events(services: Services) -> None:
    shared_id = unique("msg-")
    sent = _sourced(event(id_=shared_id), "web_sdk")
    web = await track(services, sent)
    pos = await track(services, _sourced(event(id_=shared_id, person_id=web.person_id), "pos_back_office"))
    again = await track(services, sent)
    assert (web.status, pos.status, again.status) == (
        profile_pb2.TRACK_STATUS_RECORDED,
        profile_pb2.TRACK_STATUS_RECORDED,
        profile_pb2.TRACK_STATUS_DUPLICATE,
    )
    assert again.duplicate and again.person_id == web.person_id
    assert await services.scalar("SELECT count(*) FROM events WHERE id = :id", id=shared_id) == 2
    timeline = await services.profile.ListTimeline(profile_pb2.ListTimelineRequest(person_id=web.person_id))
    assert sorted(e.source for e in timeline.events) == ["pos_back_office", "web_sdk"]


async def test_an_event_without_a_source_is_the_apis(services: Services) -> None:
    message = event()
    response = await track(services, message)
    [stored] = (await get_profile(services, response.person_id)).recent_events
    assert stored.source == "api"
    again = await track(
        services, _sourced(event(id_=message.id, identifiers=list(message.identifiers)), "api")
    )
    assert again.status == profile_pb2.TRACK_STATUS_DUPLICATE
    assert again.duplicate and again.person_id == response.person_id


async def test_a_retried_batch_is_applied_once(services: Services) -> None:
    person = (await track(services, event())).person_id
    batch = [
        event("cart_item_added", person_id=person, cart_item=item("sku-1", 2)),
        event("order_completed", person_id=person, properties={"revenue": 10.5, "currency": "EUR"}),
        event("cart_item_added", person_id=person, cart_item=item("sku-2", 1)),
    ]
    for n, message in enumerate(batch):
        message.occurred_at.FromDatetime(T0 + timedelta(minutes=n))
    request = profile_pb2.BatchTrackEventsRequest(events=batch)
    first = await services.profile.BatchTrackEvents(request)
    second = await services.profile.BatchTrackEvents(request)
    assert first.recorded_count == 3 and second.duplicate_count == 3
    profile = await get_profile(services, person)
    assert profile.event_count == 4
    assert cart_of(profile) == {"sku-2": 1}
    assert profile.computed_traits["lifetime_value"]["amount_minor"] == 1050


def _history(person_id: str) -> list[profile_pb2.Event]:
    """A shopping history: adds, a removal, an order in the middle, adds after it, logins, views."""
    plan: list[tuple[str, common_pb2.Channel.ValueType, common_pb2.CartItem | None, dict[str, Any]]] = [
        ("product_viewed", common_pb2.CHANNEL_WEB, None, {"category": "shoes"}),
        ("cart_item_added", common_pb2.CHANNEL_APP, item("sku-1", 2, name="Boots"), {"category": "shoes"}),
        ("logged_in", common_pb2.CHANNEL_APP, None, {}),
        ("cart_item_added", common_pb2.CHANNEL_WEB, item("sku-2", 1), {"category": "hats"}),
        ("cart_item_removed", common_pb2.CHANNEL_WEB, item("sku-1", 1), {}),
        ("order_completed", common_pb2.CHANNEL_WEB, None, {"revenue": 42.5, "currency": "EUR"}),
        ("cart_item_added", common_pb2.CHANNEL_STORE, item("sku-3", 3), {"category": "hats"}),
        ("logged_in", common_pb2.CHANNEL_WEB, None, {}),
        ("cart_item_added", common_pb2.CHANNEL_APP, item("sku-1", 1, name="Boots v2"), {"category": "shoes"}),
        ("order_completed", common_pb2.CHANNEL_STORE, None, {"revenue": 10, "currency": "EUR"}),
        ("cart_item_added", common_pb2.CHANNEL_WEB, item("sku-4", 1), {"category": "bags"}),
        ("product_viewed", common_pb2.CHANNEL_APP, None, {"category": "hats"}),
    ]
    events = []
    for n, (type_, channel, line, properties) in enumerate(plan):
        message = event(
            type_,
            id_=f"{person_id}-{n}",
            person_id=person_id,
            channel=channel,
            occurred_at=T0 + timedelta(hours=n),
            properties=properties,
            cart_item=line,
        )
        events.append(message)
    return events


def _observable(profile: profile_pb2.Profile) -> tuple[Any, ...]:
    return (
        [(i.product_id, i.quantity, i.name) for i in profile.cart.items],
        dict(profile.computed_traits),
        profile.event_count,
        [e.type for e in profile.recent_events],
    )


async def test_late_and_shuffled_events_end_with_the_in_order_profile(services: Services) -> None:
    in_order, shuffled, reversed_ = [
        (await track(services, event("app_opened", occurred_at=T0 - timedelta(days=1)))).person_id
        for _ in range(3)
    ]
    for message in _history(in_order):
        await track(services, message)
    rng = random.Random(7)
    mixed = _history(shuffled)
    rng.shuffle(mixed)
    for start in range(0, len(mixed), 5):
        await services.profile.BatchTrackEvents(
            profile_pb2.BatchTrackEventsRequest(events=mixed[start : start + 5])
        )
    for message in reversed(_history(reversed_)):
        await track(services, message)
    expected = _observable(await get_profile(services, in_order, recent=50))
    assert [line[0] for line in expected[0]] == ["sku-4"]
    assert _observable(await get_profile(services, shuffled, recent=50)) == expected
    assert _observable(await get_profile(services, reversed_, recent=50)) == expected
