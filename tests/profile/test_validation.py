"""Request checks: each kind of bad input names the field it is about; good input passes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from omni.common.v1 import common_pb2
from omni.profile.v1 import profile_pb2
from omni_kit.errors import InvalidArgument
from omni_profile import validation

from .support import event, ident, item, struct

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
PERSON = "0190f5a4-7c1e-7000-8000-000000000001"


def _fields(check: Callable[[], object]) -> set[str]:
    with pytest.raises(InvalidArgument) as raised:
        check()
    return {v.field for v in raised.value.violations}


def _track(message: profile_pb2.Event) -> set[str]:
    return _fields(
        lambda: validation.validate_track_event(profile_pb2.TrackEventRequest(event=message), now=NOW)
    )


def test_a_good_event_passes() -> None:
    message = event(
        "cart_item_added",
        occurred_at=NOW - timedelta(days=3),
        properties={"a": 1},
        cart_item=item("sku-1", 1, price_minor=100),
    )
    validation.validate_track_event(profile_pb2.TrackEventRequest(event=message), now=NOW)


def test_the_event_is_required() -> None:
    assert _fields(lambda: validation.validate_track_event(profile_pb2.TrackEventRequest(), now=NOW)) == {
        "event"
    }


def test_the_id_is_required_and_bounded() -> None:
    assert _track(event(id_="")) >= {"event.id"}
    assert _track(event(id_="x" * 129)) == {"event.id"}
    validation.validate_track_event(profile_pb2.TrackEventRequest(event=event(id_="x" * 128)), now=NOW)


@pytest.mark.parametrize(
    "type_",
    [
        "",
        "PageViewed",
        "page-viewed",
        "page viewed",
        "_page",
        "page__viewed",
        "x" * 101,
        "Товар_добавлен",
        "товар__добавлен",
        "товар добавлен",
        "1_товар",
        "cafe\u0301",  # not in normal form C: "café" has one spelling
        "商品を追加\n",
    ],
)
def test_the_type_must_be_snake_case_and_bounded(type_: str) -> None:
    assert _track(event(type_)) == {"event.type"}


@pytest.mark.parametrize(
    "type_",
    ["product_viewed", "x" * 100, "товар_добавлен", "商品を追加", "café_visité", "उत्पाद_जोड़ा", "level_2"],
)
def test_types_in_any_script_are_accepted(type_: str) -> None:
    validation.validate_track_event(profile_pb2.TrackEventRequest(event=event(type_)), now=NOW)


def test_the_name_as_sent_is_bounded_and_holds_no_control_characters() -> None:
    named = event("товар_добавлен")
    named.name = "Товар добавлен " * 68
    validation.validate_track_event(profile_pb2.TrackEventRequest(event=named), now=NOW)
    named.name += "!" * 5
    assert _track(named) == {"event.name"}
    named.name = "Товар\x00"
    assert _track(named) == {"event.name"}


def test_identifiers_or_a_person_are_required() -> None:
    assert _track(event(identifiers=[])) == {"event.identifiers"}
    validation.validate_track_event(
        profile_pb2.TrackEventRequest(event=event(identifiers=[], person_id=PERSON)), now=NOW
    )


def test_identifiers_need_a_type_and_a_value() -> None:
    fields = _track(event(identifiers=[ident("", "x"), ident("email", " "), ident("email", "a@b.c")]))
    assert fields == {"event.identifiers[0].type", "event.identifiers[1].value"}


def test_a_person_id_must_be_a_uuid() -> None:
    assert _track(event(identifiers=[], person_id="not-a-uuid")) == {"event.person_id"}


def test_an_unknown_channel_is_refused() -> None:
    assert _track(event(channel=99)) == {"event.channel"}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "occurred_at", [NOW + timedelta(days=1, minutes=1), NOW - timedelta(days=5 * 366 + 1)]
)
def test_occurred_at_must_be_within_a_day_ahead_and_five_years_back(occurred_at: datetime) -> None:
    assert _track(event(occurred_at=occurred_at)) == {"event.occurred_at"}


def test_occurred_at_close_to_the_bounds_passes() -> None:
    for occurred_at in (NOW + timedelta(hours=23), NOW - timedelta(days=5 * 365)):
        validation.validate_track_event(
            profile_pb2.TrackEventRequest(event=event(occurred_at=occurred_at)), now=NOW
        )


def test_an_invalid_timestamp_is_refused() -> None:
    message = event()
    message.occurred_at.seconds = 10**12
    assert _track(message) == {"event.occurred_at"}


def test_properties_are_bounded() -> None:
    assert _track(event(properties={"blob": "x" * 33_000})) == {"event.properties"}


def test_cart_events_need_a_cart_item_with_product_and_quantity() -> None:
    assert _track(event("cart_item_added")) == {"event.cart_item"}
    assert _track(event("cart_item_removed", cart_item=common_pb2.CartItem(quantity=1))) == {
        "event.cart_item.product_id"
    }
    assert _track(event("cart_item_added", cart_item=item("sku-1", 0))) == {"event.cart_item.quantity"}


def test_a_cart_item_price_needs_a_currency() -> None:
    line = common_pb2.CartItem(product_id="sku-1", quantity=1, unit_price=common_pb2.Money(amount_minor=-1))
    assert _track(event("cart_item_added", cart_item=line)) == {
        "event.cart_item.unit_price.amount_minor",
        "event.cart_item.unit_price.currency_code",
    }


def test_each_event_of_a_batch_is_judged_on_its_own() -> None:
    assert validation.event_violations(event(), now=NOW) == []
    assert {v.field for v in validation.event_violations(event(id_=""), now=NOW)} == {"id"}
    assert {v.field for v in validation.event_violations(event("Bad"), now=NOW)} == {"type"}


def test_a_batch_is_neither_empty_nor_over_1000() -> None:
    empty = profile_pb2.BatchTrackEventsRequest()
    assert _fields(lambda: validation.validate_batch(empty)) == {"events"}
    big = profile_pb2.BatchTrackEventsRequest(events=[event() for _ in range(1001)])
    assert _fields(lambda: validation.validate_batch(big)) == {"events"}
    validation.validate_batch(profile_pb2.BatchTrackEventsRequest(events=[event(id_="")]))


@pytest.mark.parametrize("source", ["Web", "web sdk", "w" * 65, "-web"])
def test_a_source_is_lower_snake_case(source: str) -> None:
    message = event()
    message.source = source
    assert _track(message) == {"event.source"}


def test_small_properties_are_not_measured_and_large_ones_are() -> None:
    fine = event(properties={"blob": "x" * 30_000})
    assert "event.properties" not in (_track_or_none(fine) or set())
    # Measured in UTF-8 bytes: 12,000 of "é" are 24 KB, not the 72 KB of their "\\u00e9" escapes.
    assert _track_or_none(event(properties={"blob": "\u00e9" * 12_000})) is None
    assert _track(event(properties={"blob": "\u00e9" * 16_500})) == {"event.properties"}
    context = event()
    context.context.update({"title": "\u00e9" * 3_500})
    assert _track_or_none(context) is None
    context.context.update({"title": "\u00e9" * 4_200})
    assert _track(context) == {"event.context"}


def _track_or_none(message: profile_pb2.Event) -> set[str] | None:
    try:
        validation.validate_track_event(profile_pb2.TrackEventRequest(event=message), now=NOW)
    except InvalidArgument as error:
        return {v.field for v in error.violations}
    return None


def test_set_traits_needs_a_person_and_traits() -> None:
    assert _fields(lambda: validation.validate_set_traits(profile_pb2.SetTraitsRequest())) == {
        "person_id",
        "traits",
    }
    too_big = profile_pb2.SetTraitsRequest(person_id=PERSON, traits=struct({"bio": "x" * 33_000}))
    assert _fields(lambda: validation.validate_set_traits(too_big)) == {"traits"}
    validation.validate_set_traits(
        profile_pb2.SetTraitsRequest(person_id=PERSON, traits=struct({"tier": None}))
    )


@pytest.mark.parametrize(
    ("traits", "field"),
    [
        ({"email": 42}, "traits.email"),
        ({"email": "not an address"}, "traits.email"),
        ({"birthday": "01/02/1990"}, "traits.birthday"),
        ({"birthday": "1990-02-30"}, "traits.birthday"),
        ({"birthday": "2999-01-01"}, "traits.birthday"),
        ({"vip": "yes"}, "traits.vip"),
        ({"loyalty_points": 1.5}, "traits.loyalty_points"),
        ({"first_name": ["Ada"]}, "traits.first_name"),
    ],
)
def test_known_traits_have_types(traits: dict[str, object], field: str) -> None:
    request = profile_pb2.SetTraitsRequest(person_id=PERSON, traits=struct(traits))
    assert _fields(lambda: validation.validate_set_traits(request)) == {field}


def test_known_traits_of_the_right_type_and_unknown_ones_pass() -> None:
    values = {"email": "ada@example.com", "birthday": "1990-12-10", "vip": True, "shoe_size": "42", "vip2": 1}
    validation.validate_set_traits(profile_pb2.SetTraitsRequest(person_id=PERSON, traits=struct(values)))
