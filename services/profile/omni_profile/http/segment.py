"""Segment Tracking API messages as profile events: ids, identifiers, event types and times.

One message (identify, track, page, screen, group or alias) becomes one profile event, checked by the same
rules as an event sent over gRPC. Problems are reported with the message's own field names ("messageId",
"timestamp", "context.traits.email"), so a sender can find them in what it sent.
"""

from __future__ import annotations

import json
import re
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from omni.common.v1 import common_pb2
from omni.profile.v1 import profile_pb2
from omni_kit.errors import FieldViolation, InvalidArgument, Violations
from omni_profile import money, validation
from omni_profile.domain import CART_ITEM_ADDED, CART_ITEM_REMOVED, CART_LINE_EVENTS
from omni_profile.http.sources import Source, channel_of

MAX_MESSAGE_BYTES = 32 * 1024
"""The largest message Segment accepts, as JSON."""

MAX_QUANTITY = validation.MAX_QUANTITY
"""The most units one cart event may add or remove."""

MESSAGE_TYPES = ("identify", "track", "page", "screen", "group", "alias")

# What the calls other than track are recorded as on the timeline.
EVENT_TYPES = {
    "identify": "identified",
    "page": "page_viewed",
    "screen": "screen_viewed",
    "group": "group_joined",
    "alias": "aliased",
}

# Segment's e-commerce spec names the cart events "Product Added" and "Product Removed"; they are the
# profile's cart events, so the cart, computed traits and segment rules see one type whatever sent them.
CART_EVENT_NAMES = {"product_added": CART_ITEM_ADDED, "product_removed": CART_ITEM_REMOVED}

_IDENTIFIER_PATH = re.compile(r"identifiers\[(\d+)\]")
# The event's fields under the names of the message fields they come from.
_RENAMED = {
    "id": "messageId",
    "type": "event",
    "identifiers": "userId",
    "occurred_at": "timestamp",
    "channel": "context.channel",
}
_CART_FIELDS = {
    "product_id": "properties.product_id",
    "quantity": "properties.quantity",
    "unit_price.amount_minor": "properties.price",
    "unit_price.currency_code": "properties.currency",
}
_NIL_PERSON = str(uuid.UUID(int=0))


@dataclass
class Translated:
    """A message turned into a profile event, and for identify the traits to set."""

    event: profile_pb2.Event
    """The event: id is the messageId, source the write key's source (ids are unique per source)."""
    traits: dict[str, Any] = field(default_factory=dict)
    origins: list[str] = field(default_factory=list)
    """The message field each of the event's identifiers came from, in order."""


@dataclass
class Refused:
    """A message that cannot be recorded, with every problem by the message's field names."""

    message_id: str
    violations: list[FieldViolation]

    @property
    def message(self) -> str:
        """The problems in one line."""
        return "; ".join(f"{v.field}: {v.description}" if v.field else v.description for v in self.violations)


def snake_case(name: str) -> str:
    """An event name as an event type: "Product Added" → "product_added", "signedUp" → "signed_up"."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", ascii_name)
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", spaced)
    snake = re.sub(r"[^A-Za-z0-9]+", "_", spaced).strip("_").lower()
    if snake and not snake[0].isalpha():
        snake = f"event_{snake}"
    return snake


def parse_time(value: Any, path: str, violations: Violations) -> datetime | None:
    """An ISO 8601 time as an aware UTC datetime (no offset means UTC); None if absent or bad."""
    if value is None:
        return None
    if not isinstance(value, str):
        violations.add(path, "must be an ISO 8601 date-time string")
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        violations.add(path, f"{value[:40]!r} is not an ISO 8601 date-time")
        return None


def occurred_at(
    timestamp: datetime | None, sent_at: datetime | None, received_at: datetime, violations: Violations
) -> datetime:
    """When it happened, corrected for the sender's clock as Segment does: receivedAt - (sentAt - timestamp).

    Without sentAt the timestamp is taken as it is; without a timestamp, the time it was received.
    """
    if timestamp is None:
        return received_at
    if sent_at is None:
        return timestamp
    try:
        return received_at - (sent_at - timestamp)
    except OverflowError:
        violations.add("timestamp", "is too far from sentAt")
        return received_at


def translate(
    message: Any,
    *,
    source: Source,
    received_at: datetime,
    batch_sent_at: datetime | None = None,
    expected_type: str | None = None,
    previous_id_type: str | None = None,
) -> Translated | Refused:
    """Turn one Segment message into a checked profile event, or say why it cannot be.

    previous_id_type is the identifier type of an alias call's previousId ("anonymous_id" or "user_id"),
    as the caller found out from identity; without it, see `guess_previous_id_type`.
    """
    if not isinstance(message, dict):
        return Refused("", [FieldViolation("", "each message must be a JSON object")])
    violations = Violations()
    message_id = _message_id(message, source, violations)
    kind = _kind(message, expected_type, violations)
    if len(json.dumps(message, separators=(",", ":")).encode()) > MAX_MESSAGE_BYTES:
        violations.add("", f"the message must be at most {MAX_MESSAGE_BYTES // 1024} KB as JSON")
    context = _object(message, "context", violations)
    properties = _object(message, "properties", violations)
    traits = _object(message, "traits", violations)
    sent_at = parse_time(message.get("sentAt"), "sentAt", violations) or batch_sent_at
    when = occurred_at(
        parse_time(message.get("timestamp"), "timestamp", violations), sent_at, received_at, violations
    )
    event = profile_pb2.Event(id=message_id, source=source.name, channel=channel_of(context, source))
    origins = _identifiers(event, message, kind, context, traits, violations, previous_id_type)
    if kind is not None:
        event.type, properties = _type_and_properties(kind, message, properties, violations)
        if kind != "identify":
            traits = {}
    if event.type in CART_LINE_EVENTS and not _bad(violations, "properties"):
        _cart_item(event, properties, violations)
    if violations:
        return Refused(message_id, violations.items)
    event.occurred_at.FromDatetime(when)
    if properties:
        event.properties.update(properties)
    kept = {key: value for key, value in context.items() if key != "traits"}
    if kept:
        # The circumstances the library reports (page, campaign, user agent, …) stay with the event; its
        # traits were read above for identifiers and go to the profile, not onto every event.
        event.context.update(kept)
    checked = validation.event_violations(event, now=received_at)
    if traits:
        checked.extend(_trait_violations(traits, source))
    if checked:
        return Refused(message_id, [message_field(v, origins) for v in checked])
    return Translated(event=event, traits=traits, origins=origins)


def message_field(violation: FieldViolation, origins: list[str]) -> FieldViolation:
    """A violation on the profile event (paths like "event.identifiers[1].value") on the message's fields.

    origins[k] is the message field identifier k came from.
    """
    path = violation.field.removeprefix("event").removeprefix(".")
    head, _, rest = path.partition(".")
    match = _IDENTIFIER_PATH.fullmatch(head)
    if match and int(match.group(1)) < len(origins):
        return FieldViolation(origins[int(match.group(1))], violation.description)
    if head == "cart_item":
        return FieldViolation(_CART_FIELDS.get(rest, "properties"), violation.description)
    renamed = _RENAMED.get(head, head)
    return FieldViolation(f"{renamed}.{rest}" if rest else renamed, violation.description)


def previous_id(message: Any, expected_type: str | None = None) -> str | None:
    """The previousId of an alias message as a string, when it has a usable one."""
    if not isinstance(message, dict) or message.get("type", expected_type) != "alias":
        return None
    return _id_value(message.get("previousId"), "previousId", Violations())


def guess_previous_id_type(message: Mapping[str, Any]) -> str:
    """The type of an alias call's previousId when identity was not asked.

    analytics.js sends the cookie's anonymousId as previousId along with it; any other previousId is taken
    for a former user id.
    """
    previous = _id_value(message.get("previousId"), "previousId", Violations())
    anonymous_id = _id_value(message.get("anonymousId"), "anonymousId", Violations())
    return "anonymous_id" if previous is not None and previous == anonymous_id else "user_id"


def _message_id(message: Mapping[str, Any], source: Source, violations: Violations) -> str:
    value = message.get("messageId")
    limit = validation.MAX_EVENT_ID
    if value is None or value == "":
        violations.add("messageId", "is required")
        return ""
    if not isinstance(value, str):
        violations.add("messageId", "must be a string")
        return ""
    if len(value) > limit:
        violations.add("messageId", f"must be at most {limit} characters")
    return value


def _kind(message: Mapping[str, Any], expected: str | None, violations: Violations) -> str | None:
    kind = message.get("type", expected)
    if expected is not None and kind != expected:
        # The route says what it is; a different type in the body is a sender's mistake.
        violations.add("type", f"must be {expected!r} on this endpoint")
        return None
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
        violations.add("type", f"must be one of {', '.join(MESSAGE_TYPES)}")
        return None
    return kind


def _object(message: Mapping[str, Any], name: str, violations: Violations) -> dict[str, Any]:
    value = message.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        violations.add(name, "must be a JSON object")
        return {}
    return value


def _id_value(value: Any, path: str, violations: Violations) -> str | None:
    """A user-supplied id (string or number, as Segment allows); None when absent or empty."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        violations.add(path, "must be a string or a number")
        return None
    return value if isinstance(value, str) else str(value)


def _identifiers(
    event: profile_pb2.Event,
    message: Mapping[str, Any],
    kind: str | None,
    context: Mapping[str, Any],
    traits: Mapping[str, Any],
    violations: Violations,
    previous_id_type: str | None,
) -> list[str]:
    """Add the message's identifiers to the event; return the message field each one came from."""
    user_id = _id_value(message.get("userId"), "userId", violations)
    anonymous_id = _id_value(message.get("anonymousId"), "anonymousId", violations)
    found: list[tuple[str, str, str]] = []
    if user_id is not None:
        found.append(("user_id", user_id, "userId"))
    if anonymous_id is not None:
        found.append(("anonymous_id", anonymous_id, "anonymousId"))
    if kind == "alias":
        previous = _id_value(message.get("previousId"), "previousId", violations)
        if user_id is None and "userId" not in {v.field for v in violations.items}:
            violations.add("userId", "is required for alias")
        if previous is None:
            violations.add("previousId", "is required for alias")
        else:
            found.append((previous_id_type or guess_previous_id_type(message), previous, "previousId"))
    elif user_id is None and anonymous_id is None and not _bad(violations, "userId", "anonymousId"):
        violations.add("userId", "userId or anonymousId is required")
    context_traits = context.get("traits")
    sources: list[tuple[Mapping[str, Any], str]] = []
    if kind == "identify":
        sources.append((traits, "traits"))
    if isinstance(context_traits, dict):
        sources.append((context_traits, "context.traits"))
    for values, prefix in sources:
        for name in ("email", "phone"):
            value = values.get(name)
            if value is None or value == "":
                continue
            if not isinstance(value, str):
                violations.add(f"{prefix}.{name}", "must be a string")
            else:
                found.append((name, value, f"{prefix}.{name}"))
    device = context.get("device")
    if isinstance(device, dict):
        device_id = _id_value(device.get("id"), "context.device.id", violations)
        if device_id is not None:
            found.append(("device_id", device_id, "context.device.id"))
    origins: list[str] = []
    seen: set[tuple[str, str]] = set()
    for type_, value, origin in found:
        if (type_, value) in seen:
            continue
        seen.add((type_, value))
        event.identifiers.append(common_pb2.Identifier(type=type_, value=value))
        origins.append(origin)
    return origins


def _bad(violations: Violations, *fields: str) -> bool:
    return any(v.field in fields for v in violations.items)


def _type_and_properties(
    kind: str, message: Mapping[str, Any], properties: dict[str, Any], violations: Violations
) -> tuple[str, dict[str, Any]]:
    properties = dict(properties)
    if kind == "track":
        name = message.get("event")
        if not isinstance(name, str) or not name.strip():
            violations.add("event", "is required for track, as a non-empty string")
            return "", properties
        event_type = snake_case(name)
        if not event_type:
            violations.add("event", "must contain letters or digits")
        return CART_EVENT_NAMES.get(event_type, event_type), properties
    if kind in ("page", "screen"):
        for key in ("name", "category"):
            value = message.get(key)
            if value is not None and key not in properties:
                properties[key] = value
    elif kind == "group":
        group_id = _id_value(message.get("groupId"), "groupId", violations)
        if group_id is None and not _bad(violations, "groupId"):
            violations.add("groupId", "is required for group")
        properties = {"group_id": group_id}
        group_traits = message.get("traits")
        if isinstance(group_traits, dict) and group_traits:
            properties["group_traits"] = group_traits
    elif kind == "alias":
        properties = {"previous_id": str(message.get("previousId"))}
    elif kind == "identify":
        properties = {}
    return EVENT_TYPES[kind], properties


def _cart_item(event: profile_pb2.Event, properties: Mapping[str, Any], violations: Violations) -> None:
    """The cart line of a cart event, from Segment's e-commerce properties.

    product_id (else sku) names the product; quantity is a whole number, 1 when absent; price is one unit's
    price in major units of currency, kept in minor units. A price without a currency leaves the line
    without a price (it stays in the properties): the cart cannot tell what it is in.
    """
    item = event.cart_item
    product_id = _id_value(properties.get("product_id"), "properties.product_id", violations)
    if product_id is None:
        product_id = _id_value(properties.get("sku"), "properties.sku", violations)
    if product_id is not None:
        item.product_id = product_id
    elif not _bad(violations, "properties.product_id", "properties.sku"):
        violations.add("properties.product_id", f"product_id or sku is required for {event.type}")
    quantity = properties.get("quantity", 1)
    if not money.is_amount(quantity) or quantity != int(quantity) or not 1 <= quantity <= MAX_QUANTITY:
        violations.add("properties.quantity", f"must be a whole number from 1 to {MAX_QUANTITY:,}")
    else:
        item.quantity = int(quantity)
    if isinstance(properties.get("name"), str):
        item.name = properties["name"]
    price, currency = properties.get("price"), properties.get("currency")
    if price is None:
        return
    if not money.is_amount(price) or price < 0:
        violations.add("properties.price", "must be a number of at least 0: one unit's price, e.g. 19.99")
        return
    if currency is None:
        return
    code = currency.strip().upper() if isinstance(currency, str) else ""
    if not validation.is_currency(code):
        violations.add("properties.currency", "must be an ISO 4217 code such as EUR")
        return
    amount_minor = money.to_minor(price, code)
    if amount_minor > money.MAX_MINOR:
        violations.add("properties.price", "is too large")
        return
    item.unit_price.amount_minor = amount_minor
    item.unit_price.currency_code = code


def _trait_violations(traits: dict[str, Any], source: Source) -> list[FieldViolation]:
    """The traits of an identify call checked by the rules of SetTraits."""
    request = profile_pb2.SetTraitsRequest(person_id=_NIL_PERSON, source=source.name)
    try:
        request.traits.update(traits)
        validation.validate_set_traits(request)
    except InvalidArgument as refused:
        return refused.violations
    except (ValueError, TypeError) as error:
        return [FieldViolation("traits", f"cannot be stored: {error}")]
    return []
