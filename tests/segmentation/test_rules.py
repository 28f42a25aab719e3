"""Unit tests of the pure rules: every condition kind, nesting, and when a result can next change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from omni_segmentation.rules import (
    RESOLUTION,
    AllOf,
    AnyOf,
    CartUnits,
    Comparison,
    EventCount,
    Not,
    PersonFacts,
    SinceLastEvent,
    TraitCompare,
    count_in_window,
    evaluate,
    leaves,
    next_change,
    requirements,
)

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
S = timedelta(seconds=1)
HOUR = timedelta(hours=1)


def at(seconds: float) -> datetime:
    """An instant relative to NOW."""
    return NOW + timedelta(seconds=seconds)


def facts(
    traits: dict[str, object] | None = None,
    cart: int = 0,
    events: dict[str, list[datetime]] | None = None,
) -> PersonFacts:
    """Facts with the last-seen times derived from the events."""
    events = events or {}
    return PersonFacts(
        traits=traits or {},
        cart_units=cart,
        event_times={k: sorted(v) for k, v in events.items()},
        last_event_at={k: max(v) for k, v in events.items() if v},
    )


# -- traits ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("actual", "comparison", "expected", "result"),
    [
        ("gold", Comparison.EQ, "gold", True),
        ("gold", Comparison.EQ, "silver", False),
        ("gold", Comparison.NE, "silver", True),
        (3, Comparison.EQ, 3.0, True),
        (5, Comparison.GT, 3, True),
        (3, Comparison.GT, 3, False),
        (3, Comparison.GTE, 3, True),
        (2.5, Comparison.LT, 3, True),
        (3, Comparison.LTE, 3, True),
        (4, Comparison.LTE, 3, False),
        ("2025-02-01", Comparison.LT, "2025-03-01", True),
        ("b", Comparison.GT, "a", True),
        ("10", Comparison.GT, 3, False),  # a string never orders against a number
        (True, Comparison.EQ, True, True),
        (True, Comparison.EQ, 1, False),  # a boolean is not the number 1
        (1, Comparison.EQ, True, False),
        (True, Comparison.GT, 0, False),
        (["a", "b"], Comparison.EQ, ["a", "b"], True),
        ({"x": 1}, Comparison.NE, {"x": 2}, True),
    ],
)
def test_trait_comparisons(actual: object, comparison: Comparison, expected: object, result: bool) -> None:
    assert evaluate(TraitCompare("t", comparison, expected), facts({"t": actual}), NOW) is result


@pytest.mark.parametrize("comparison", [c for c in Comparison if c is not Comparison.NOT_EXISTS])
def test_a_missing_trait_satisfies_only_not_exists(comparison: Comparison) -> None:
    assert evaluate(TraitCompare("plan", comparison, "gold"), facts(), NOW) is False
    assert evaluate(TraitCompare("plan", comparison, "gold"), facts({"plan": None}), NOW) is False
    assert evaluate(TraitCompare("plan", Comparison.NOT_EXISTS), facts(), NOW) is True
    assert evaluate(TraitCompare("plan", Comparison.NOT_EXISTS), facts({"plan": None}), NOW) is True


def test_exists_holds_for_any_present_value() -> None:
    values: list[object] = ["", 0, False, [], {}]
    for value in values:
        assert evaluate(TraitCompare("t", Comparison.EXISTS), facts({"t": value}), NOW) is True


def test_dotted_trait_names_reach_into_objects_but_a_literal_key_wins() -> None:
    person = facts({"address": {"city": "Oslo"}, "a.b": 1, "a": {"b": 2}})
    assert evaluate(TraitCompare("address.city", Comparison.EQ, "Oslo"), person, NOW)
    assert evaluate(TraitCompare("a.b", Comparison.EQ, 1), person, NOW)
    assert not evaluate(TraitCompare("address.zip", Comparison.EXISTS), person, NOW)


# -- cart and event counts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("units", "comparison", "count", "result"),
    [
        (0, Comparison.GT, 0, False),
        (2, Comparison.GT, 0, True),
        (2, Comparison.EQ, 2, True),
        (2, Comparison.NE, 2, False),
        (2, Comparison.LT, 3, True),
        (3, Comparison.LTE, 3, True),
        (3, Comparison.GTE, 4, False),
        (3, Comparison.EXISTS, 0, False),  # presence makes no sense for a count
    ],
)
def test_cart_units(units: int, comparison: Comparison, count: int, result: bool) -> None:
    assert evaluate(CartUnits(comparison, count), facts(cart=units), NOW) is result


def test_event_count_counts_the_closed_window_ending_now() -> None:
    times = [at(-3601), at(-3600), at(-60), at(0), at(5)]
    assert count_in_window(times, HOUR, NOW) == 3  # -3600 (on the edge), -60 and 0; not the future one
    person = facts(events={"order_completed": times})
    assert evaluate(EventCount("order_completed", HOUR, Comparison.EQ, 3), person, NOW)
    assert evaluate(EventCount("order_completed", HOUR, Comparison.GT, 2), person, NOW)
    assert evaluate(EventCount("page_viewed", HOUR, Comparison.EQ, 0), person, NOW)
    assert not evaluate(EventCount("page_viewed", HOUR, Comparison.GT, 0), person, NOW)


def test_since_last_event() -> None:
    person = facts(events={"cart_item_added": [at(-100), at(-30)]})
    assert evaluate(SinceLastEvent("cart_item_added", 30 * S), person, NOW)  # exactly at_least ago
    assert not evaluate(SinceLastEvent("cart_item_added", 31 * S), person, NOW)
    assert not evaluate(SinceLastEvent("order_completed", S), person, NOW)  # never happened


# -- nesting ---------------------------------------------------------------------------------------------


def test_all_any_not_combine() -> None:
    gold = TraitCompare("plan", Comparison.EQ, "gold")
    cart = CartUnits(Comparison.GT, 0)
    person = facts({"plan": "gold"}, cart=0)
    assert not evaluate(AllOf((gold, cart)), person, NOW)
    assert evaluate(AnyOf((gold, cart)), person, NOW)
    assert evaluate(AllOf((gold, Not(cart))), person, NOW)
    assert evaluate(Not(Not(gold)), person, NOW)
    nested = AnyOf((AllOf((gold, cart)), AllOf((Not(gold), Not(cart)))))
    assert not evaluate(nested, person, NOW)
    assert evaluate(nested, facts({"plan": "silver"}), NOW)


def test_leaves_and_requirements() -> None:
    condition = AllOf(
        (
            EventCount("order_completed", HOUR, Comparison.EQ, 0),
            AnyOf(
                (EventCount("order_completed", 2 * HOUR, Comparison.GT, 1), Not(SinceLastEvent("login", S)))
            ),
            TraitCompare("plan", Comparison.EXISTS),
        )
    )
    assert len(list(leaves(condition))) == 4
    needs = requirements([condition, EventCount("page_viewed", S, Comparison.GT, 0)])
    assert needs.counted == {"order_completed": 2 * HOUR, "page_viewed": S}
    assert needs.since == frozenset({"login"})
    assert needs.longest_window == 2 * HOUR
    assert requirements([TraitCompare("plan", Comparison.EXISTS)]).longest_window is None


# -- next change -----------------------------------------------------------------------------------------


def test_time_independent_conditions_never_change_by_time() -> None:
    person = facts({"plan": "gold"}, cart=2)
    assert next_change(TraitCompare("plan", Comparison.EQ, "gold"), person, NOW) is None
    assert next_change(CartUnits(Comparison.GT, 0), person, NOW) is None


def test_since_last_event_changes_when_at_least_has_passed() -> None:
    person = facts(events={"cart_item_added": [at(-2)]})
    condition = SinceLastEvent("cart_item_added", 5 * S)
    assert next_change(condition, person, NOW) == at(3)
    assert evaluate(condition, person, at(3))
    assert next_change(condition, person, at(3)) is None  # true for ever after
    assert next_change(SinceLastEvent("order_completed", S), person, NOW) is None


def test_event_count_changes_when_the_oldest_occurrence_leaves_the_window() -> None:
    person = facts(events={"order_completed": [at(-1800), at(-600)]})
    any_order = EventCount("order_completed", HOUR, Comparison.GT, 0)
    assert evaluate(any_order, person, NOW)
    change = next_change(any_order, person, NOW)
    # Still one order in the window when the first leaves; the answer changes when the second leaves.
    assert change == at(-600) + HOUR + RESOLUTION
    assert evaluate(any_order, person, change - RESOLUTION)
    assert not evaluate(any_order, person, change)
    exactly_two = EventCount("order_completed", HOUR, Comparison.EQ, 2)
    assert next_change(exactly_two, person, NOW) == at(-1800) + HOUR + RESOLUTION


def test_a_future_dated_event_counts_from_its_time() -> None:
    person = facts(events={"order_completed": [at(10)]})
    none = EventCount("order_completed", HOUR, Comparison.EQ, 0)
    assert evaluate(none, person, NOW)
    assert next_change(none, person, NOW) == at(10)


def test_abandoned_cart_enters_after_the_wait_and_the_check_comes_then() -> None:
    abandoned = AllOf(
        (
            CartUnits(Comparison.GT, 0),
            EventCount("order_completed", HOUR, Comparison.EQ, 0),
            SinceLastEvent("cart_item_added", 30 * S),
        )
    )
    person = facts(cart=1, events={"cart_item_added": [at(-10)]})
    assert not evaluate(abandoned, person, NOW)
    assert next_change(abandoned, person, NOW) == at(20)
    assert evaluate(abandoned, person, at(20))
    assert next_change(abandoned, person, at(20)) is None


def test_abandoned_cart_after_a_recent_order_waits_for_the_order_to_age() -> None:
    abandoned = AllOf(
        (
            CartUnits(Comparison.GT, 0),
            EventCount("order_completed", HOUR, Comparison.EQ, 0),
            SinceLastEvent("cart_item_added", 30 * S),
        )
    )
    order = at(-1800)
    person = facts(cart=1, events={"cart_item_added": [at(-10)], "order_completed": [order]})
    # At +20 s the wait is over but the order still counts; the change is when the order leaves the hour.
    assert next_change(abandoned, person, NOW) == order + HOUR + RESOLUTION
    assert evaluate(abandoned, person, order + HOUR + RESOLUTION)


def test_no_check_is_scheduled_when_a_time_independent_part_decides() -> None:
    abandoned = AllOf((CartUnits(Comparison.GT, 0), SinceLastEvent("cart_item_added", 30 * S)))
    empty_cart = facts(cart=0, events={"cart_item_added": [at(-10)]})
    assert next_change(abandoned, empty_cart, NOW) is None
    either = AnyOf((TraitCompare("vip", Comparison.EQ, True), SinceLastEvent("cart_item_added", 30 * S)))
    assert next_change(either, facts({"vip": True}, events={"cart_item_added": [at(-10)]}), NOW) is None


def test_not_inverts_but_changes_at_the_same_instant() -> None:
    recent = Not(SinceLastEvent("logged_in", 60 * S))
    person = facts(events={"logged_in": [at(-20)]})
    assert evaluate(recent, person, NOW)
    assert next_change(recent, person, NOW) == at(40)
    assert not evaluate(recent, person, at(40))


def test_next_change_is_never_now_or_earlier() -> None:
    times = [at(-3600), at(-3599), at(-1)]
    condition = EventCount("page_viewed", HOUR, Comparison.GTE, 3)
    person = facts(events={"page_viewed": times})
    change = next_change(condition, person, NOW)
    assert change is not None and change > NOW
    assert evaluate(condition, person, NOW) != evaluate(condition, person, change)
