"""Translation between the protobuf contract (omni.profile.v1) and profile's domain objects."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from omni.common.v1 import common_pb2
from omni.profile.v1 import profile_pb2
from omni_profile.domain import CartLine, Consent, Event, Identifier, Profile

_CHANNEL_PREFIX = "CHANNEL_"
_CONSENT_PREFIX = "CONSENT_STATE_"

KNOWN_CHANNELS = frozenset(common_pb2.Channel.values())
"""The channel numbers this build knows; a newer sender's unknown channel is not one of them."""


def channel_name(value: int) -> str | None:
    """The stored name of a channel ("web", "call_center"); None for CHANNEL_UNSPECIFIED."""
    if value == common_pb2.CHANNEL_UNSPECIFIED:
        return None
    return common_pb2.Channel.Name(value).removeprefix(_CHANNEL_PREFIX).lower()  # type: ignore[arg-type]


def channel_value(name: str | None) -> common_pb2.Channel.ValueType:
    """The protobuf channel of a stored name; unknown names read as CHANNEL_UNSPECIFIED."""
    if not name:
        return common_pb2.CHANNEL_UNSPECIFIED
    try:
        return common_pb2.Channel.Value(_CHANNEL_PREFIX + name.upper())
    except ValueError:
        return common_pb2.CHANNEL_UNSPECIFIED


def consent_state_name(value: int) -> str:
    """The stored name of a consent state ("granted", "denied", "revoked")."""
    return profile_pb2.ConsentState.Name(value).removeprefix(_CONSENT_PREFIX).lower()  # type: ignore[arg-type]


def consent_state_value(name: str) -> profile_pb2.ConsentState.ValueType:
    """The protobuf consent state of a stored name."""
    try:
        return profile_pb2.ConsentState.Value(_CONSENT_PREFIX + name.upper())
    except ValueError:
        return profile_pb2.CONSENT_STATE_UNSPECIFIED


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp of an aware datetime."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain JSON values (integral numbers as ints, nulls as None)."""
    return dict(json_format.MessageToDict(struct))


def dict_to_struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    """Plain JSON values as a Struct."""
    struct = struct_pb2.Struct()
    struct.update(dict(values))
    return struct


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


def event_from_proto(message: profile_pb2.Event, *, received_at: datetime) -> Event:
    """A domain event from a validated protobuf event; occurred_at defaults to the receive time."""
    occurred_at = (
        message.occurred_at.ToDatetime(tzinfo=UTC) if message.HasField("occurred_at") else received_at
    )
    return Event(
        id=message.id,
        type=message.type,
        channel=channel_name(message.channel),
        occurred_at=occurred_at,
        received_at=received_at,
        identifiers=[Identifier(type=i.type, value=i.value) for i in message.identifiers],
        properties=struct_to_dict(message.properties) if message.HasField("properties") else {},
        cart_item=cart_line_from_proto(message.cart_item) if message.HasField("cart_item") else None,
        person_id=uuid.UUID(message.person_id) if message.person_id else None,
    )


def event_to_proto(event: Event) -> profile_pb2.Event:
    """The protobuf event of a stored one."""
    message = profile_pb2.Event(
        id=event.id,
        type=event.type,
        channel=channel_value(event.channel),
        identifiers=[common_pb2.Identifier(type=i.type, value=i.value) for i in event.identifiers],
        occurred_at=timestamp(event.occurred_at),
        receive_time=timestamp(event.received_at),
        person_id=str(event.person_id) if event.person_id else "",
    )
    if event.properties:
        message.properties.CopyFrom(dict_to_struct(event.properties))
    if event.cart_item is not None:
        message.cart_item.CopyFrom(cart_line_to_proto(event.cart_item))
    return message


def consent_to_proto(consent: Consent) -> profile_pb2.Consent:
    """The protobuf consent of a stored one."""
    return profile_pb2.Consent(
        channel=channel_value(consent.channel),
        state=consent_state_value(consent.state),
        source=consent.source,
        update_time=timestamp(consent.updated_at),
    )


def profile_to_proto(profile: Profile) -> profile_pb2.Profile:
    """The protobuf 360 view of a profile."""
    return profile_pb2.Profile(
        person_id=str(profile.person_id),
        traits=dict_to_struct(profile.traits),
        cart=cart_to_proto(profile.cart),
        consents=[consent_to_proto(c) for c in profile.consents],
        recent_events=[event_to_proto(e) for e in profile.recent_events],
        event_count=profile.event_count,
    )
