"""Checks of incoming events: every problem becomes a field violation with its path.

These look at protobuf messages but know nothing of gRPC; the servicer calls them before anything is
written. An event's violations have paths relative to the event ("occurred_at"), so a batch can report them
per event and TrackEvent can prefix them with "event.". SetTraits is checked here too (identify calls carry
traits); the checks of the other requests are in request_validation.py.
"""

from __future__ import annotations

import functools
import re
import uuid
from datetime import datetime, timedelta

import orjson
from google.protobuf import struct_pb2

from omni.common.v1 import common_pb2
from omni.profile.v1 import profile_pb2
from omni_kit.errors import (
    MAX_JSON_DEPTH,
    FieldViolation,
    Violations,
    check_json_structure,
    check_json_text,
    has_control_characters,
)
from omni_kit.event_types import EVENT_TYPE_RULE, MAX_EVENT_TYPE, SNAKE_CASE, is_event_type
from omni_kit.idempotency import check_request_id
from omni_profile import wire
from omni_profile.domain import CART_LINE_EVENTS
from omni_profile.trait_schema import trait_problems

MAX_BATCH = 1000
MAX_EVENT_ID = 128
MAX_EVENT_NAME = 1024
MAX_PROPERTIES_BYTES = 32 * 1024
MAX_TRAITS_BYTES = 32 * 1024
MAX_CONTEXT_BYTES = 8 * 1024
MAX_STRUCT_DEPTH = MAX_JSON_DEPTH
"""Levels of objects and arrays properties, context and traits may nest (themselves the first): the most a
GetProfile answer, which holds them three messages deep, can be decoded with."""
MAX_TRAIT_NAME = 128
MAX_PRODUCT_ID = 128
MAX_PRODUCT_NAME = 512
# Units of one product in one cart event; far beyond any real order, and the cart's sums stay in 64 bits.
MAX_QUANTITY = 1_000_000
MAX_SOURCE = 64
MAX_IDENTIFIER_TYPE = 64
MAX_IDENTIFIER_VALUE = 1024
MAX_FUTURE = timedelta(days=1)
MAX_PAST = timedelta(days=5 * 365 + 1)

_CURRENCY = re.compile(r"^[A-Z]{3}$")
_TIMESTAMP_MIN_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z, the protobuf Timestamp range
_TIMESTAMP_MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
# Compact JSON of a Struct is at most six times its protobuf encoding (a control character in a string is
# written \u0001; quotes, separators and numbers written out take less), so a small encoding needs no exact
# measure.
_JSON_GROWTH = 6


def json_size(struct: struct_pb2.Struct) -> int:
    """The size of a Struct as compact JSON, in UTF-8 bytes (an "é" is two, not the six of "\\u00e9"): how
    properties and traits are measured and stored. The Struct holds finite numbers only."""
    return len(orjson.dumps(wire.struct_to_dict(struct)))


def json_size_over(struct: struct_pb2.Struct, limit: int) -> bool:
    """Whether a Struct is over limit bytes as compact JSON; measured only when its encoding is not small."""
    return struct.ByteSize() * _JSON_GROWTH > limit and json_size(struct) > limit


def check_struct(struct: struct_pb2.Struct, path: str, limit: int, violations: Violations) -> None:
    """Record a violation unless a Struct can be stored and read back (finite numbers, nesting at most
    MAX_STRUCT_DEPTH levels) and is at most limit bytes as JSON."""
    before = len(violations.items)
    check_json_structure(struct, path, violations, max_depth=MAX_STRUCT_DEPTH)
    if len(violations.items) == before and json_size_over(struct, limit):
        violations.add(path, f"must be at most {limit // 1024} KiB as JSON (UTF-8)")


def is_currency(code: str) -> bool:
    """Whether code looks like an ISO 4217 currency code."""
    return _CURRENCY.fullmatch(code) is not None


def check_person_id(value: str, path: str, violations: Violations, *, required: bool = True) -> bool:
    """Record a violation unless value is a person id (a UUID); an empty value is fine when not required."""
    if not value:
        if required:
            violations.add(path, "is required")
            return False
        return True
    try:
        uuid.UUID(value)
    except ValueError:
        violations.add(path, "must be a person id (a UUID)")
        return False
    return True


_CHANNELS = frozenset(common_pb2.Channel.values())


def check_channel(value: int, path: str, violations: Violations, *, required: bool) -> None:
    """Record a violation for an unknown channel, or a missing one when required."""
    if value not in _CHANNELS:
        violations.add(path, f"unknown channel {value}")
    elif required and value == common_pb2.CHANNEL_UNSPECIFIED:
        violations.add(path, "is required")


def check_timestamp_range(seconds: int, nanos: int, path: str, violations: Violations) -> bool:
    """Record a violation unless the Timestamp fields are inside protobuf's valid range."""
    if not (_TIMESTAMP_MIN_SECONDS <= seconds <= _TIMESTAMP_MAX_SECONDS and 0 <= nanos < 1_000_000_000):
        violations.add(path, "is not a valid timestamp")
        return False
    return True


@functools.lru_cache(maxsize=256)
def _snake_case(name: str) -> bool:
    # A few sources send almost every event: remember the answer rather than match each time.
    return SNAKE_CASE.fullmatch(name) is not None  # match() with $ would let a final line break through


def check_source(value: str, path: str, violations: Violations) -> None:
    """Record a violation unless value is empty or a lower snake case source name of at most 64 characters."""
    if value and (len(value) > MAX_SOURCE or not _snake_case(value)):
        violations.add(path, f"must be lower snake case, at most {MAX_SOURCE} characters, e.g. web_sdk")


def event_violations(event: profile_pb2.Event, *, now: datetime) -> list[FieldViolation]:
    """Everything wrong with one event, with paths relative to it."""
    violations = Violations()
    if not event.id:
        violations.add("id", "is required")
    elif len(event.id) > MAX_EVENT_ID:
        violations.add("id", f"must be at most {MAX_EVENT_ID} characters")
    elif has_control_characters(event.id):
        violations.add("id", "holds control characters")
    if not event.type:
        violations.add("type", "is required")
    elif len(event.type) > MAX_EVENT_TYPE:
        violations.add("type", f"must be at most {MAX_EVENT_TYPE} characters")
    elif not is_event_type(event.type):
        violations.add("type", EVENT_TYPE_RULE)
    if len(event.name) > MAX_EVENT_NAME:
        violations.add("name", f"must be at most {MAX_EVENT_NAME:,} characters")
    elif has_control_characters(event.name):
        violations.add("name", "holds control characters")
    check_channel(event.channel, "channel", violations, required=False)
    check_source(event.source, "source", violations)
    if not event.person_id and not event.identifiers:
        violations.add("identifiers", "at least one identifier is required unless person_id is set")
    check_person_id(event.person_id, "person_id", violations, required=False)
    for index, identifier in enumerate(event.identifiers):
        path = f"identifiers[{index}]"
        # Identity refuses control characters too, but it is not asked when the event names its person.
        if not identifier.type:
            violations.add(f"{path}.type", "is required")
        elif len(identifier.type) > MAX_IDENTIFIER_TYPE:
            violations.add(f"{path}.type", f"must be at most {MAX_IDENTIFIER_TYPE} characters")
        elif has_control_characters(identifier.type):
            violations.add(f"{path}.type", "holds control characters")
        if not identifier.value.strip():
            violations.add(f"{path}.value", "is required")
        elif len(identifier.value) > MAX_IDENTIFIER_VALUE:
            violations.add(f"{path}.value", f"must be at most {MAX_IDENTIFIER_VALUE} characters")
        elif has_control_characters(identifier.value):
            violations.add(f"{path}.value", "holds control characters")
    if event.HasField("occurred_at"):
        _check_occurred_at(event, violations, now)
    if event.HasField("properties"):
        check_struct(event.properties, "properties", MAX_PROPERTIES_BYTES, violations)
    if event.HasField("context"):
        check_struct(event.context, "context", MAX_CONTEXT_BYTES, violations)
    if event.HasField("traits"):
        check_traits(event.traits, "traits", violations)
    if event.type in CART_LINE_EVENTS:
        if not event.HasField("cart_item"):
            violations.add("cart_item", f"is required for {event.type}")
        else:
            _check_cart_item(event.cart_item, "cart_item", violations)
    elif event.HasField("cart_item"):
        _check_cart_item(event.cart_item, "cart_item", violations)
    return violations.items


def _check_occurred_at(event: profile_pb2.Event, violations: Violations, now: datetime) -> None:
    stamp = event.occurred_at
    if not check_timestamp_range(stamp.seconds, stamp.nanos, "occurred_at", violations):
        return
    occurred_at = stamp.ToDatetime(tzinfo=now.tzinfo)
    if occurred_at > now + MAX_FUTURE:
        violations.add("occurred_at", "must not be more than 1 day in the future")
    elif occurred_at < now - MAX_PAST:
        violations.add("occurred_at", "must not be more than 5 years in the past")


def _check_cart_item(item: common_pb2.CartItem, path: str, violations: Violations) -> None:
    if not item.product_id:
        violations.add(f"{path}.product_id", "is required")
    elif len(item.product_id) > MAX_PRODUCT_ID:
        violations.add(f"{path}.product_id", f"must be at most {MAX_PRODUCT_ID} characters")
    elif has_control_characters(item.product_id):
        violations.add(f"{path}.product_id", "holds control characters")
    if len(item.name) > MAX_PRODUCT_NAME:
        violations.add(f"{path}.name", f"must be at most {MAX_PRODUCT_NAME} characters")
    elif has_control_characters(item.name):
        violations.add(f"{path}.name", "holds control characters")
    if item.quantity < 1:
        violations.add(f"{path}.quantity", "must be at least 1")
    elif item.quantity > MAX_QUANTITY:
        violations.add(f"{path}.quantity", f"must be at most {MAX_QUANTITY:,}")
    if item.HasField("unit_price"):
        if item.unit_price.amount_minor < 0:
            violations.add(f"{path}.unit_price.amount_minor", "must not be negative")
        if not is_currency(item.unit_price.currency_code):
            violations.add(f"{path}.unit_price.currency_code", "must be an ISO 4217 code such as EUR")


def validate_event(event: profile_pb2.Event, prefix: str, violations: Violations, *, now: datetime) -> None:
    """Add one event's violations to `violations` under prefix (e.g. "event" or "events[3]")."""
    for violation in event_violations(event, now=now):
        violations.add(f"{prefix}.{violation.field}" if violation.field else prefix, violation.description)


def validate_track_event(request: profile_pb2.TrackEventRequest, *, now: datetime) -> None:
    """Check a TrackEvent request; raise InvalidArgument with every violation (under "event.")."""
    violations = Violations()
    if not request.HasField("event"):
        violations.add("event", "is required")
    else:
        validate_event(request.event, "event", violations, now=now)
    violations.raise_if_any("the event is invalid")


def validate_batch(request: profile_pb2.BatchTrackEventsRequest) -> None:
    """Check a batch as a whole (not its events, which are judged one by one): 1 to 1000 events."""
    violations = Violations()
    if not request.events:
        violations.add("events", "at least one event is required")
    elif len(request.events) > MAX_BATCH:
        violations.add("events", f"at most {MAX_BATCH} events per batch")
    violations.raise_if_any("the batch is malformed; none of it was recorded")


def check_traits(traits: struct_pb2.Struct, path: str, violations: Violations) -> None:
    """Record what is wrong with traits to set: at least one, names of 1 to 128 characters, at most 32 KiB as
    JSON, nested at most MAX_STRUCT_DEPTH levels, finite numbers, no control characters, known traits of their
    type (a violation at "<path>.<name>")."""
    if not traits.fields:
        violations.add(path, "at least one trait is required")
    for name in traits.fields:
        if not name.strip():
            violations.add(path, "trait names must not be empty")
        elif len(name) > MAX_TRAIT_NAME:
            violations.add(path, f"trait name {name[:32]}… is longer than {MAX_TRAIT_NAME} characters")
    before = len(violations.items)
    check_struct(traits, path, MAX_TRAITS_BYTES, violations)
    if len(violations.items) == before:
        check_json_text(traits, path, violations)
    for name, problem in sorted(trait_problems(wire.struct_to_dict(traits)).items()):
        violations.add(f"{path}.{name}", problem)


def validate_set_traits(request: profile_pb2.SetTraitsRequest) -> str:
    """Check a SetTraits request, known traits' types included (a violation at "traits.<name>"); return its
    request id ("" for none)."""
    violations = Violations()
    request_id = check_request_id(request.request_id, violations)
    check_person_id(request.person_id, "person_id", violations)
    check_traits(request.traits, "traits", violations)
    if len(request.source) > MAX_SOURCE:
        violations.add("source", f"must be at most {MAX_SOURCE} characters")
    elif has_control_characters(request.source):
        violations.add("source", "holds control characters")
    violations.raise_if_any()
    return request_id
