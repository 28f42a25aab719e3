"""What profile knows of a person, in plain Python: events, cart lines, consent, the profile itself.

The servicer translates protobuf into these; domain modules and the repository work on them only.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

CART_ITEM_ADDED = "cart_item_added"
CART_ITEM_REMOVED = "cart_item_removed"
ORDER_COMPLETED = "order_completed"
CART_LINE_EVENTS = frozenset({CART_ITEM_ADDED, CART_ITEM_REMOVED})
"""Event types that carry a cart line and change it."""
CART_EVENTS = CART_LINE_EVENTS | {ORDER_COMPLETED}
"""Event types that change the cart."""

MESSAGE_SENT = "message_sent"
MESSAGE_FAILED = "message_failed"


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
    """One event on a timeline; person_id is None until the event is resolved to a person."""

    id: str
    type: str
    channel: str | None
    occurred_at: datetime
    received_at: datetime
    identifiers: list[Identifier] = field(default_factory=list)
    properties: dict[str, Any] = field(default_factory=dict)
    cart_item: CartLine | None = None
    person_id: uuid.UUID | None = None


@dataclass(frozen=True)
class Consent:
    """A person's consent for one channel."""

    channel: str
    state: str
    source: str
    updated_at: datetime


@dataclass(frozen=True)
class Trait:
    """One trait with who set it and when."""

    name: str
    value: Any
    source: str
    updated_at: datetime


@dataclass
class Profile:
    """The 360 view of one person."""

    person_id: uuid.UUID
    traits: dict[str, Any]
    cart: list[CartLine]
    consents: list[Consent]
    recent_events: list[Event]
    event_count: int


@dataclass(frozen=True)
class TrackResult:
    """Where one tracked event went."""

    person_id: uuid.UUID
    duplicate: bool
