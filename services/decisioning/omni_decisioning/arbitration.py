"""Offer eligibility and arbitration: which offers a person may see at a touchpoint, best first."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Set
from datetime import datetime

from omni_decisioning.entities import Action, Offer


def shown_at(offer: Offer, touchpoint: str) -> bool:
    """An offer is shown at a touchpoint it lists, or at every one if it lists none."""
    return not offer.touchpoints or touchpoint in offer.touchpoints


def score(offer: Offer) -> float:
    """The arbitration score of an eligible offer; for now its priority."""
    return float(offer.priority)


def ranked(offers: Iterable[Offer], touchpoint: str) -> list[Offer]:
    """The offers shown at a touchpoint by score (higher first), then by age (older first).

    Older offers win ties so that a new offer of equal priority does not silently displace a running one;
    ids are UUIDv7, so creation time then id makes the order total and stable.
    """
    shown = [offer for offer in offers if shown_at(offer, touchpoint)]
    shown.sort(key=lambda offer: (-score(offer), offer.create_time, offer.id))
    return shown


def choose(
    ranked_offers: Iterable[Offer], segment_ids: Set[uuid.UUID], *, limit: int, now: datetime | None = None
) -> list[Action]:
    """The first `limit` of offers already ranked for a touchpoint that the person is eligible for (an offer
    naming a segment is for its members) and that are valid at `now` (when given)."""
    chosen: list[Action] = []
    for offer in ranked_offers:
        if now is not None and not offer.valid_at(now):
            continue
        if offer.segment_id is None or offer.segment_id in segment_ids:
            chosen.append(Action(offer=offer, score=score(offer)))
            if len(chosen) == limit:
                break
    return chosen


def is_eligible(offer: Offer, touchpoint: str, segment_ids: Set[uuid.UUID]) -> bool:
    """An offer is eligible at a touchpoint it is shown at and, if it names a segment, for its members."""
    return shown_at(offer, touchpoint) and (offer.segment_id is None or offer.segment_id in segment_ids)


def arbitrate(
    offers: Iterable[Offer], *, touchpoint: str, segment_ids: Set[uuid.UUID], limit: int
) -> list[Action]:
    """The `limit` best offers a person is eligible for at a touchpoint (ranked, then chosen: what Decide
    does, with the ranking it keeps per touchpoint)."""
    return choose(ranked(offers, touchpoint), segment_ids, limit=limit)
