"""The things decisioning works with, as plain values shared by the domain modules and the repository."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class NewJourney:
    """A journey as asked for, before it has an id."""

    name: str
    trigger_segment_id: uuid.UUID | None
    """None for a multi-step journey (its spec names its entry)."""
    channels: tuple[int, ...]
    template_id: str


@dataclass(frozen=True)
class Journey(NewJourney):
    """A stored journey."""

    id: uuid.UUID = field(kw_only=True)
    create_time: datetime = field(kw_only=True)
    multi_step: bool = field(kw_only=True, default=False)
    state: str = field(kw_only=True, default="published")
    """draft, published, paused or archived (a one-message journey is published)."""
    version: int = field(kw_only=True, default=0)
    has_draft: bool = field(kw_only=True, default=False)
    update_time: datetime | None = field(kw_only=True, default=None)


@dataclass(frozen=True)
class NewOffer:
    """An offer as asked for, before it has an id."""

    name: str
    description: str
    touchpoints: tuple[str, ...]
    segment_id: uuid.UUID | None
    priority: int
    group: str = ""
    valid_from: datetime | None = None
    valid_until: datetime | None = None

    def valid_at(self, now: datetime) -> bool:
        """Whether the offer may be shown at `now` (its validity window; the end itself is outside)."""
        return (self.valid_from is None or self.valid_from <= now) and (
            self.valid_until is None or now < self.valid_until
        )


# The fields of an offer an update may change (UpdateOffer's update mask paths).
OFFER_FIELDS = (
    "name",
    "description",
    "touchpoints",
    "segment_id",
    "priority",
    "group",
    "valid_from",
    "valid_until",
)


@dataclass(frozen=True)
class Offer(NewOffer):
    """A stored offer, at one of its versions."""

    id: uuid.UUID = field(kw_only=True)
    create_time: datetime = field(kw_only=True)
    version: int = field(kw_only=True, default=1)
    update_time: datetime | None = field(kw_only=True, default=None)
    archive_time: datetime | None = field(kw_only=True, default=None)


@dataclass(frozen=True)
class DecideQuery:
    """What Decide is asked: a person at a touchpoint, and how many actions to return."""

    person_id: uuid.UUID
    touchpoint: str
    channel: int
    context: dict[str, Any]
    limit: int
    explain: bool = False


@dataclass(frozen=True)
class Action:
    """One offer chosen for a person, with its arbitration score."""

    offer: Offer
    score: float
    factors: tuple[float, float, float, float] | None = None
    """Learned arbitration's (P, C, V, L); None by priority."""
    probability: float = 1.0
    """The probability the deciding policy put the offer at its place."""


@dataclass(frozen=True)
class LoggedCandidate:
    """One eligible offer of a decision as the decision log keeps it (learning/decision_log.py)."""

    offer_id: uuid.UUID
    score: float
    rank: int
    propensity: float
    """The probability, under the deciding policy, that the offer is among the chosen actions."""
    rank_propensity: float
    """For a chosen offer, the probability that it is at exactly its rank; 0 otherwise."""
    chosen: bool


@dataclass(frozen=True)
class Decision:
    """The answer to a Decide call, as logged."""

    id: uuid.UUID
    person_id: uuid.UUID
    actions: tuple[Action, ...]
    explanations: tuple[Any, ...] = ()
    """With explain: arbitration.Explained for every live offer."""
    candidates: tuple[LoggedCandidate, ...] = ()
    """Every eligible offer with its score, rank and propensity."""
    policy: str = "priority"
    """The policy that decided: "priority" (deterministic) or "thompson"."""
    model_version: int = 0
    """The learning policies' version the decision used."""
    candidates_json: str = ""
    """The candidates as the decision log stores them (learning/decision_log.py), made with the choice."""


class RunOutcome(enum.StrEnum):
    """What became of one journey trigger."""

    SEND_REQUESTED = "send_requested"
    NO_CONSENTED_CHANNEL = "no_consented_channel"
    SUPPRESSED_REENTRY = "suppressed_reentry"
    CAPPED = "capped"
    """The contact policy's cap on marketing messages was reached (contact_policy.py)."""
    HOLDOUT = "holdout"
    """The person is in an experiment's holdout arm: nothing was sent, the exposure was logged."""
    GLOBAL_CONTROL = "global_control"
    """The person is in the global control group: no marketing at all; the exposure was logged."""


@dataclass(frozen=True)
class JourneyRun:
    """One trigger of a journey for a person and what was done about it."""

    id: uuid.UUID
    journey_id: uuid.UUID
    person_id: uuid.UUID
    trigger_event_id: uuid.UUID
    trigger_time: datetime
    outcome: RunOutcome
    channel: int | None
    request_id: str | None
    create_time: datetime


@dataclass(frozen=True)
class SegmentEntry:
    """A person entering a segment, as announced by segmentation (one event)."""

    event_id: uuid.UUID
    person_id: uuid.UUID
    segment_id: uuid.UUID
    occurred_at: datetime
