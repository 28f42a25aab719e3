"""Segment Tracking API messages as profile events: ids, identifiers, event types and times.

One message (identify, track, page, screen, group or alias) becomes one profile event, checked by the same
rules as an event sent over gRPC. Problems are reported with the message's own field names ("messageId",
"timestamp", "context.traits.email"), so a sender can find them in what it sent. What cannot be kept of a
message that is otherwise recorded (a bad trait, the largest parts of an oversized context) is left out and
reported as a warning with its field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from omni.profile.v1 import profile_pb2
from omni_kit.errors import FieldViolation, Violations, check_json_structure
from omni_profile import money, validation
from omni_profile.domain import CART_ITEM_ADDED, CART_ITEM_REMOVED, CART_LINE_EVENTS
from omni_profile.http import identifiers, json_sizes, message_traits
from omni_profile.http.event_types import snake_case
from omni_profile.http.sources import Source, channel_of

MAX_MESSAGE_BYTES = 32 * 1024
"""The largest message Segment accepts, as compact JSON in UTF-8 bytes."""

MAX_CONTEXT_BYTES = validation.MAX_CONTEXT_BYTES
"""The largest context kept with an event, as compact JSON in UTF-8 bytes; a larger one is trimmed."""

MAX_EVENT_NAME = validation.MAX_EVENT_NAME
"""The longest track call event name, in characters."""

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
    "name": "event",
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


@dataclass
class Translated:
    """A message turned into a profile event, and for identify the traits to set."""

    event: profile_pb2.Event
    """The event: id is the messageId, source the write key's source (ids are unique per source)."""
    traits: dict[str, Any] = field(default_factory=dict)
    origins: list[str] = field(default_factory=list)
    """The message field each of the event's identifiers came from, in order."""
    time_field: str = "timestamp"
    """The message field the event's time came from (RudderStack's libraries send originalTimestamp)."""
    warnings: list[FieldViolation] = field(default_factory=list)
    """What was left out of the message (bad traits, parts of an oversized context), by its field."""

    def message_field(self, violation: FieldViolation) -> FieldViolation:
        """A violation on the event (identity's refusal of an identifier …) named by the message's field."""
        return message_field(violation, self.origins, self.time_field)


@dataclass
class Refused:
    """A message that cannot be recorded, with every problem by the message's field names."""

    message_id: str
    violations: list[FieldViolation]

    @property
    def message(self) -> str:
        """The problems in one line."""
        return "; ".join(f"{v.field}: {v.description}" if v.field else v.description for v in self.violations)


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
    timestamp: datetime | None,
    sent_at: datetime | None,
    received_at: datetime,
    violations: Violations,
    path: str = "timestamp",
) -> datetime:
    """When it happened, corrected for the sender's clock as Segment does: receivedAt - (sentAt - timestamp).

    Without sentAt the timestamp is taken as it is; without a timestamp, the time it was received. path is
    the message field the timestamp came from.
    """
    if timestamp is None:
        return received_at
    if sent_at is None:
        return timestamp
    try:
        return received_at - (sent_at - timestamp)
    except OverflowError:
        violations.add(path, "is too far from sentAt")
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
    _check_structure(message, kind, violations)
    if violations:
        # A value nested too deep or a number JSON cannot write would break what follows.
        return Refused(message_id, violations.items)
    if json_sizes.json_size(message) > MAX_MESSAGE_BYTES:
        violations.add("", f"the message must be at most {MAX_MESSAGE_BYTES // 1024} KB as JSON")
    context = _object(message, "context", violations)
    properties = _object(message, "properties", violations)
    traits = _object(message, "traits", violations)
    time_field = "originalTimestamp" if message.get("timestamp") is None else "timestamp"
    sent_at = parse_time(message.get("sentAt"), "sentAt", violations) or batch_sent_at
    when = occurred_at(
        parse_time(message.get(time_field), time_field, violations),
        sent_at,
        received_at,
        violations,
        time_field,
    )
    event = profile_pb2.Event(id=message_id, source=source.name, channel=channel_of(context, source))
    warnings: list[FieldViolation] = []
    if kind == "identify":
        traits, warnings = message_traits.identify_traits(message)
    origins = identifiers.add(event, message, kind, context, violations, previous_id_type, warnings)
    if kind is not None:
        event.type, properties = _type_and_properties(kind, message, properties, violations)
        if kind == "track" and isinstance(message.get("event"), str):
            event.name = message["event"]
        if kind != "identify":
            traits = {}
    if event.type in CART_LINE_EVENTS and not identifiers.bad(violations, "properties"):
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
        warnings.extend(json_sizes.trim(event.context, "context", MAX_CONTEXT_BYTES))
    checked = validation.event_violations(event, now=received_at)
    if traits:
        checked.extend(message_traits.set_traits_violations(traits, source.name))
    if checked:
        return Refused(message_id, [message_field(v, origins, time_field) for v in checked])
    return Translated(event, traits, origins, time_field, _unique(warnings))


def _check_structure(message: Mapping[str, Any], kind: str | None, violations: Violations) -> None:
    """Record the values of the message that can be neither stored nor read back, by their field.

    An identify call's traits are judged one by one (a bad one is dropped, see message_traits); the
    context's traits are read only for identifiers.
    """
    shell = dict(message)
    if kind == "identify":
        shell.pop("traits", None)
    context = shell.get("context")
    if isinstance(context, dict) and "traits" in context:
        shell["context"] = {key: value for key, value in context.items() if key != "traits"}
    for key, value in shell.items():
        check_json_structure(value, key, violations, max_depth=validation.MAX_STRUCT_DEPTH)


def _unique(warnings: list[FieldViolation]) -> list[FieldViolation]:
    seen: set[str] = set()
    result: list[FieldViolation] = []
    for warning in warnings:
        if warning.field not in seen:
            seen.add(warning.field)
            result.append(warning)
    return result


def message_field(
    violation: FieldViolation, origins: list[str], time_field: str = "timestamp"
) -> FieldViolation:
    """A violation on the profile event (paths like "event.identifiers[1].value") on the message's fields.

    origins[k] is the message field identifier k came from; time_field the one its time came from.
    """
    path = violation.field.removeprefix("event").removeprefix(".")
    head, _, rest = path.partition(".")
    match = _IDENTIFIER_PATH.fullmatch(head)
    if match and int(match.group(1)) < len(origins):
        return FieldViolation(origins[int(match.group(1))], violation.description)
    if head == "cart_item":
        return FieldViolation(_CART_FIELDS.get(rest, "properties"), violation.description)
    renamed = time_field if head == "occurred_at" else _RENAMED.get(head, head)
    return FieldViolation(f"{renamed}.{rest}" if rest else renamed, violation.description)


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


def _type_and_properties(
    kind: str, message: Mapping[str, Any], properties: dict[str, Any], violations: Violations
) -> tuple[str, dict[str, Any]]:
    properties = dict(properties)
    if kind == "track":
        name = message.get("event")
        if not isinstance(name, str) or not name.strip():
            violations.add("event", "is required for track, as a non-empty string")
            return "", properties
        if len(name) > MAX_EVENT_NAME:
            violations.add("event", f"must be at most {MAX_EVENT_NAME:,} characters")
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
        group_id = identifiers.id_value(message.get("groupId"), "groupId", violations)
        if group_id is None and not identifiers.bad(violations, "groupId"):
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
    product_id = identifiers.id_value(properties.get("product_id"), "properties.product_id", violations)
    if product_id is None:
        product_id = identifiers.id_value(properties.get("sku"), "properties.sku", violations)
    if product_id is not None:
        item.product_id = product_id
    elif not identifiers.bad(violations, "properties.product_id", "properties.sku"):
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
