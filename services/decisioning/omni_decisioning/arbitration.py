"""Offer eligibility and arbitration: which offers a person may see at a touchpoint, best first."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable, Set
from dataclasses import dataclass
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


class Verdict(enum.IntEnum):
    """The stage that decided an offer's fate in a decision (omni.decisioning.v1.Explanation.Verdict)."""

    CHOSEN = 1
    NOT_AT_TOUCHPOINT = 2
    NOT_IN_SEGMENT = 3
    NOT_VALID_NOW = 4
    OUTRANKED = 5


@dataclass(frozen=True)
class Explained:
    """What became of one offer in a decision, and why."""

    offer: Offer
    verdict: Verdict
    score: float
    rank: int
    detail: str


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def explain(
    offers: Iterable[Offer], *, touchpoint: str, segment_ids: Set[uuid.UUID], limit: int, now: datetime
) -> list[Explained]:
    """Every offer in ranking order with the stage that left it out (eligibility: touchpoint, segment;
    applicability: validity window) or its place among the eligible ones: the same choice as choose() over
    ranked(), spelled out."""
    ordered = sorted(offers, key=lambda offer: (-score(offer), offer.create_time, offer.id))
    explained: list[Explained] = []
    rank = 0
    for offer in ordered:
        if not shown_at(offer, touchpoint):
            verdict, detail = (
                Verdict.NOT_AT_TOUCHPOINT,
                f"not shown at {touchpoint} (shown at {', '.join(offer.touchpoints)})",
            )
        elif offer.segment_id is not None and offer.segment_id not in segment_ids:
            verdict, detail = Verdict.NOT_IN_SEGMENT, f"the person is not in segment {offer.segment_id}"
        elif not offer.valid_at(now):
            window = f"from {offer.valid_from.isoformat() if offer.valid_from else 'the start'} until " + (
                offer.valid_until.isoformat() if offer.valid_until else "further notice"
            )
            verdict, detail = Verdict.NOT_VALID_NOW, f"valid {window}"
        else:
            rank += 1
            if rank <= limit:
                verdict, detail = Verdict.CHOSEN, f"ranked {_ordinal(rank)} by score {score(offer):g}"
            else:
                verdict, detail = Verdict.OUTRANKED, f"ranked {_ordinal(rank)}; the limit is {limit}"
        explained.append(
            Explained(
                offer=offer,
                verdict=verdict,
                score=score(offer),
                rank=rank if verdict in (Verdict.CHOSEN, Verdict.OUTRANKED) else 0,
                detail=detail,
            )
        )
    return explained
