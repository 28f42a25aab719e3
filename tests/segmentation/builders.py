"""Builders of segment conditions for the tests."""

from __future__ import annotations

from google.protobuf import duration_pb2, json_format, struct_pb2

from omni.segmentation.v1 import segmentation_pb2 as pb


def seconds(value: float) -> duration_pb2.Duration:
    """A Duration of that many seconds."""
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(value * 1e9))
    return duration


def value(json_value: object) -> struct_pb2.Value:
    """A google.protobuf.Value."""
    message = struct_pb2.Value()
    json_format.ParseDict(json_value, message)  # type: ignore[arg-type]
    return message


def all_of(*conditions: pb.Condition) -> pb.Condition:
    """All of the conditions."""
    return pb.Condition(all=pb.ConditionList(conditions=list(conditions)))


def any_of(*conditions: pb.Condition) -> pb.Condition:
    """Any of the conditions."""
    return pb.Condition(any=pb.ConditionList(conditions=list(conditions)))


def not_(condition: pb.Condition) -> pb.Condition:
    """The negation ("not" is a keyword, hence the keyword-argument dict)."""
    return pb.Condition(**{"not": condition})


def trait(name: str, comparison: int, json_value: object = None) -> pb.Condition:
    """A trait condition; json_value None leaves the value unset."""
    condition = pb.TraitCondition(trait=name, comparison=comparison)  # type: ignore[arg-type]
    if json_value is not None:
        condition.value.CopyFrom(value(json_value))
    return pb.Condition(trait=condition)


def cart(comparison: int, item_count: int) -> pb.Condition:
    """A cart units condition."""
    return pb.Condition(cart=pb.CartCondition(comparison=comparison, item_count=item_count))  # type: ignore[arg-type]


def event_count(event_type: str, window_s: float, comparison: int, count: int) -> pb.Condition:
    """An event count condition."""
    return pb.Condition(
        event_count=pb.EventCountCondition(
            event_type=event_type,
            window=seconds(window_s),
            comparison=comparison,  # type: ignore[arg-type]
            count=count,
        )
    )


def since_last(event_type: str, at_least_s: float) -> pb.Condition:
    """A since-last-event condition."""
    return pb.Condition(
        since_last_event=pb.SinceLastEventCondition(event_type=event_type, at_least=seconds(at_least_s))
    )


def abandoned_cart(wait_s: float) -> pb.Condition:
    """The e2e story's abandoned cart: cart not empty, no order in the last hour, last add wait_s ago."""
    return all_of(
        cart(pb.COMPARISON_GT, 0),
        event_count("order_completed", 3600, pb.COMPARISON_EQ, 0),
        since_last("cart_item_added", wait_s),
    )
