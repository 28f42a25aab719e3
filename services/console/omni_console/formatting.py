"""How values look on the pages: times, channels, enum names, struct values."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from omni.common.v1 import common_pb2

CHANNEL_ICONS = {
    "web": "🌐",
    "app": "📱",
    "email": "✉️",
    "sms": "💬",
    "push": "🔔",
    "store": "🏬",
    "call_center": "☎️",
    "webhook": "🔗",
}


def when(stamp: Timestamp | None) -> datetime | None:
    """A protobuf timestamp as an aware datetime; None when unset."""
    if stamp is None or (stamp.seconds == 0 and stamp.nanos == 0):
        return None
    return stamp.ToDatetime(tzinfo=UTC)


def shown_time(moment: datetime | None) -> str:
    """A time as the pages show it (UTC, to the second)."""
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def enum_name(enum: EnumTypeWrapper, value: int, prefix: str) -> str:
    """An enum value's name without its prefix, lower case ("CHANNEL_WEB" → "web")."""
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:
        return str(value)


def channel_name(value: int) -> str:
    """A channel's name ("web", "store" …)."""
    return enum_name(common_pb2.Channel, value, "CHANNEL_")


def channel_icon(name: str) -> str:
    """The channel's icon (an emoji; the pages show the name beside it)."""
    return CHANNEL_ICONS.get(name, "•")


def plain(message: Message) -> Any:
    """A message (a Struct, a Value) as plain Python."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def value_text(value: Any) -> str:
    """A trait or property value as text."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def money_text(amount_minor: int, currency: str) -> str:
    """An amount in minor units as text, e.g. 59.90 EUR (two decimals; enough for the pages)."""
    return f"{amount_minor / 100:.2f} {currency}"
