"""Segment messages as profile events: event types, clock skew, channels, identifiers and refusals (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from omni.common.v1 import common_pb2
from omni_kit.errors import FieldViolation, Violations
from omni_profile.http import segment
from omni_profile.http.segment import Refused, Translated
from omni_profile.http.sources import Source, channel_of

WEB = Source(name="web")
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _translate(message: dict[str, Any], source: Source = WEB, **kwargs: Any) -> Translated | Refused:
    return segment.translate(message, source=source, received_at=NOW, **kwargs)


def _ok(message: dict[str, Any], **kwargs: Any) -> Translated:
    translated = _translate(message, **kwargs)
    assert isinstance(translated, Translated), translated
    return translated


def _refused_fields(message: dict[str, Any], **kwargs: Any) -> set[str]:
    translated = _translate(message, **kwargs)
    assert isinstance(translated, Refused), translated
    return {v.field for v in translated.violations}


def _track(**fields: Any) -> dict[str, Any]:
    return {"type": "track", "messageId": "m-1", "anonymousId": "anon-1", "event": "Product Viewed", **fields}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Product Added", "product_added"),
        ("productAdded", "product_added"),
        ("Order-Completed!", "order_completed"),
        ("HTMLPage Viewed", "html_page_viewed"),
        ("  signed_up  ", "signed_up"),
        ("Produkt hinzugefügt", "produkt_hinzugefugt"),
        ("404 Seen", "event_404_seen"),
        ("???", ""),
    ],
)
def test_event_names_become_snake_case_types(name: str, expected: str) -> None:
    assert segment.snake_case(name) == expected


def test_the_timestamp_is_corrected_by_the_senders_clock_skew() -> None:
    # The device's clock is 2 hours fast: it stamped the event 10 minutes before it sent it.
    timestamp = NOW + timedelta(hours=2) - timedelta(minutes=10)
    sent_at = NOW + timedelta(hours=2)
    assert segment.occurred_at(timestamp, sent_at, NOW, Violations()) == NOW - timedelta(minutes=10)


def test_without_sent_at_the_timestamp_is_kept_and_without_timestamp_it_is_the_receive_time() -> None:
    timestamp = NOW - timedelta(days=3)
    assert segment.occurred_at(timestamp, None, NOW, Violations()) == timestamp
    assert segment.occurred_at(None, NOW + timedelta(hours=5), NOW, Violations()) == NOW


def test_the_batch_sent_at_applies_when_the_message_has_none() -> None:
    timestamp = NOW + timedelta(hours=1) - timedelta(seconds=30)
    message = _track(timestamp=timestamp.isoformat())
    event = _ok(message, batch_sent_at=NOW + timedelta(hours=1)).event
    assert event.occurred_at.ToDatetime(tzinfo=UTC) == NOW - timedelta(seconds=30)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-03-01T10:00:00Z", datetime(2026, 3, 1, 10, tzinfo=UTC)),
        ("2026-03-01T12:00:00.250+02:00", datetime(2026, 3, 1, 10, 0, 0, 250_000, tzinfo=UTC)),
        ("2026-03-01T10:00:00", datetime(2026, 3, 1, 10, tzinfo=UTC)),
    ],
)
def test_times_are_iso_8601_in_utc(value: str, expected: datetime) -> None:
    assert segment.parse_time(value, "timestamp", Violations()) == expected


@pytest.mark.parametrize("value", ["yesterday", "2026-13-01T00:00:00Z", 1700000000, ["2026-03-01"]])
def test_times_that_are_not_iso_8601_are_refused(value: Any) -> None:
    violations = Violations()
    assert segment.parse_time(value, "timestamp", violations) is None
    assert [v.field for v in violations.items] == ["timestamp"]


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        ({"library": {"name": "analytics.js", "version": "next-1.70.0"}}, common_pb2.CHANNEL_WEB),
        ({"library": {"name": "analytics-ios"}}, common_pb2.CHANNEL_APP),
        ({"library": {"name": "analytics-android"}}, common_pb2.CHANNEL_APP),
        ({"library": {"name": "analytics-kotlin"}}, common_pb2.CHANNEL_APP),
        ({"channel": "mobile"}, common_pb2.CHANNEL_APP),
        ({"channel": "browser", "library": {"name": "analytics-ios"}}, common_pb2.CHANNEL_WEB),
        ({"channel": "call_center", "library": {"name": "analytics-python"}}, common_pb2.CHANNEL_CALL_CENTER),
        ({"channel": "server", "library": {"name": "analytics-python"}}, common_pb2.CHANNEL_STORE),
        ({"library": {"name": "analytics-node"}}, common_pb2.CHANNEL_STORE),
        ({}, common_pb2.CHANNEL_STORE),
    ],
)
def test_the_channel_comes_from_the_context_then_the_library_then_the_source(
    context: dict[str, Any], expected: int
) -> None:
    assert channel_of(context, Source(name="pos", channel="store")) == expected


def test_a_source_named_like_a_channel_defaults_to_it_and_others_to_none() -> None:
    assert Source(name="app").default_channel == common_pb2.CHANNEL_APP
    assert Source(name="backoffice").default_channel == common_pb2.CHANNEL_UNSPECIFIED
    with pytest.raises(ValueError, match="unknown channel"):
        Source(name="pos", channel="telepathy")


def test_a_track_call_becomes_an_event_with_its_identifiers_and_properties() -> None:
    message = _track(
        userId="u-1",
        event="Product Added",
        properties={"product_id": "sku-1", "price": 12.5},
        context={"traits": {"email": "ada@example.com"}, "device": {"id": "dev-1"}},
    )
    translated = _ok(message)
    event = translated.event
    assert (event.id, event.source) == ("m-1", "web")
    assert event.type == "cart_item_added"
    assert (event.cart_item.product_id, event.cart_item.quantity) == ("sku-1", 1)
    assert not event.cart_item.HasField("unit_price"), "a price without a currency has no currency to be in"
    assert event.channel == common_pb2.CHANNEL_WEB
    assert [(i.type, i.value) for i in event.identifiers] == [
        ("user_id", "u-1"),
        ("anonymous_id", "anon-1"),
        ("email", "ada@example.com"),
        ("device_id", "dev-1"),
    ]
    assert translated.origins == ["userId", "anonymousId", "context.traits.email", "context.device.id"]
    assert dict(event.properties) == {"product_id": "sku-1", "price": 12.5}
    assert event.occurred_at.ToDatetime(tzinfo=UTC) == NOW
    assert translated.traits == {}


def test_numeric_ids_are_taken_as_strings() -> None:
    event = _ok({"type": "page", "messageId": "m", "userId": 42}).event
    assert [(i.type, i.value) for i in event.identifiers] == [("user_id", "42")]


def test_identify_sets_traits_and_takes_email_and_phone_as_identifiers() -> None:
    translated = _ok(
        {
            "type": "identify",
            "messageId": "m-2",
            "userId": "u-2",
            "traits": {"email": "grace@example.com", "phone": "+33612345678", "plan": "gold"},
        }
    )
    assert translated.event.type == "identified"
    assert translated.traits == {"email": "grace@example.com", "phone": "+33612345678", "plan": "gold"}
    assert [(i.type, i.value) for i in translated.event.identifiers] == [
        ("user_id", "u-2"),
        ("email", "grace@example.com"),
        ("phone", "+33612345678"),
    ]
    assert not translated.event.HasField("properties")


def test_page_screen_group_and_alias_have_their_own_event_types() -> None:
    page = _ok(
        {"type": "page", "messageId": "p", "anonymousId": "a", "name": "Home", "properties": {"path": "/"}}
    )
    assert (page.event.type, dict(page.event.properties)) == ("page_viewed", {"path": "/", "name": "Home"})
    screen = _ok({"type": "screen", "messageId": "s", "anonymousId": "a", "name": "Cart"})
    assert (screen.event.type, dict(screen.event.properties)) == ("screen_viewed", {"name": "Cart"})
    group = _ok({"type": "group", "messageId": "g", "userId": "u", "groupId": 7, "traits": {"name": "Acme"}})
    assert group.event.type == "group_joined"
    assert group.event.properties["group_id"] == "7"
    assert dict(group.event.properties["group_traits"]) == {"name": "Acme"}
    assert group.traits == {}


def test_alias_links_the_previous_id_to_the_user_id() -> None:
    former_user = _ok({"type": "alias", "messageId": "a1", "userId": "u-new", "previousId": "u-old"})
    assert former_user.event.type == "aliased"
    assert [(i.type, i.value) for i in former_user.event.identifiers] == [
        ("user_id", "u-new"),
        ("user_id", "u-old"),
    ]
    cookie = _ok(
        {"type": "alias", "messageId": "a2", "userId": "u-new", "anonymousId": "c-1", "previousId": "c-1"}
    )
    assert [(i.type, i.value) for i in cookie.event.identifiers] == [
        ("user_id", "u-new"),
        ("anonymous_id", "c-1"),
    ]


def _added(properties: dict[str, Any]) -> dict[str, Any]:
    return _track(event="Product Added", properties=properties)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Product Added", "cart_item_added"),
        ("product_added", "cart_item_added"),
        ("productAdded", "cart_item_added"),
        ("Product Removed", "cart_item_removed"),
        ("product_removed", "cart_item_removed"),
        ("Product Viewed", "product_viewed"),
    ],
)
def test_segments_cart_events_are_the_profiles_cart_events(name: str, expected: str) -> None:
    assert _ok(_track(event=name, properties={"product_id": "p"})).event.type == expected


def test_a_price_becomes_minor_units_of_its_currency() -> None:
    prices = [(19.99, "EUR", 1999), (0.285, "EUR", 29), (1200, "JPY", 1200), (1.2345, "KWD", 1235)]
    for price, currency, minor in prices:
        item = _ok(_added({"product_id": "p", "price": price, "currency": currency})).event.cart_item
        assert (item.unit_price.amount_minor, item.unit_price.currency_code) == (minor, currency)


def test_a_cart_event_takes_its_line_from_the_ecommerce_properties() -> None:
    message = _track(
        event="Cart Item Added",
        properties={"sku": "sku-9", "quantity": 2, "name": "Boots", "price": 129.9, "currency": "eur"},
    )
    item = _ok(message).event.cart_item
    assert (item.product_id, item.quantity, item.name) == ("sku-9", 2, "Boots")
    assert (item.unit_price.amount_minor, item.unit_price.currency_code) == (12990, "EUR")


@pytest.mark.parametrize(
    ("message", "fields"),
    [
        ({"type": "track", "anonymousId": "a", "event": "X"}, {"messageId"}),
        (_track(messageId=17), {"messageId"}),
        (_track(messageId="m" * 200), {"messageId"}),
        (_track(anonymousId=None), {"userId"}),
        (_track(anonymousId={"id": 1}), {"anonymousId"}),
        (_track(event=""), {"event"}),
        (_track(event="x" * 1025), {"event"}),
        (_track(event="Viewed\x00"), {"event"}),
        (_track(properties={"price": 10**400}), {"properties.price"}),
        (_track(context={"screen": {"density": [1, float("inf")]}}), {"context.screen.density[1]"}),
        (_track(properties={"name": "a\ud800"}), {"properties.name"}),
        (_track(event="???"), {"event"}),
        (_track(type="click"), {"type"}),
        (_track(properties=[1, 2]), {"properties"}),
        (_track(context="web"), {"context"}),
        (_track(timestamp="soon"), {"timestamp"}),
        (_track(sentAt=12), {"sentAt"}),
        (_track(timestamp=(NOW + timedelta(days=3)).isoformat()), {"timestamp"}),
        (_track(timestamp=(NOW - timedelta(days=6 * 365)).isoformat()), {"timestamp"}),
        (_track(properties={"blob": "x" * 40_000}), {""}),
        (_track(event="Cart Item Added", properties={"quantity": 1}), {"properties.product_id"}),
        (_added({"name": "Boots"}), {"properties.product_id"}),
        (_added({"product_id": True}), {"properties.product_id"}),
        (_added({"sku": ["a"]}), {"properties.sku"}),
        (_added({"product_id": "p", "quantity": 0}), {"properties.quantity"}),
        (_added({"product_id": "p", "quantity": 2.5}), {"properties.quantity"}),
        (_added({"product_id": "p", "quantity": "2"}), {"properties.quantity"}),
        (_added({"product_id": "p", "quantity": 10**20}), {"properties.quantity"}),
        (_added({"product_id": "p", "price": "9.99", "currency": "EUR"}), {"properties.price"}),
        (_added({"product_id": "p", "price": -0.01, "currency": "EUR"}), {"properties.price"}),
        (_added({"product_id": "p", "price": 1e30, "currency": "EUR"}), {"properties.price"}),
        (_added({"product_id": "p", "price": 5, "currency": "Euro"}), {"properties.currency"}),
        (_track(event="Product Removed", properties={"sku": "p", "quantity": -1}), {"properties.quantity"}),
        ({"type": "alias", "messageId": "a", "userId": "u"}, {"previousId"}),
        ({"type": "group", "messageId": "g", "userId": "u"}, {"groupId"}),
    ],
)
def test_bad_messages_are_refused_with_their_own_field_names(
    message: dict[str, Any], fields: set[str]
) -> None:
    assert _refused_fields(message) >= fields


def test_a_message_for_another_endpoint_is_refused() -> None:
    assert _refused_fields(_track(), expected_type="page") == {"type"}


def test_an_identity_refusal_is_reported_on_the_message_field_the_identifier_came_from() -> None:
    origins = ["userId", "context.traits.email"]
    violation = FieldViolation("identifiers[1].value", "is not an email address")
    assert segment.message_field(violation, origins) == FieldViolation(
        "context.traits.email", violation.description
    )
    assert segment.message_field(FieldViolation("event.occurred_at", "x"), origins).field == "timestamp"
    assert segment.message_field(FieldViolation("", "x"), origins).field == ""
