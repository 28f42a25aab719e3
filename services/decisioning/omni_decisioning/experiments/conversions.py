"""Conversion definitions applied to events, and attribution of a conversion to the touches before it.

Pure rules: which events count (event type and property filters), what they are worth (a property in major
units, kept in minor units of the definition's currency), and which touches in the window get credit under
each model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from omni_decisioning.experiments.entities import ConversionDefinition, Model, Operator, PropertyFilter, Touch
from omni_kit.money import minor_unit_digits

_MISSING = object()


def lookup(properties: Mapping[str, Any], path: str) -> Any:
    """The value at a dot-separated path in nested properties; a sentinel when absent."""
    value: Any = properties
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def holds(condition: PropertyFilter, properties: Mapping[str, Any]) -> bool:
    """Whether the event's properties satisfy one filter."""
    value = lookup(properties, condition.path)
    if condition.operator == Operator.EXISTS:
        return value is not _MISSING and value is not None
    if condition.operator in (Operator.EQUAL, Operator.NOT_EQUAL):
        left, right = _number(value), _number(condition.value)
        equal = left == right if left is not None and right is not None else value == condition.value
        return equal if condition.operator == Operator.EQUAL else not equal
    left, right = _number(value), _number(condition.value)
    if left is None or right is None:
        return False
    if condition.operator == Operator.GREATER:
        return left > right
    if condition.operator == Operator.GREATER_OR_EQUAL:
        return left >= right
    if condition.operator == Operator.LESS:
        return left < right
    return left <= right


def matches(definition: ConversionDefinition, event_type: str, properties: Mapping[str, Any]) -> bool:
    """Whether an event counts as a conversion of the definition."""
    return event_type == definition.event_type and all(holds(f, properties) for f in definition.filters)


def revenue_minor(definition: ConversionDefinition, properties: Mapping[str, Any]) -> int:
    """The conversion's value in minor units (59.90 EUR → 5990); 0 without a revenue property or a number."""
    if not definition.revenue_property:
        return 0
    value = _number(lookup(properties, definition.revenue_property))
    if value is None or not math.isfinite(value):
        return 0
    try:
        scaled = Decimal(str(value)).scaleb(minor_unit_digits(definition.currency or "XXX"))
    except InvalidOperation:
        return 0
    return int(scaled.to_integral_value())


def credits(model: Model, touches: Sequence[Touch], revenue: int) -> list[tuple[Touch, int]]:
    """The touches credited under a model (touches oldest first) and each one's share of the revenue in
    minor units (linear: equal shares, the remainder to the latest, so the shares add up to the revenue)."""
    if not touches:
        return []
    if model == Model.LAST_TOUCH:
        return [(touches[-1], revenue)]
    if model == Model.FIRST_TOUCH:
        return [(touches[0], revenue)]
    share, remainder = divmod(revenue, len(touches))
    return [(touch, share + (remainder if i == len(touches) - 1 else 0)) for i, touch in enumerate(touches)]
