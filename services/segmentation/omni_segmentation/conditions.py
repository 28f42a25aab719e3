"""Segment conditions on the wire (omni.segmentation.v1.Condition): validation, storage form and rules.

A condition is validated once, when a segment is created, with every violation named by its path in the
request ("segment.condition.all.conditions[1].event_count.window"). It is stored as the protobuf JSON form
and turned into the pure `rules` tree for evaluation.
"""

from __future__ import annotations

import uuid
from typing import Any

from google.protobuf import duration_pb2, json_format

from omni.profile.v1 import profile_pb2
from omni.segmentation.v1 import segmentation_pb2 as pb
from omni_kit import validation
from omni_kit.errors import Violations, check_json_text
from omni_kit.event_types import EVENT_TYPE_RULE, MAX_EVENT_TYPE, is_event_type
from omni_segmentation import rules, values

MAX_DEPTH = 10
MAX_NODES = 200
# A trait's value to compare with is stored with the segment and read at every evaluation.
MAX_VALUE_BYTES = 4096
# Property filters per event count or sum (the proto's max_items; values beyond are not walked).
MAX_FILTERS = 10
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


def validate_condition(condition: pb.Condition, path: str, violations: Violations) -> None:
    """Record a violation for every malformed part of condition, each named by its path under `path`.

    A tree past the bounds (more than MAX_NODES nodes, or nested deeper than MAX_DEPTH) is refused for that
    alone, before anything walks it whole: a request of a few megabytes holds hundreds of thousands of nodes,
    which would take protovalidate seconds. Within them, what segmentation.proto declares (required kinds,
    names, event types, comparisons, counts, window bounds) is checked by omni_kit.validation, and here
    what it cannot say: that a Duration is a valid one, the trait values (their size, their content, and
    whether the comparison needs one), and event types profile records under another name.
    """
    nodes = _bounded_nodes(condition, path, violations)
    if nodes is None:
        return
    # Lists of channels and filters are bounded too before protovalidate reads them whole.
    before = len(violations.items)
    for node, node_path in nodes:
        kind = node.WhichOneof("kind")
        if kind in ("event_count", "event_sum"):
            validation.check_counts(getattr(node, kind), violations, prefix=f"{node_path}.{kind}")
    if len(violations.items) > before:
        return
    validation.check(condition, violations, prefix=path)
    for node, node_path in nodes:
        kind = node.WhichOneof("kind")
        if kind == "trait":
            _check_trait_value(node.trait, f"{node_path}.trait", violations)
        elif kind in ("event_count", "event_sum"):
            counted = getattr(node, kind)
            _check_event_type(counted.event_type, f"{node_path}.{kind}.event_type", violations)
            _check_duration(counted, "window", f"{node_path}.{kind}", violations)
            for index, item in enumerate(counted.properties[:MAX_FILTERS]):
                _check_trait_value(item, f"{node_path}.{kind}.properties[{index}]", violations)
        elif kind == "then_not":
            seq = node.then_not
            _check_event_type(seq.event_type, f"{node_path}.then_not.event_type", violations)
            _check_event_type(seq.absent_event_type, f"{node_path}.then_not.absent_event_type", violations)
            _check_duration(seq, "within", f"{node_path}.then_not", violations)
            _check_duration(seq, "lookback", f"{node_path}.then_not", violations)
        elif kind == "trait_age":
            _check_duration(node.trait_age, "age", f"{node_path}.trait_age", violations)
        elif kind == "anniversary":
            _check_duration(node.anniversary, "within", f"{node_path}.anniversary", violations)
        elif kind == "first_event":
            if node.first_event.event_type:  # empty: any event
                _check_event_type(
                    node.first_event.event_type, f"{node_path}.first_event.event_type", violations
                )
            _check_duration(node.first_event, "age", f"{node_path}.first_event", violations)
        elif kind == "since_last_event":
            since = node.since_last_event
            _check_event_type(since.event_type, f"{node_path}.since_last_event.event_type", violations)
            _check_duration(since, "at_least", f"{node_path}.since_last_event", violations)


def nodes(condition: pb.Condition, path: str) -> list[tuple[pb.Condition, str]]:
    """Every node of a valid condition (within the bounds) with its path under `path`, in document order."""
    return _bounded_nodes(condition, path, Violations()) or []


def _bounded_nodes(
    condition: pb.Condition, path: str, violations: Violations
) -> list[tuple[pb.Condition, str]] | None:
    """Every node of the tree with its path, in document order; None, with the violations, when the tree
    has more than MAX_NODES nodes (named at the first node past them, where the walk stops) or nests deeper
    than MAX_DEPTH (named at each node too deep)."""
    nodes: list[tuple[pb.Condition, str]] = []
    too_deep = False
    stack = [(condition, path, 1)]
    while stack:
        node, node_path, depth = stack.pop()
        if len(nodes) == MAX_NODES:
            violations.add(node_path, f"a segment condition may have at most {MAX_NODES} nodes")
            return None
        nodes.append((node, node_path))
        if depth > MAX_DEPTH:
            violations.add(node_path, f"conditions may be nested at most {MAX_DEPTH} deep")
            too_deep = True
            continue
        kind = node.WhichOneof("kind")
        if kind in ("all", "any"):
            # No more children than could still fit: a list of 400,000 is not read beyond them.
            children = getattr(node, kind).conditions[: MAX_NODES + 1 - len(nodes)]
            stack.extend(
                (child, f"{node_path}.{kind}.conditions[{index}]", depth + 1)
                for index, child in reversed(list(enumerate(children)))
            )
        elif kind == "not":
            stack.append((getattr(node, "not"), f"{node_path}.not", depth + 1))
    return None if too_deep else nodes


def _check_trait_value(
    trait: pb.TraitCondition | pb.PropertyFilter, path: str, violations: Violations
) -> None:
    if trait.HasField("value"):
        # Stored with the condition whatever the comparison, so checked whatever the comparison.
        if trait.value.ByteSize() > MAX_VALUE_BYTES:
            violations.add(f"{path}.value", f"at most {MAX_VALUE_BYTES} bytes encoded")
            return
        before = len(violations.items)
        check_json_text(trait.value, f"{path}.value", violations)
        if len(violations.items) > before:
            return
    comparison = COMPARISONS.get(trait.comparison)
    if comparison is None or comparison in values.PRESENCE:  # an unknown one is refused by the proto's rule
        return
    kind = trait.value.WhichOneof("kind") if trait.HasField("value") else None
    if kind is None or kind == "null_value":
        violations.add(f"{path}.value", "a value is required (test for absence with EXISTS or NOT_EXISTS)")
    elif comparison in values.ORDERING and kind not in ("number_value", "string_value"):
        violations.add(f"{path}.value", "GT, GTE, LT and LTE compare with a number or a string")


def _check_event_type(event_type: str, path: str, violations: Violations) -> None:
    """The rule profile records types by (omni_kit.event_types: letters of any script, in Unicode's normal
    form, which no proto rule can say), so that no rule names a type never recorded; and the types profile
    records under another name."""
    if not event_type or violations.names(path):
        return  # missing (where it may not be), or too long: the proto's rules
    if not is_event_type(event_type):
        violations.add(path, f"{EVENT_TYPE_RULE}, at most {MAX_EVENT_TYPE} characters")
    elif event_type in RECORDED_AS:
        violations.add(
            path,
            f"profile records {event_type} as {RECORDED_AS[event_type]}: a rule on {event_type} never matches",
        )


def _check_duration(parent: Any, name: str, path: str, violations: Violations) -> None:
    """A Duration whose nanos are out of range or of the other sign than its seconds is not one: protobuf's
    JSON form (how the condition is stored) cannot write it. Its bounds are the proto's."""
    field_path = f"{path}.{name}"
    if not parent.HasField(name) or violations.names(field_path):
        return  # missing, or out of bounds already
    duration: duration_pb2.Duration = getattr(parent, name)
    if abs(duration.nanos) >= 1_000_000_000 or duration.seconds * duration.nanos < 0:
        violations.add(field_path, "not a valid duration")


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
        value = None if comparison in values.PRESENCE else json_format.MessageToDict(trait.value)
        return rules.TraitCompare(trait.trait, comparison, value)
    if kind == "event_count":
        count = condition.event_count
        return rules.EventCount(
            "" if count.any_event_type else count.event_type,
            count.window.ToTimedelta(),
            COMPARISONS[count.comparison],
            count.count,
            frozenset(count.channels),
            tuple(_filter(f) for f in count.properties),
        )
    if kind == "event_sum":
        summed = condition.event_sum
        return rules.EventSum(
            summed.event_type,
            summed.property,
            summed.window.ToTimedelta(),
            COMPARISONS[summed.comparison],
            summed.value,
            frozenset(summed.channels),
            tuple(_filter(f) for f in summed.properties),
        )
    if kind == "cart":
        return rules.CartUnits(COMPARISONS[condition.cart.comparison], condition.cart.item_count)
    if kind == "since_last_event":
        since = condition.since_last_event
        return rules.SinceLastEvent(since.event_type, since.at_least.ToTimedelta())
    if kind == "contact":
        asked = condition.contact
        purpose = (
            "transactional" if asked.purpose == profile_pb2.CONSENT_PURPOSE_TRANSACTIONAL else "marketing"
        )
        return rules.Contact(asked.channel, purpose, asked.allowed)
    if kind == "then_not":
        seq = condition.then_not
        return rules.ThenNot(
            seq.event_type,
            seq.absent_event_type,
            seq.within.ToTimedelta(),
            seq.lookback.ToTimedelta(),
            seq.key,
        )
    if kind == "in_segment":
        return rules.InSegment(uuid.UUID(condition.in_segment.segment_id))
    if kind == "first_event":
        first = condition.first_event
        return rules.FirstEvent(first.event_type, COMPARISONS[first.comparison], first.age.ToTimedelta())
    if kind == "anniversary":
        yearly = condition.anniversary
        return rules.Anniversary(yearly.trait, yearly.within.ToTimedelta())
    if kind == "trait_age":
        aged = condition.trait_age
        return rules.TraitAge(aged.trait, COMPARISONS[aged.comparison], aged.age.ToTimedelta())
    if kind == "random_bucket":
        split = condition.random_bucket
        return rules.RandomBucket(split.salt, split.lowest, split.highest)
    raise ValueError(f"condition without a kind: {condition}")


def _filter(item: pb.PropertyFilter) -> rules.PropertyFilter:
    comparison = COMPARISONS[item.comparison]
    value = None if comparison in values.PRESENCE else json_format.MessageToDict(item.value)
    return rules.PropertyFilter(item.property, comparison, value)


def to_json(condition: pb.Condition) -> dict[str, Any]:
    """The stored form of a condition: its protobuf JSON mapping, with proto field names."""
    return json_format.MessageToDict(condition, preserving_proto_field_name=True)


def from_json(data: dict[str, Any]) -> pb.Condition:
    """The condition back from its stored form."""
    return json_format.ParseDict(data, pb.Condition())
