"""Unit tests of condition validation (paths of the violations) and the translation to rules."""

from __future__ import annotations

import time
from datetime import timedelta

from google.protobuf.duration_pb2 import Duration

from omni.segmentation.v1 import segmentation_pb2 as pb
from omni_kit.errors import Violations
from omni_segmentation import conditions, rules

from .builders import abandoned_cart, all_of, any_of, cart, event_count, not_, since_last, trait


def violations_of(condition: pb.Condition) -> dict[str, str]:
    """Field path → description of every violation of condition under "segment.condition"."""
    found = Violations()
    conditions.validate_condition(condition, "segment.condition", found)
    return {v.field: v.description for v in found.items}


def test_a_well_formed_tree_has_no_violations() -> None:
    condition = all_of(
        abandoned_cart(30),
        any_of(trait("plan", pb.COMPARISON_EQ, "gold"), trait("email", pb.COMPARISON_EXISTS)),
        not_(trait("age", pb.COMPARISON_LT, 18)),
    )
    assert violations_of(condition) == {}


def test_an_empty_condition_is_named() -> None:
    assert set(violations_of(pb.Condition())) == {"segment.condition"}


def test_empty_lists_are_named() -> None:
    assert set(violations_of(all_of())) == {"segment.condition.all.conditions"}
    assert set(violations_of(all_of(any_of()))) == {"segment.condition.all.conditions[0].any.conditions"}


def test_violations_deep_in_the_tree_name_their_path() -> None:
    condition = all_of(
        cart(pb.COMPARISON_GT, 0),
        event_count("order_completed", 0.5, pb.COMPARISON_EQ, -1),
        not_(trait("", pb.COMPARISON_UNSPECIFIED)),
        since_last("", 401 * 86400),
    )
    assert set(violations_of(condition)) == {
        "segment.condition.all.conditions[1].event_count.window",
        "segment.condition.all.conditions[1].event_count.count",
        "segment.condition.all.conditions[2].not.trait.trait",
        "segment.condition.all.conditions[2].not.trait.comparison",
        "segment.condition.all.conditions[3].since_last_event.event_type",
        "segment.condition.all.conditions[3].since_last_event.at_least",
    }


def test_windows_are_required_and_bounded() -> None:
    missing = pb.Condition(
        event_count=pb.EventCountCondition(event_type="x", comparison=pb.COMPARISON_EQ, count=0)
    )
    assert set(violations_of(missing)) == {"segment.condition.event_count.window"}
    assert violations_of(event_count("x", 1, pb.COMPARISON_EQ, 0)) == {}
    assert violations_of(event_count("x", 400 * 86400, pb.COMPARISON_EQ, 0)) == {}
    assert set(violations_of(event_count("x", 400 * 86400 + 1, pb.COMPARISON_EQ, 0))) == {
        "segment.condition.event_count.window"
    }
    assert set(violations_of(since_last("x", -5))) == {"segment.condition.since_last_event.at_least"}


def test_trait_values_are_required_unless_testing_presence() -> None:
    assert set(violations_of(trait("plan", pb.COMPARISON_EQ))) == {"segment.condition.trait.value"}
    assert violations_of(trait("plan", pb.COMPARISON_NOT_EXISTS)) == {}
    assert set(violations_of(trait("plan", pb.COMPARISON_GT, True))) == {"segment.condition.trait.value"}
    assert set(violations_of(trait("plan", pb.COMPARISON_LT, [1]))) == {"segment.condition.trait.value"}


def test_counts_need_an_ordering_or_equality_comparison() -> None:
    assert set(violations_of(cart(pb.COMPARISON_EXISTS, 0))) == {"segment.condition.cart.comparison"}
    assert set(violations_of(cart(pb.COMPARISON_UNSPECIFIED, 0))) == {"segment.condition.cart.comparison"}
    assert set(violations_of(cart(pb.COMPARISON_GT, -1))) == {"segment.condition.cart.item_count"}


def test_event_types_are_snake_case() -> None:
    assert set(violations_of(since_last("Cart Item Added", 5))) == {
        "segment.condition.since_last_event.event_type"
    }


def test_nesting_and_size_are_bounded() -> None:
    deep = trait("plan", pb.COMPARISON_EXISTS)
    for _ in range(conditions.MAX_DEPTH):
        deep = not_(deep)
    assert any("nested" in d for d in violations_of(deep).values())
    wide = all_of(*[trait("plan", pb.COMPARISON_EXISTS)] * conditions.MAX_NODES)
    assert any("at most" in d for d in violations_of(wide).values())


def test_a_tree_past_the_bounds_is_refused_for_that_alone_without_a_walk_through_it() -> None:
    # 400,000 nodes in 3 MB: protovalidate takes seconds over them, so the bounds are checked first.
    leaf = cart(pb.COMPARISON_GT, -1)
    huge = all_of(*[leaf] * 400_000)
    started = time.perf_counter()
    found = violations_of(huge)
    assert time.perf_counter() - started < 0.5
    assert found == {
        f"segment.condition.all.conditions[{conditions.MAX_NODES - 1}]": "a segment condition may have at "
        f"most {conditions.MAX_NODES} nodes"
    }


def test_a_duration_that_is_not_one_is_named_once() -> None:
    for invalid in (Duration(seconds=5, nanos=2_000_000_000), Duration(seconds=5, nanos=-1)):
        condition = pb.Condition(
            since_last_event=pb.SinceLastEventCondition(event_type="order_completed", at_least=invalid)
        )
        assert violations_of(condition) == {
            "segment.condition.since_last_event.at_least": "not a valid duration"
        }
    # Out of bounds and malformed: the bound is named.
    short = pb.Condition(
        since_last_event=pb.SinceLastEventCondition(
            event_type="order_completed", at_least=Duration(seconds=1, nanos=-1)
        )
    )
    assert list(violations_of(short)) == ["segment.condition.since_last_event.at_least"]


def test_translation_to_rules_and_json_round_trip() -> None:
    condition = all_of(abandoned_cart(30), not_(trait("plan", pb.COMPARISON_EQ, "gold")))
    stored = conditions.to_json(condition)
    assert conditions.from_json(stored) == condition
    tree = conditions.to_rules(condition)
    assert tree == rules.AllOf(
        (
            rules.AllOf(
                (
                    rules.CartUnits(rules.Comparison.GT, 0),
                    rules.EventCount("order_completed", timedelta(hours=1), rules.Comparison.EQ, 0),
                    rules.SinceLastEvent("cart_item_added", timedelta(seconds=30)),
                )
            ),
            rules.Not(rules.TraitCompare("plan", rules.Comparison.EQ, "gold")),
        )
    )
