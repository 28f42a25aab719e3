"""Synthetic but realistic traffic: identifier sets for identity, a stream of shop events for profile.

Everything is drawn from a seeded random generator, so two runs send the same mix. Events are built as
protobuf wire bytes from pre-serialised parts (a BatchTrackEventsRequest is just its events' encodings one
after the other), which keeps the load generator's CPU cost per event around a microsecond: on a 2-core
machine every cycle the generator spends is taken from the service it measures. ``check_wire`` parses a
batch back with the generated classes to prove the bytes are what the API expects.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import struct_pb2

from omni.common.v1 import common_pb2
from omni.identity.v1 import identity_pb2
from omni.profile.v1 import profile_pb2

Identifier = tuple[str, str]

# -- identity ------------------------------------------------------------------------------------------


class IdentifierSets:
    """Identifier sets as channels send them: mostly new customers, some returning, a few that link two.

    Of each draw, ``new_share`` are sets of 1-3 identifiers never seen before; ``link_share`` combine
    identifiers of two different known persons (identity merges them); the rest re-use a known person's
    identifiers, sometimes with a new anonymous id (identity attaches it).
    """

    TYPES = ("email", "anonymous_id", "device_id", "user_id")

    def __init__(self, seed: int, *, new_share: float = 0.70, link_share: float = 0.01) -> None:
        self._rng = random.Random(seed)
        self._tag = f"{seed:x}"
        self._counter = 0
        self._known: list[list[Identifier]] = []
        self.new_share = new_share
        self.link_share = link_share

    def _value(self, type_name: str) -> str:
        self._counter += 1
        n = self._counter
        if type_name == "email":
            return f"customer{n}.{self._tag}@example.com"
        if type_name == "user_id":
            return f"u-{self._tag}-{n}"
        if type_name == "device_id":
            return f"dev-{self._tag}-{n:x}-{self._rng.getrandbits(32):08x}"
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def next_set(self) -> list[Identifier]:
        """Draw one identifier set."""
        rng = self._rng
        draw = rng.random()
        if draw < self.new_share or len(self._known) < 100:
            types = rng.sample(self.TYPES, rng.randint(1, 3))
            identifiers = [(t, self._value(t)) for t in types]
            self._known.append(list(identifiers))
            return identifiers
        if draw < self.new_share + self.link_share:
            i, j = rng.sample(range(len(self._known)), 2)
            first, second = self._known[i], self._known[j]
            identifiers = [rng.choice(first), rng.choice(second)]
            first.extend(x for x in second if x not in first)
            # The second person is now part of the first: forget it (swap-remove keeps this O(1)).
            self._known[j] = self._known[-1]
            self._known.pop()
            return identifiers
        person = rng.choice(self._known)
        identifiers = rng.sample(person, rng.randint(1, min(2, len(person))))
        if rng.random() < 0.3 and len(person) < 8:
            fresh = ("anonymous_id", self._value("anonymous_id"))
            person.append(fresh)
            identifiers.append(fresh)
        return identifiers

    def batch(self, size: int) -> list[list[Identifier]]:
        """Draw ``size`` sets."""
        return [self.next_set() for _ in range(size)]


def resolve_request(identifiers: list[Identifier], source: str = "web") -> identity_pb2.ResolvePersonRequest:
    """The API request for one identifier set."""
    return identity_pb2.ResolvePersonRequest(
        identifiers=[common_pb2.Identifier(type=t, value=v) for t, v in identifiers], source=source
    )


# -- profile -------------------------------------------------------------------------------------------

CHANNELS = {"web": common_pb2.CHANNEL_WEB, "app": common_pb2.CHANNEL_APP, "store": common_pb2.CHANNEL_STORE}
CATEGORIES = ("shoes", "shirts", "trousers", "jackets", "bags", "hats", "socks", "watches")


@dataclass(frozen=True)
class _Customer:
    person_id: uuid.UUID
    """Only for the COPY baseline, which stores rows already resolved."""
    identifiers: dict[str, tuple[list[Identifier], bytes]]
    """Per variant ("web", "web+email", "app", "app+email", "store"): the identifiers and their wire bytes."""


@dataclass(frozen=True)
class _Template:
    type: str
    channel: str
    occurred_at: datetime
    properties: str
    cart_item: str | None
    wire: bytes
    """The Event's encoding without id and identifiers."""


def _key(field_number: int) -> bytes:
    return _varint(field_number << 3 | 2)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _length_delimited(field_number: int, payload: bytes) -> bytes:
    return _key(field_number) + _varint(len(payload)) + payload


class ShopEvents:
    """Events of a shop's customers on web, app and store, for ``customers`` people.

    Mix: page_viewed 50%, product_viewed 28%, cart_item_added 14% (with a cart line), order_completed 8%;
    web 60%, app 35%, store 5%. Web events carry the anonymous id, app events the device id, and three in
    ten of them the email too (a logged-in customer); store events carry the email.
    """

    def __init__(self, seed: int, *, customers: int = 50_000, templates: int = 4_000) -> None:
        self._rng = random.Random(seed)
        self._tag = f"{seed:x}"
        self._counter = 0
        self.received_at = datetime.now(UTC)
        self._customers = [self._customer(i) for i in range(customers)]
        self._templates = [self._template() for _ in range(templates)]

    def _customer(self, index: int) -> _Customer:
        anonymous = ("anonymous_id", f"anon-{self._tag}-{index}")
        device = ("device_id", f"device-{self._tag}-{index}")
        email = ("email", f"shopper{index}.{self._tag}@example.com")
        variants = {
            "web": [anonymous],
            "web+email": [anonymous, email],
            "app": [device],
            "app+email": [device, email],
            "store": [email],
        }
        encoded = {
            name: (ids, b"".join(_length_delimited(4, _identifier(t, v)) for t, v in ids))
            for name, ids in variants.items()
        }
        return _Customer(
            person_id=uuid.UUID(int=self._rng.getrandbits(128), version=4),
            identifiers=encoded,
        )

    def _template(self) -> _Template:
        rng = self._rng
        channel = rng.choices(("web", "app", "store"), weights=(60, 35, 5))[0]
        kind = rng.choices(
            ("page_viewed", "product_viewed", "cart_item_added", "order_completed"), weights=(50, 28, 14, 8)
        )[0]
        occurred_at = self.received_at - timedelta(seconds=rng.uniform(0, 3600))
        sku = f"sku-{rng.randint(1, 5000)}"
        category = rng.choice(CATEGORIES)
        price = rng.randint(500, 25_000)
        properties: dict[str, Any]
        cart: dict[str, Any] | None = None
        if kind == "page_viewed":
            path = f"/{category}/{rng.randint(1, 400)}"
            properties = {
                "url": f"https://shop.example.com{path}",
                "path": path,
                "title": f"{category.title()} — page {rng.randint(1, 20)}",
                "referrer": rng.choice(["https://www.google.com/", "", "https://news.example.org/a"]),
            }
        elif kind == "product_viewed":
            properties = {
                "product_id": sku,
                "name": f"{category.title()} {sku}",
                "category": category,
                "price": price / 100,
                "currency": "EUR",
            }
        elif kind == "cart_item_added":
            quantity = rng.randint(1, 3)
            properties = {"product_id": sku, "quantity": quantity, "category": category}
            cart = {
                "product_id": sku,
                "name": f"{category.title()} {sku}",
                "quantity": quantity,
                "unit_price": {"amount_minor": price, "currency_code": "EUR"},
            }
        else:
            lines = rng.randint(1, 4)
            properties = {
                "order_id": f"o-{rng.getrandbits(40):x}",
                "revenue": round(price * lines / 100, 2),
                "currency": "EUR",
                "products": [
                    {"product_id": f"sku-{rng.randint(1, 5000)}", "quantity": 1} for _ in range(lines)
                ],
            }
        event = profile_pb2.Event(type=kind, channel=CHANNELS[channel])
        event.occurred_at.FromDatetime(occurred_at)
        struct = struct_pb2.Struct()
        struct.update(properties)
        event.properties.CopyFrom(struct)
        if cart is not None:
            event.cart_item.CopyFrom(
                common_pb2.CartItem(
                    product_id=cart["product_id"],
                    name=cart["name"],
                    quantity=cart["quantity"],
                    unit_price=common_pb2.Money(amount_minor=price, currency_code="EUR"),
                )
            )
        return _Template(
            type=kind,
            channel=channel,
            occurred_at=occurred_at,
            properties=json.dumps(properties),
            cart_item=json.dumps(cart) if cart is not None else None,
            wire=event.SerializeToString(),
        )

    def _draw(self) -> tuple[str, _Customer, _Template, str]:
        rng = self._rng
        self._counter += 1
        event_id = f"{self._tag}-{self._counter}-{rng.getrandbits(32):08x}"
        customer = rng.choice(self._customers)
        template = rng.choice(self._templates)
        variant = template.channel
        if variant != "store" and rng.random() < 0.3:
            variant += "+email"
        return event_id, customer, template, variant

    def batch_wire(self, size: int) -> bytes:
        """A serialised BatchTrackEventsRequest of ``size`` new events."""
        parts = []
        for _ in range(size):
            event_id, customer, template, variant = self._draw()
            event = _length_delimited(1, event_id.encode()) + customer.identifiers[variant][1] + template.wire
            parts.append(_length_delimited(1, event))
        return b"".join(parts)

    def rows(self, size: int) -> list[tuple[Any, ...]]:
        """``size`` new events as rows of the COPY baseline's events table (already resolved)."""
        rows = []
        for _ in range(size):
            event_id, customer, template, variant = self._draw()
            identifiers = [{"type": t, "value": v} for t, v in customer.identifiers[variant][0]]
            rows.append(
                (
                    event_id,
                    customer.person_id,
                    template.type,
                    template.channel,
                    template.occurred_at,
                    self.received_at,
                    json.dumps(identifiers),
                    template.properties,
                    template.cart_item,
                )
            )
        return rows

    def import_line(self) -> bytes:
        """One new event as a line of an `omni import events` NDJSON file (no id: the command derives it)."""
        _, customer, template, variant = self._draw()
        row: dict[str, Any] = {
            "type": template.type,
            "channel": template.channel,
            "occurred_at": template.occurred_at.isoformat(),
            # The draw's own counter makes every row distinct, as the events of a real export are.
            "properties": {**json.loads(template.properties), "seq": self._counter},
        }
        for type_name, value in customer.identifiers[variant][0]:
            row[type_name] = value
        if template.cart_item is not None:
            row["cart_item"] = json.loads(template.cart_item)
        return json.dumps(row, separators=(",", ":")).encode() + b"\n"

    def person_events_wire(self, size: int, anonymous_id: str) -> bytes:
        """A serialised BatchTrackEventsRequest of ``size`` events of one person (by anonymous id)."""
        identifiers = _length_delimited(4, _identifier("anonymous_id", anonymous_id))
        parts = []
        for _ in range(size):
            self._counter += 1
            template = self._rng.choice(self._templates)
            event_id = f"{self._tag}-one-{self._counter}"
            parts.append(
                _length_delimited(1, _length_delimited(1, event_id.encode()) + identifiers + template.wire)
            )
        return b"".join(parts)


def _identifier(type_name: str, value: str) -> bytes:
    return common_pb2.Identifier(type=type_name, value=value).SerializeToString()


def check_wire(wire: bytes, expected: int) -> None:
    """Parse a generated batch with the API's own classes; raise if it is not ``expected`` valid events."""
    request = profile_pb2.BatchTrackEventsRequest.FromString(wire)
    if len(request.events) != expected:
        raise AssertionError(f"generated batch has {len(request.events)} events, expected {expected}")
    for event in request.events:
        if not event.id or not event.type or not event.identifiers or not event.HasField("occurred_at"):
            raise AssertionError(f"generated event is incomplete: {event}")
        if event.type == "cart_item_added" and not event.cart_item.product_id:
            raise AssertionError(f"generated cart event has no cart line: {event}")
