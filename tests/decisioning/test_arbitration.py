"""Offer eligibility and arbitration, as pure functions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from omni_decisioning.arbitration import arbitrate, is_eligible
from omni_decisioning.entities import Offer

T0 = datetime(2026, 1, 1, tzinfo=UTC)
VIP = uuid.uuid4()
CART = uuid.uuid4()


def offer(
    name: str,
    *,
    priority: int = 0,
    touchpoints: tuple[str, ...] = (),
    segment_id: uuid.UUID | None = None,
    age_rank: int = 0,
) -> Offer:
    return Offer(
        id=uuid.uuid4(),
        name=name,
        description=f"{name} description",
        touchpoints=touchpoints,
        segment_id=segment_id,
        priority=priority,
        create_time=T0 + timedelta(minutes=age_rank),
    )


def names(offers: list[Offer]) -> list[str]:
    return [o.name for o in offers]


def test_an_offer_listing_no_touchpoints_is_eligible_everywhere() -> None:
    assert is_eligible(offer("any"), "web_home", set())
    assert is_eligible(offer("any"), "pos_checkout", set())


def test_an_offer_listing_touchpoints_is_eligible_only_there() -> None:
    web = offer("web", touchpoints=("web_home", "web_cart"))
    assert is_eligible(web, "web_cart", set())
    assert not is_eligible(web, "pos_checkout", set())


def test_a_segment_offer_is_eligible_only_for_members() -> None:
    vip = offer("vip", segment_id=VIP)
    assert is_eligible(vip, "web_home", {VIP, CART})
    assert not is_eligible(vip, "web_home", {CART})
    assert not is_eligible(vip, "web_home", set())


def test_touchpoint_and_segment_must_both_hold() -> None:
    both = offer("both", touchpoints=("pos_checkout",), segment_id=VIP)
    assert is_eligible(both, "pos_checkout", {VIP})
    assert not is_eligible(both, "web_home", {VIP})
    assert not is_eligible(both, "pos_checkout", set())


def test_ranking_is_by_priority_then_older_first() -> None:
    offers = [
        offer("low", priority=1, age_rank=0),
        offer("high-new", priority=10, age_rank=5),
        offer("high-old", priority=10, age_rank=1),
        offer("mid", priority=5, age_rank=2),
    ]
    actions = arbitrate(offers, touchpoint="web_home", segment_ids=set(), limit=10)
    assert [a.offer.name for a in actions] == ["high-old", "high-new", "mid", "low"]
    assert [a.score for a in actions] == [10.0, 10.0, 5.0, 1.0]


def test_ineligible_offers_are_left_out_and_limit_applies() -> None:
    offers = [
        offer("vip", priority=100, segment_id=VIP),
        offer("pos", priority=50, touchpoints=("pos_checkout",)),
        offer("a", priority=3),
        offer("b", priority=2),
        offer("c", priority=1),
    ]
    actions = arbitrate(offers, touchpoint="web_home", segment_ids=set(), limit=2)
    assert [a.offer.name for a in actions] == ["a", "b"]
    member = arbitrate(offers, touchpoint="web_home", segment_ids={VIP}, limit=1)
    assert [a.offer.name for a in member] == ["vip"]


def test_nothing_eligible_is_an_empty_ranking() -> None:
    offers = [offer("vip", segment_id=VIP), offer("pos", touchpoints=("pos_checkout",))]
    assert arbitrate(offers, touchpoint="web_home", segment_ids=set(), limit=5) == []
    assert arbitrate([], touchpoint="web_home", segment_ids={VIP}, limit=5) == []


def test_negative_priorities_rank_below_zero() -> None:
    offers = [offer("neg", priority=-5), offer("zero", priority=0)]
    actions = arbitrate(offers, touchpoint="x", segment_ids=set(), limit=5)
    assert [a.offer.name for a in actions] == ["zero", "neg"]
