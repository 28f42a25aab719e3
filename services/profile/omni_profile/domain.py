"""What profile knows of a person, in plain Python: events, cart lines, consent, traits, the profile itself.

The servicer translates protobuf into these; domain modules and the repository work on them only.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from omni_kit.errors import FieldViolation

CART_ITEM_ADDED = "cart_item_added"
CART_ITEM_REMOVED = "cart_item_removed"
ORDER_COMPLETED = "order_completed"
CART_LINE_EVENTS = frozenset({CART_ITEM_ADDED, CART_ITEM_REMOVED})
"""Event types that carry a cart line and change it."""
CART_EVENTS = CART_LINE_EVENTS | {ORDER_COMPLETED}
"""Event types that change the cart."""

MESSAGE_SENT = "message_sent"
MESSAGE_FAILED = "message_failed"

DEFAULT_SOURCE = "api"
"""The source of events and traits whose sender names none."""
GATEWAY_SOURCE = "gateway"
"""The source of the timeline events profile records from the gateway's message outcomes."""

DEFAULT_PURPOSE = "marketing"
"""The purpose of a consent given without one: what consent meant before purposes were recorded."""


@dataclass(frozen=True)
class Identifier:
    """One identifier seen with an event, as the channel gave it."""

    type: str
    value: str


@dataclass(frozen=True)
class CartLine:
    """One product line of a cart, or the line an add/remove event carries."""

    product_id: str
    quantity: int
    name: str = ""
    unit_price_minor: int | None = None
    currency_code: str | None = None


@dataclass
class Event:
    """One event on a timeline; person_id is None until the event is resolved to a person.

    (source, id) is the event's identity: the same id from two sources is two events.
    """

    id: str
    type: str
    channel: str | None
    occurred_at: datetime
    received_at: datetime
    identifiers: list[Identifier] = field(default_factory=list)
    properties: Mapping[str, Any] = field(default_factory=dict)
    cart_item: CartLine | None = None
    person_id: uuid.UUID | None = None
    source: str = DEFAULT_SOURCE
    origin: bytes | None = field(default=None, repr=False, compare=False)
    """The event as the sender encoded it (omni.profile.v1.Event), completed with its occurred_at and source
    when the sender left them out; None when it did not come as protobuf. Announcements reuse it."""
    encoded: bytes | None = field(default=None, repr=False, compare=False)
    """The event as stored, encoded as omni.profile.v1.Event without person_id. An event read for display
    has it, and then its identifiers, properties and cart_item are only in it."""
    origin_person_id: uuid.UUID | None = field(default=None, compare=False)
    """The person the event named, when that person had been merged and the event went to the survivor:
    an unmerge of that person gives the event back."""
    fingerprint: bytes | None = field(default=None, repr=False, compare=False)
    """A hash of the event's content as the sender described it (wire.event_from_proto), stored with it: a
    later event with the same key and another fingerprint reuses the id. None when it did not come as
    protobuf."""

    @property
    def key(self) -> tuple[str, str]:
        """The event's identity: (source, id)."""
        return (self.source, self.id)


@dataclass(frozen=True)
class Consent:
    """A person's consent for one channel and purpose.

    double_opt_in is None, "pending_confirmation" or "confirmed" (email only).
    """

    channel: str
    state: str
    source: str
    updated_at: datetime
    purpose: str = DEFAULT_PURPOSE
    double_opt_in: str | None = None

    @property
    def contact_allowed(self) -> bool:
        """Whether the consent allows contact: granted, and confirmed when double opt-in is used."""
        return self.state == "granted" and self.double_opt_in != "pending_confirmation"


@dataclass(frozen=True)
class Trait:
    """One trait with who set it and when."""

    name: str
    value: Any
    source: str
    updated_at: datetime


@dataclass(frozen=True)
class TraitChange:
    """One change of a trait, as kept in the history; a None value means "not set"."""

    id: uuid.UUID
    person_id: uuid.UUID
    name: str
    old_value: Any
    new_value: Any
    source: str
    changed_at: datetime


@dataclass(frozen=True)
class SegmentMembership:
    """A segment a person is in, as segmentation announced it."""

    segment_id: str
    segment_name: str
    entered_at: datetime


@dataclass
class Profile:
    """The 360 view of one person."""

    person_id: uuid.UUID
    traits: dict[str, Any]
    cart: list[CartLine]
    consents: list[Consent]
    recent_events: list[Event]
    event_count: int
    computed_traits: dict[str, Any] = field(default_factory=dict)
    trait_details: dict[str, Trait] = field(default_factory=dict)
    segments: list[SegmentMembership] = field(default_factory=list)


RECORDED = "recorded"
DUPLICATE = "duplicate"
REJECTED = "rejected"
ID_REUSED = "id_reused"

# Why an event was not recorded: the ErrorInfo reason TrackEvent answers when it is the only event.
BAD_EVENT = "INVALID_ARGUMENT"
"""Fields of the event are wrong (its violations say which)."""
PERSON_ERASED = "PERSON_ERASED"
"""The event names an erased person, or carries only identifiers of one: erasure is for good."""
PERSON_NOT_FOUND = "PERSON_NOT_FOUND"
"""The event names a person_id neither profile nor identity knows."""
EVENT_ID_REUSED = "EVENT_ID_REUSED"
"""An event with the same source and id was recorded before with other content."""


@dataclass(frozen=True)
class TrackResult:
    """What happened to one tracked event: recorded, a duplicate, rejected (with its violations and reason),
    or refused as a reuse of a recorded event's id with other content.

    person_id is the person the event was (or had been) recorded for; None when it was rejected.
    Violation paths are relative to the event ("occurred_at", "identifiers[0].value").
    """

    person_id: uuid.UUID | None
    duplicate: bool
    violations: tuple[FieldViolation, ...] = ()
    reason: str = ""
    """Why the event was not recorded (BAD_EVENT, PERSON_ERASED, PERSON_NOT_FOUND, EVENT_ID_REUSED); empty
    when it was recorded now or before."""

    @property
    def status(self) -> str:
        """RECORDED, DUPLICATE, REJECTED or ID_REUSED."""
        if self.reason == EVENT_ID_REUSED:
            return ID_REUSED
        if self.reason:
            return REJECTED
        return DUPLICATE if self.duplicate else RECORDED

    @property
    def refused(self) -> bool:
        """Whether the event was refused (rejected, or an id reused with other content): nothing of it was
        written and sending it again changes nothing."""
        return bool(self.reason)

    @classmethod
    def rejected(
        cls, violations: list[FieldViolation] | tuple[FieldViolation, ...], reason: str = BAD_EVENT
    ) -> TrackResult:
        """The result of an event refused for these violations."""
        return cls(person_id=None, duplicate=False, violations=tuple(violations), reason=reason)

    @classmethod
    def id_reused(cls, person_id: uuid.UUID) -> TrackResult:
        """The result of an event whose source and id were recorded (for person_id) with other content."""
        return cls(person_id, duplicate=True, violations=(ID_REUSED_VIOLATION,), reason=EVENT_ID_REUSED)


ID_REUSED_VIOLATION = FieldViolation(
    "id",
    "an event with this source and id was recorded before with other content; send new content under a new id",
)
