"""Translation between the protobuf contract (omni.profile.v1) and profile's domain objects."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from omni.common.v1 import common_pb2
from omni.profile.v1 import profile_pb2
from omni_kit.errors import listed
from omni_profile import envelopes
from omni_profile.domain import (
    DEFAULT_SOURCE,
    DUPLICATE,
    ID_REUSED,
    RECORDED,
    REJECTED,
    CartLine,
    Consent,
    Event,
    Identifier,
    Profile,
    TrackResult,
    TraitChange,
)

_OCCURRED_AT = profile_pb2.Event.OCCURRED_AT_FIELD_NUMBER
_PERSON_ID = profile_pb2.Event.PERSON_ID_FIELD_NUMBER
_RECEIVE_TIME = profile_pb2.Event.RECEIVE_TIME_FIELD_NUMBER
_CHANNEL_PREFIX = "CHANNEL_"
_CONSENT_PREFIX = "CONSENT_STATE_"
_PURPOSE_PREFIX = "CONSENT_PURPOSE_"
_OPT_IN_PREFIX = "DOUBLE_OPT_IN_STATE_"

KNOWN_CHANNELS = frozenset(common_pb2.Channel.values())
"""The channel numbers this build knows; a newer sender's unknown channel is not one of them."""

_CHANNEL_NAMES = {
    value: common_pb2.Channel.Name(value).removeprefix(_CHANNEL_PREFIX).lower()  # type: ignore[arg-type]
    for value in common_pb2.Channel.values()
    if value != common_pb2.CHANNEL_UNSPECIFIED
}
_CHANNEL_VALUES = {name: value for value, name in _CHANNEL_NAMES.items()}
_STATUS = {
    RECORDED: profile_pb2.TRACK_STATUS_RECORDED,
    DUPLICATE: profile_pb2.TRACK_STATUS_DUPLICATE,
    REJECTED: profile_pb2.TRACK_STATUS_REJECTED,
    ID_REUSED: profile_pb2.TRACK_STATUS_ID_REUSED,
}


def channel_name(value: int) -> str | None:
    """The stored name of a channel ("web", "call_center"); None for CHANNEL_UNSPECIFIED (or unknown)."""
    return _CHANNEL_NAMES.get(value)


def channel_value(name: str | None) -> common_pb2.Channel.ValueType:
    """The protobuf channel of a stored name; unknown names read as CHANNEL_UNSPECIFIED."""
    return _CHANNEL_VALUES.get(name or "", common_pb2.CHANNEL_UNSPECIFIED)


def _enum_name(enum: Any, prefix: str, value: int) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower()


def _enum_value(enum: Any, prefix: str, name: str | None) -> Any:
    try:
        return enum.Value(prefix + (name or "unspecified").upper())
    except ValueError:
        return 0


def consent_state_name(value: int) -> str:
    """The stored name of a consent state ("granted", "denied", "revoked")."""
    return _enum_name(profile_pb2.ConsentState, _CONSENT_PREFIX, value)


def consent_state_value(name: str) -> profile_pb2.ConsentState.ValueType:
    """The protobuf consent state of a stored name."""
    return _enum_value(profile_pb2.ConsentState, _CONSENT_PREFIX, name)  # type: ignore[no-any-return]


def purpose_name(value: int) -> str | None:
    """The stored name of a consent purpose ("marketing" …); None when unspecified."""
    return None if value == 0 else _enum_name(profile_pb2.ConsentPurpose, _PURPOSE_PREFIX, value)


def double_opt_in_name(value: int) -> str | None:
    """The stored name of a double opt-in state; None when unspecified."""
    return None if value == 0 else _enum_name(profile_pb2.DoubleOptInState, _OPT_IN_PREFIX, value)


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp of an aware datetime."""
    return envelopes.timestamp(value)


def _value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_value(v) for v in value.list_value.values]
    return None


class StructProperties(Mapping[str, Any]):
    """An event's properties read from its protobuf Struct key by key, as they are asked for: ingestion reads
    one or two of them (a category, a revenue) and stores the event in its encoding."""

    __slots__ = ("_fields", "_read")

    def __init__(self, struct: struct_pb2.Struct) -> None:
        self._fields = struct.fields
        self._read: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        try:
            return self._read[key]
        except KeyError:
            pass
        # get, not []: indexing a message map adds the key.
        found = self._fields.get(key)
        if found is None:
            raise KeyError(key)
        value = self._read[key] = _value(found)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain JSON values (integral numbers as ints, nulls as None)."""
    return {name: _value(value) for name, value in struct.fields.items()}


def value_to_python(value: struct_pb2.Value) -> Any:
    """A protobuf Value as a plain JSON value."""
    return _value(value)


def dict_to_struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    """Plain JSON values as a Struct."""
    struct = struct_pb2.Struct()
    struct.update(dict(values))
    return struct


def python_to_value(value: Any) -> struct_pb2.Value:
    """A plain JSON value as a protobuf Value (None as null)."""
    message = struct_pb2.Value()
    if value is None:
        message.null_value = struct_pb2.NULL_VALUE
    else:
        struct = struct_pb2.Struct()
        struct.update({"v": value})
        message.CopyFrom(struct.fields["v"])
    return message


def cart_line_from_proto(item: common_pb2.CartItem) -> CartLine:
    """A cart line from the CartItem an event carries."""
    has_price = item.HasField("unit_price")
    return CartLine(
        product_id=item.product_id,
        quantity=item.quantity,
        name=item.name,
        unit_price_minor=item.unit_price.amount_minor if has_price else None,
        currency_code=item.unit_price.currency_code if has_price else None,
    )


def cart_line_to_proto(line: CartLine) -> common_pb2.CartItem:
    """The CartItem of a cart line."""
    item = common_pb2.CartItem(product_id=line.product_id, name=line.name, quantity=line.quantity)
    if line.unit_price_minor is not None:
        item.unit_price.CopyFrom(
            common_pb2.Money(amount_minor=line.unit_price_minor, currency_code=line.currency_code or "")
        )
    return item


def cart_to_proto(lines: Iterable[CartLine]) -> common_pb2.Cart:
    """The Cart of some lines."""
    return common_pb2.Cart(items=[cart_line_to_proto(line) for line in lines])


def event_from_proto(
    message: profile_pb2.Event, *, received_at: datetime, derived_time: bool = False
) -> Event:
    """A domain event from a checked protobuf event; occurred_at defaults to the receive time.

    The event is re-encoded from the fields this build knows: whatever else the sender's encoding held
    (unknown fields, at any depth) is discarded from `message`, so it is neither stored nor announced. Its
    fingerprint is a hash of that encoding (deterministic: map entries in key order) without receive_time,
    which the service sets, and without occurred_at when the sender left it out or when `derived_time` says
    the service derived it (the Segment endpoint corrects it for the sender's clock, differently on each
    retry): the content a resend of the same id must repeat.
    """
    message.DiscardUnknownFields()
    if message.HasField("receive_time"):
        message.ClearField("receive_time")
    if not message.source:
        message.source = DEFAULT_SOURCE
    given = message.HasField("occurred_at")
    occurred_at = message.occurred_at.ToDatetime(tzinfo=UTC) if given else received_at
    if given and derived_time:
        derived = timestamp_pb2.Timestamp()
        derived.CopyFrom(message.occurred_at)
        message.ClearField("occurred_at")
        content = message.SerializeToString(deterministic=True)
        message.occurred_at.CopyFrom(derived)
        origin = content + envelopes.length_delimited(_OCCURRED_AT, derived.SerializeToString())
    else:
        content = message.SerializeToString(deterministic=True)
        origin = content if given else content + envelopes.timestamp_field(_OCCURRED_AT, occurred_at)
    return Event(
        id=message.id,
        type=message.type,
        channel=_CHANNEL_NAMES.get(message.channel),
        occurred_at=occurred_at,
        received_at=received_at,
        identifiers=[Identifier(type=i.type, value=i.value) for i in message.identifiers],
        properties=StructProperties(message.properties) if message.HasField("properties") else {},
        cart_item=cart_line_from_proto(message.cart_item) if message.HasField("cart_item") else None,
        person_id=uuid.UUID(message.person_id) if message.person_id else None,
        source=message.source,
        origin=origin,
        fingerprint=hashlib.sha256(content).digest(),
    )


def stored_event_bytes(event: Event) -> bytes:
    """The event as stored, encoded as omni.profile.v1.Event without person_id (set it on the event)."""
    if event.encoded is None:
        if event.origin is not None:
            event.encoded = event.origin + envelopes.timestamp_field(_RECEIVE_TIME, event.received_at)
        else:
            message = event_to_proto(event)
            message.ClearField("person_id")
            event.encoded = message.SerializeToString()
    return event.encoded


def stored_properties(encoded: bytes) -> dict[str, Any]:
    """The properties of an event from its stored encoding (see stored_event_bytes)."""
    message = profile_pb2.Event.FromString(encoded)
    return struct_to_dict(message.properties) if message.HasField("properties") else {}


def tracked_event_bytes(event: Event) -> bytes:
    """The encoded EventTrackedEvent of a stored event."""
    person = envelopes.length_delimited(_PERSON_ID, str(event.person_id).encode())
    return envelopes.length_delimited(1, stored_event_bytes(event) + person)


def event_to_proto(event: Event) -> profile_pb2.Event:
    """The protobuf event of a stored one (from its encoding, when it was read with it)."""
    if event.encoded is not None and event.person_id is not None:
        person = envelopes.length_delimited(_PERSON_ID, str(event.person_id).encode())
        return profile_pb2.Event.FromString(event.encoded + person)
    message = profile_pb2.Event(
        id=event.id,
        type=event.type,
        channel=_CHANNEL_VALUES.get(event.channel or "", common_pb2.CHANNEL_UNSPECIFIED),
        identifiers=[common_pb2.Identifier(type=i.type, value=i.value) for i in event.identifiers],
        occurred_at=timestamp(event.occurred_at),
        receive_time=timestamp(event.received_at),
        person_id=str(event.person_id) if event.person_id else "",
        source=event.source,
    )
    if event.properties:
        message.properties.update(event.properties)
    if event.cart_item is not None:
        message.cart_item.CopyFrom(cart_line_to_proto(event.cart_item))
    return message


def track_result_to_proto(result: TrackResult) -> profile_pb2.TrackEventResponse:
    """The answer for one tracked event."""
    response = profile_pb2.TrackEventResponse(
        person_id="" if result.person_id is None else str(result.person_id),
        duplicate=result.duplicate,
        status=_STATUS[result.status],
        reason=result.reason,
    )
    for v in listed(result.violations):
        response.field_violations.add(field=v.field, description=v.description)
    return response


def consent_to_proto(consent: Consent) -> profile_pb2.Consent:
    """The protobuf consent of a stored one."""
    return profile_pb2.Consent(
        channel=channel_value(consent.channel),
        state=consent_state_value(consent.state),
        source=consent.source,
        update_time=timestamp(consent.updated_at),
        purpose=_enum_value(profile_pb2.ConsentPurpose, _PURPOSE_PREFIX, consent.purpose),
        double_opt_in=_enum_value(profile_pb2.DoubleOptInState, _OPT_IN_PREFIX, consent.double_opt_in),
        contact_allowed=consent.contact_allowed,
    )


def trait_change_to_proto(change: TraitChange) -> profile_pb2.TraitChange:
    """The protobuf trait change of a stored one."""
    return profile_pb2.TraitChange(
        trait_name=change.name,
        old_value=python_to_value(change.old_value),
        new_value=python_to_value(change.new_value),
        source=change.source,
        change_time=timestamp(change.changed_at),
    )


def profile_to_proto(profile: Profile) -> profile_pb2.Profile:
    """The protobuf 360 view of a profile."""
    message = profile_pb2.Profile(
        person_id=str(profile.person_id),
        traits=dict_to_struct(profile.traits),
        cart=cart_to_proto(profile.cart),
        consents=[consent_to_proto(c) for c in profile.consents],
        recent_events=[event_to_proto(e) for e in profile.recent_events],
        event_count=profile.event_count,
        computed_traits=dict_to_struct(profile.computed_traits),
        segments=[
            profile_pb2.SegmentMembership(
                segment_id=s.segment_id, segment_name=s.segment_name, enter_time=timestamp(s.entered_at)
            )
            for s in profile.segments
        ],
    )
    for name, trait in profile.trait_details.items():
        message.trait_metadata[name].source = trait.source
        message.trait_metadata[name].update_time.CopyFrom(timestamp(trait.updated_at))
    return message
