"""Segment conditions on the wire (omni.segmentation.v1.Condition): validation, storage form and rules.

A condition is validated once, when a segment is created, with every violation named by its path in the
request ("segment.condition.all.conditions[1].event_count.window"). It is stored as the protobuf JSON form
and turned into the pure `rules` tree for evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from google.protobuf import duration_pb2, json_format

from omni.segmentation.v1 import segmentation_pb2 as pb
from omni_kit.errors import Violations, check_json_text, has_control_characters
from omni_kit.event_types import EVENT_TYPE_RULE, MAX_EVENT_TYPE, is_event_type
from omni_segmentation import rules

MIN_WINDOW = timedelta(seconds=1)
MAX_WINDOW = timedelta(days=400)
MAX_DEPTH = 10
MAX_NODES = 200
MAX_TRAIT_LENGTH = 200
# A trait's value to compare with is stored with the segment and read at every evaluation.
MAX_VALUE_BYTES = 4096
# Event types profile never records under that name: Segment's e-commerce cart events are recorded as the
# profile's cart events (profile's README), so a rule counting them would count nothing, silently.
RECORDED_AS = {"product_added": "cart_item_added", "product_removed": "cart_item_removed"}

COMPARISONS: dict[int, rules.Comparison] = {
    pb.COMPARISON_EQ: rules.Comparison.EQ,
    pb.COMPARISON_NE: rules.Comparison.NE,
    pb.COMPARISON_GT: rules.Comparison.GT,
    pb.COMPARISON_GTE: rules.Comparison.GTE,
    pb.COMPARISON_LT: rules.Comparison.LT,
    pb.COMPARISON_LTE: rules.Comparison.LTE,
    pb.COMPARISON_EXISTS: rules.Comparison.EXISTS,
    pb.COMPARISON_NOT_EXISTS: rules.Comparison.NOT_EXISTS,
}
COUNT_COMPARISONS = frozenset(k for k, v in COMPARISONS.items() if v not in rules.PRESENCE)


@dataclass
class _Budget:
    nodes: int = 0


def validate_condition(condition: pb.Condition, path: str, violations: Violations) -> None:
    """Record a violation for every malformed part of condition, each named by its path under `path`."""
    _validate(condition, path, violations, depth=1, budget=_Budget())


def _validate(
    condition: pb.Condition, path: str, violations: Violations, *, depth: int, budget: _Budget
) -> None:
    budget.nodes += 1
    if budget.nodes == MAX_NODES + 1:
        violations.add(path, f"a segment condition may have at most {MAX_NODES} nodes")
    if budget.nodes > MAX_NODES:
        return
    if depth > MAX_DEPTH:
        violations.add(path, f"conditions may be nested at most {MAX_DEPTH} deep")
        return
    kind = condition.WhichOneof("kind")
    if kind is None:
        violations.add(
            path, "a condition is required: one of all, any, not, trait, event_count, cart, since_last_event"
        )
    elif kind in ("all", "any"):
        items = getattr(condition, kind).conditions
        if not items:
            violations.add(f"{path}.{kind}.conditions", "at least one condition is required")
        for index, child in enumerate(items):
            _validate(child, f"{path}.{kind}.conditions[{index}]", violations, depth=depth + 1, budget=budget)
    elif kind == "not":
        _validate(getattr(condition, "not"), f"{path}.not", violations, depth=depth + 1, budget=budget)
    elif kind == "trait":
        _validate_trait(condition.trait, f"{path}.trait", violations)
    elif kind == "event_count":
        event_count = condition.event_count
        sub = f"{path}.event_count"
        _validate_event_type(event_count.event_type, f"{sub}.event_type", violations)
        _validate_window(event_count, "window", sub, violations)
        _validate_count_comparison(event_count.comparison, f"{sub}.comparison", violations)
        violations.check(event_count.count >= 0, f"{sub}.count", "must not be negative")
    elif kind == "cart":
        cart = condition.cart
        _validate_count_comparison(cart.comparison, f"{path}.cart.comparison", violations)
        violations.check(cart.item_count >= 0, f"{path}.cart.item_count", "must not be negative")
    elif kind == "since_last_event":
        since = condition.since_last_event
        sub = f"{path}.since_last_event"
        _validate_event_type(since.event_type, f"{sub}.event_type", violations)
        _validate_window(since, "at_least", sub, violations)


def _validate_trait(trait: pb.TraitCondition, path: str, violations: Violations) -> None:
    if not trait.trait.strip():
        violations.add(f"{path}.trait", "the trait's name is required")
    elif len(trait.trait) > MAX_TRAIT_LENGTH:
        violations.add(f"{path}.trait", f"at most {MAX_TRAIT_LENGTH} characters")
    elif has_control_characters(trait.trait):
        violations.add(f"{path}.trait", "holds control characters")
    if trait.HasField("value"):
        # Stored with the condition whatever the comparison, so checked whatever the comparison.
        if trait.value.ByteSize() > MAX_VALUE_BYTES:
            violations.add(f"{path}.value", f"at most {MAX_VALUE_BYTES} bytes encoded")
            return
        check_json_text(trait.value, f"{path}.value", violations)
    comparison = COMPARISONS.get(trait.comparison)
    if comparison is None:
        violations.add(
            f"{path}.comparison", "a comparison is required: EQ, NE, GT, GTE, LT, LTE, EXISTS or NOT_EXISTS"
        )
        return
    if comparison in rules.PRESENCE:
        return
    kind = trait.value.WhichOneof("kind") if trait.HasField("value") else None
    if kind is None or kind == "null_value":
        violations.add(f"{path}.value", "a value is required (test for absence with EXISTS or NOT_EXISTS)")
    elif kind == "number_value" and not math.isfinite(trait.value.number_value):
        violations.add(f"{path}.value", "must be a finite number")
    elif comparison in rules.ORDERING and kind not in ("number_value", "string_value"):
        violations.add(f"{path}.value", "GT, GTE, LT and LTE compare with a number or a string")


def _validate_event_type(event_type: str, path: str, violations: Violations) -> None:
    if not event_type:
        violations.add(path, "the event type is required")
    elif not is_event_type(
        event_type
    ):  # the rule profile records types by: no rule names a type never recorded
        violations.add(path, f"{EVENT_TYPE_RULE}, at most {MAX_EVENT_TYPE} characters")
    elif event_type in RECORDED_AS:
        violations.add(
            path,
            f"profile records {event_type} as {RECORDED_AS[event_type]}: a rule on {event_type} never matches",
        )


def _validate_window(parent: Any, name: str, path: str, violations: Violations) -> None:
    field_path = f"{path}.{name}"
    if not parent.HasField(name):
        violations.add(field_path, "required, between 1 second and 400 days")
        return
    duration: duration_pb2.Duration = getattr(parent, name)
    if abs(duration.nanos) >= 1_000_000_000 or (duration.seconds * duration.nanos < 0):
        violations.add(field_path, "not a valid duration")
        return
    # Compared as numbers: a timedelta cannot hold what a Duration can carry (up to 2^63 - 1 seconds).
    seconds = duration.seconds + duration.nanos / 1_000_000_000
    if not MIN_WINDOW.total_seconds() <= seconds <= MAX_WINDOW.total_seconds():
        violations.add(field_path, "must be between 1 second and 400 days")


def _validate_count_comparison(comparison: int, path: str, violations: Violations) -> None:
    if comparison not in COUNT_COMPARISONS:
        violations.add(path, "a comparison is required: EQ, NE, GT, GTE, LT or LTE")


def to_rules(condition: pb.Condition) -> rules.Condition:
    """The rules tree of a valid condition."""
    kind = condition.WhichOneof("kind")
    if kind == "all":
        return rules.AllOf(tuple(to_rules(c) for c in condition.all.conditions))
    if kind == "any":
        return rules.AnyOf(tuple(to_rules(c) for c in condition.any.conditions))
    if kind == "not":
        return rules.Not(to_rules(getattr(condition, "not")))
    if kind == "trait":
        trait = condition.trait
        comparison = COMPARISONS[trait.comparison]
        value = None if comparison in rules.PRESENCE else json_format.MessageToDict(trait.value)
        return rules.TraitCompare(trait.trait, comparison, value)
    if kind == "event_count":
        count = condition.event_count
        return rules.EventCount(
            count.event_type, count.window.ToTimedelta(), COMPARISONS[count.comparison], count.count
        )
    if kind == "cart":
        return rules.CartUnits(COMPARISONS[condition.cart.comparison], condition.cart.item_count)
    if kind == "since_last_event":
        since = condition.since_last_event
        return rules.SinceLastEvent(since.event_type, since.at_least.ToTimedelta())
    raise ValueError(f"condition without a kind: {condition}")


def to_json(condition: pb.Condition) -> dict[str, Any]:
    """The stored form of a condition: its protobuf JSON mapping, with proto field names."""
    return json_format.MessageToDict(condition, preserving_proto_field_name=True)


def from_json(data: dict[str, Any]) -> pb.Condition:
    """The condition back from its stored form."""
    return json_format.ParseDict(data, pb.Condition())
