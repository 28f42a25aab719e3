"""The pure rules of experiments: stable assignment by hash, the global control group, conversion filters and
revenue, and attribution's credits."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime

import pytest

from omni_decisioning.experiments.assignment import choose_arm, in_global_control
from omni_decisioning.experiments.conversions import credits, matches, revenue_minor
from omni_decisioning.experiments.entities import (
    Anchor,
    Arm,
    ConversionDefinition,
    Model,
    Operator,
    PropertyFilter,
    Touch,
)
from omni_decisioning.experiments.stats import sample_ratio_mismatch

ARMS = (Arm("a", 45, control=True), Arm("b", 45), Arm("holdout", 10, holdout=True))


def test_a_person_stays_in_one_arm_and_the_split_follows_the_allocation() -> None:
    experiment = uuid.UUID("0190f000-0000-7000-8000-000000000042")
    persons = [uuid.UUID(int=n * 7919 + 3) for n in range(20_000)]
    first = {person: choose_arm(experiment, ARMS, person).name for person in persons}
    assert first == {person: choose_arm(experiment, ARMS, person).name for person in persons}
    counts = Counter(first.values())
    assert not sample_ratio_mismatch([counts["a"], counts["b"], counts["holdout"]], [45, 45, 10]).mismatch
    # Another experiment splits the same persons independently.
    other = {p: choose_arm(uuid.UUID(int=1), ARMS, p).name for p in persons}
    together = Counter((first[p], other[p]) for p in persons)
    assert together[("holdout", "holdout")] == pytest.approx(0.01 * len(persons), rel=0.3)


def test_the_global_control_group_is_a_stable_share() -> None:
    persons = [uuid.uuid4() for _ in range(20_000)]
    held = [p for p in persons if in_global_control("omni", p, 500)]
    assert len(held) == pytest.approx(1_000, rel=0.15)
    assert all(in_global_control("omni", p, 500) for p in held)
    assert not any(in_global_control("omni", p, 0) for p in persons[:100])
    assert {p for p in persons if in_global_control("other-salt", p, 500)} != set(held)


def _definition(*filters: PropertyFilter, currency: str = "EUR") -> ConversionDefinition:
    return ConversionDefinition(
        name="purchase",
        event_type="order_completed",
        filters=filters,
        window_s=86_400,
        anchor=Anchor.DELIVERY,
        revenue_property="order.total",
        currency=currency,
        id=uuid.uuid4(),
        create_time=datetime.now(UTC),
    )


def test_filters_compare_numbers_as_numbers_and_all_must_hold() -> None:
    definition = _definition(
        PropertyFilter("order.total", Operator.GREATER_OR_EQUAL, 20),
        PropertyFilter("store.country", Operator.EQUAL, "DE"),
        PropertyFilter("coupon", Operator.NOT_EQUAL, "STAFF"),
    )
    good = {"order": {"total": 20.0}, "store": {"country": "DE"}}
    assert matches(definition, "order_completed", good)
    assert not matches(definition, "order_refunded", good)
    assert not matches(definition, "order_completed", {**good, "coupon": "STAFF"})
    assert not matches(definition, "order_completed", {**good, "order": {"total": "20"}})
    assert not matches(definition, "order_completed", {"store": {"country": "DE"}})
    assert matches(_definition(PropertyFilter("order", Operator.EXISTS)), "order_completed", good)


def test_revenue_is_kept_in_minor_units_of_the_currency() -> None:
    assert revenue_minor(_definition(), {"order": {"total": 59.9}}) == 5990
    assert revenue_minor(_definition(currency="JPY"), {"order": {"total": 1200}}) == 1200
    assert revenue_minor(_definition(currency="KWD"), {"order": {"total": 1.5}}) == 1500
    assert revenue_minor(_definition(), {"order": {"total": "59.90"}}) == 0
    assert revenue_minor(_definition(), {}) == 0


def _touch(name: str) -> Touch:
    return Touch(name, "message", uuid.uuid4(), 3, "j", "t", "none", "none", "direct", datetime.now(UTC))


def test_credits_per_model() -> None:
    touches = [_touch("email"), _touch("sms"), _touch("push")]
    assert [(t.touch_id, r) for t, r in credits(Model.LAST_TOUCH, touches, 9001)] == [("push", 9001)]
    assert [(t.touch_id, r) for t, r in credits(Model.FIRST_TOUCH, touches, 9001)] == [("email", 9001)]
    assert [(t.touch_id, r) for t, r in credits(Model.LINEAR, touches, 9001)] == [
        ("email", 3000),
        ("sms", 3000),
        ("push", 3001),
    ]
    assert credits(Model.LINEAR, [], 100) == []
