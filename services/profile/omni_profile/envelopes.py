"""Building many outbox envelopes cheaply: ingestion announces every event, so per-event costs add up.

A batch's envelopes share one trace context (injected once), get their UUIDv7 ids from one read of the
random source, and carry payloads encoded without building Python objects where the bytes are known: a
tracked event's payload is the event as the sender encoded it, with the fields the service sets appended
(for a singular protobuf field the last occurrence wins, so an appended person_id or source replaces the
sender's; a Timestamp is written with both of its fields, so an appended one replaces the sender's whole).
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import Message

from omni_kit.bus import EncodedEnvelope, Outbox
from omni_kit.bus.envelope import length_delimited, varint

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# omni.events.v1.Envelope's field numbers.
_ID, _TYPE, _OCCURRED_AT, _PERSON_ID, _PRODUCER, _TRACE_CONTEXT, _PAYLOAD = 1, 2, 3, 4, 5, 6, 7
_MICROSECOND = timedelta(microseconds=1)
_VARIANT = 1 << 63
_RANDOM_BITS = (1 << 62) - 1


def new_ids(count: int) -> list[str]:
    """`count` UUIDv7 strings of this millisecond, in increasing order (a 12-bit sequence, then 62 random bits)."""
    millis = time.time_ns() // 1_000_000
    head = f"{millis:012x}"
    first, second = head[:8], head[8:12]
    randomness = os.urandom(8 * count)
    ids = []
    for index in range(count):
        tail = int.from_bytes(randomness[8 * index : 8 * index + 8], "big") & _RANDOM_BITS | _VARIANT
        text = f"{tail:016x}"
        ids.append(f"{first}-{second}-7{index & 0xFFF:03x}-{text[:4]}-{text[4:]}")
    return ids


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp of an aware datetime (cheaper than Timestamp.FromDatetime)."""
    micros = (moment - _EPOCH) // _MICROSECOND
    return timestamp_pb2.Timestamp(seconds=micros // 1_000_000, nanos=micros % 1_000_000 * 1000)


def timestamp_field(field_number: int, moment: datetime) -> bytes:
    """A Timestamp field with both seconds and nanos written, so that it replaces an earlier occurrence."""
    micros = (moment - _EPOCH) // _MICROSECOND
    seconds, nanos = micros // 1_000_000, micros % 1_000_000 * 1000
    body = b"\x08" + varint(seconds & 0xFFFFFFFFFFFFFFFF) + b"\x10" + varint(nanos)
    return length_delimited(field_number, body)


class EnvelopeBatch:
    """Envelopes of one producer built in bulk, with the trace context of the work at hand.

    Written as bytes (omni.events.v1.Envelope's wire format): the parts all envelopes of a batch share
    (type, producer, trace context, payload type) are encoded once.
    """

    def __init__(self, outbox: Outbox) -> None:
        template = outbox.envelope(any_pb2.Any(), event_type="")
        self._producer = length_delimited(_PRODUCER, template.producer.encode())
        self._trace_context = dict(template.trace_context)
        self._trace_bytes = b"".join(
            length_delimited(
                _TRACE_CONTEXT, length_delimited(1, key.encode()) + length_delimited(2, value.encode())
            )
            for key, value in self._trace_context.items()
        )

    def wrap(
        self,
        ids: Sequence[str],
        event_type: str,
        payloads: Sequence[tuple[str, bytes, datetime | None]],
        type_url: str,
    ) -> list[EncodedEnvelope]:
        """Envelopes around encoded payloads: (person_id, payload bytes, occurred_at or None for now)."""
        kind = length_delimited(_TYPE, event_type.encode())
        shared = self._producer + self._trace_bytes
        any_type = length_delimited(1, type_url.encode())
        now = timestamp_field(_OCCURRED_AT, datetime.now(UTC))
        envelopes = []
        for envelope_id, (person_id, payload, occurred_at) in zip(ids, payloads, strict=True):
            data = b"".join(
                (
                    length_delimited(_ID, envelope_id.encode()),
                    kind,
                    now if occurred_at is None else timestamp_field(_OCCURRED_AT, occurred_at),
                    length_delimited(_PERSON_ID, person_id.encode()) if person_id else b"",
                    shared,
                    length_delimited(_PAYLOAD, any_type + length_delimited(2, payload)),
                )
            )
            envelopes.append(EncodedEnvelope(envelope_id, event_type, person_id, self._trace_context, data))
        return envelopes


# google.protobuf.Value's fields, tag bytes included: null_value = 1 (enum), number_value = 2 (double),
# string_value = 3, bool_value = 4, struct_value = 5, list_value = 6. A oneof member is written even when it
# holds its type's default (0, false, "").
_NULL = b"\x08\x00"
_NUMBER = b"\x11"
_TRUE, _FALSE = b"\x20\x01", b"\x20\x00"
_DOUBLE = struct.Struct("<d")


def struct_bytes(fields: Mapping[str, Any]) -> bytes:
    """A google.protobuf.Struct of JSON-like values, encoded (what Struct.update then SerializeToString
    write, without building the message): fields = 1, a map entry per key (key = 1, value = 2)."""
    return b"".join(
        [
            length_delimited(1, length_delimited(1, key.encode()) + _value_field(value))
            for key, value in fields.items()
        ]
    )


def _value_field(value: Any) -> bytes:
    return length_delimited(2, _value(value))


def _value(value: Any) -> bytes:
    if value is None:
        return _NULL
    if value is True:
        return _TRUE
    if value is False:
        return _FALSE
    if isinstance(value, str):
        return length_delimited(3, value.encode())
    if isinstance(value, int | float):
        return _NUMBER + _DOUBLE.pack(float(value))
    if isinstance(value, Mapping):
        return length_delimited(5, struct_bytes(value))
    if isinstance(value, list | tuple):
        return length_delimited(6, b"".join([length_delimited(1, _value(item)) for item in value]))
    raise ValueError(f"a Struct cannot hold a {type(value).__name__}")


def type_url(message: type[Message]) -> str:
    """The Any type URL of a message type."""
    return "type.googleapis.com/" + message.DESCRIPTOR.full_name
