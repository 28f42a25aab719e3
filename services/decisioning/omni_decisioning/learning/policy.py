"""Learning policies: how a touchpoint arbitrates when it learns from outcomes, as plain values."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

# OutcomeType numbers (omni.decisioning.v1.OutcomeType), the same in the outcomes table.
IMPRESSION, CLICK, CONVERSION = 1, 2, 3


@dataclass(frozen=True)
class OfferTerms:
    """One offer's own prior, business value (V) and context weight (C) at a touchpoint; 0 means default."""

    prior_alpha: float = 0.0
    prior_beta: float = 0.0
    value: float = 0.0
    context_weight: float = 0.0
    fixed: bool = False
    """Learning off for the offer: P is the prior's mean, not drawn, not updated."""


@dataclass(frozen=True)
class LearningPolicy:
    """Learned arbitration at a touchpoint: P·C·V·L with P drawn from each offer's Beta posterior."""

    touchpoint: str
    enabled: bool = False
    exploration: float = 0.0
    prior_alpha: float = 0.0
    prior_beta: float = 0.0
    success: int = CLICK
    offers: dict[uuid.UUID, OfferTerms] = field(default_factory=dict)

    def terms(self, offer_id: uuid.UUID) -> tuple[float, float, float, float, bool]:
        """The offer's (prior alpha, prior beta, V, C, fixed), defaults filled in (a prior of 1, 1 is
        uniform)."""
        own = self.offers.get(offer_id, _NO_TERMS)
        return (
            own.prior_alpha or self.prior_alpha or 1.0,
            own.prior_beta or self.prior_beta or 1.0,
            own.value or 1.0,
            own.context_weight or 1.0,
            own.fixed,
        )

    def to_json(self) -> dict[str, Any]:
        """As stored in learning_policies.policy."""
        return {
            "enabled": self.enabled,
            "exploration": self.exploration,
            "prior_alpha": self.prior_alpha,
            "prior_beta": self.prior_beta,
            "success": self.success,
            "offers": {
                str(offer_id): [t.prior_alpha, t.prior_beta, t.value, t.context_weight, t.fixed]
                for offer_id, t in self.offers.items()
            },
        }

    @classmethod
    def from_json(cls, touchpoint: str, stored: dict[str, Any]) -> LearningPolicy:
        """From learning_policies.policy."""
        return cls(
            touchpoint=touchpoint,
            enabled=bool(stored.get("enabled")),
            exploration=float(stored.get("exploration", 0.0)),
            prior_alpha=float(stored.get("prior_alpha", 0.0)),
            prior_beta=float(stored.get("prior_beta", 0.0)),
            success=int(stored.get("success", CLICK)),
            offers={
                uuid.UUID(offer_id): OfferTerms(
                    prior_alpha=float(terms[0]),
                    prior_beta=float(terms[1]),
                    value=float(terms[2]),
                    context_weight=float(terms[3]),
                    fixed=bool(terms[4]) if len(terms) > 4 else False,
                )
                for offer_id, terms in stored.get("offers", {}).items()
            },
        )


_NO_TERMS = OfferTerms()


@dataclass(frozen=True)
class Counts:
    """What was recorded of an offer at a touchpoint."""

    impressions: int = 0
    clicks: int = 0
    conversions: int = 0

    def successes(self, success: int) -> int:
        """Clicks or conversions, as the policy learns."""
        return self.conversions if success == CONVERSION else self.clicks

    def trials(self, success: int) -> int:
        """Impressions (at least as many as successes: a click without a recorded impression was shown)."""
        return max(self.impressions, self.successes(success))
