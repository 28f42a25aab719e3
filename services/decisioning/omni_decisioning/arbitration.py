"""Offer eligibility and arbitration: which offers a person may see at a touchpoint, best first."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Set

from omni_decisioning.entities import Action, Offer


def is_eligible(offer: Offer, touchpoint: str, segment_ids: Set[uuid.UUID]) -> bool:
    """An offer is eligible at a touchpoint it lists (or it lists none) and, if it names a segment, for its members."""
    if offer.touchpoints and touchpoint not in offer.touchpoints:
        return False
    return offer.segment_id is None or offer.segment_id in segment_ids


def score(offer: Offer) -> float:
    """The arbitration score of an eligible offer; for now its priority."""
    return float(offer.priority)


def arbitrate(
    offers: Iterable[Offer], *, touchpoint: str, segment_ids: Set[uuid.UUID], limit: int
) -> list[Action]:
    """Rank the eligible offers by score (higher first), then by age (older first), and keep `limit`.

    Older offers win ties so that a new offer of equal priority does not silently displace a running one;
    ids are UUIDv7, so creation time then id makes the order total and stable.
    """
    eligible = [offer for offer in offers if is_eligible(offer, touchpoint, segment_ids)]
    eligible.sort(key=lambda offer: (-score(offer), offer.create_time, offer.id))
    return [Action(offer=offer, score=score(offer)) for offer in eligible[:limit]]
