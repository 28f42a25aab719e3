"""Building and opening omni.events.v1.Envelope, with the trace context of the work that made the event."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf.message import Message
from opentelemetry import propagate

from omni.events.v1 import envelope_pb2
from omni_kit.errors import FieldViolation, InvalidArgument
from omni_kit.ids import new_id_str

M = TypeVar("M", bound=Message)

BATCH_HEADER = "Omni-Batch"
"""Header of a message holding an omni.events.v1.EnvelopeBatch; its value is the number of envelopes."""


@dataclass(frozen=True, slots=True)
class EncodedEnvelope:
    """An omni.events.v1.Envelope already serialised, with the fields the outbox reads from it.

    For producers that announce thousands of events at once and write their bytes directly (profile's
    ingestion): building a message object per event only to serialise it costs more than the bytes.
    """

    id: str
    type: str
    person_id: str
    trace_context: Mapping[str, str]
    data: bytes


def serialised(envelope: envelope_pb2.Envelope | EncodedEnvelope) -> bytes:
    """The bytes of an envelope, built or already encoded."""
    return envelope.data if isinstance(envelope, EncodedEnvelope) else envelope.SerializeToString()


def subject_for(event_type: str, namespace: str = "omni") -> str:
    """The NATS subject of an event type: "identity.persons_merged" → "omni.events.identity.persons_merged"."""
    return f"{namespace}.events.{event_type}"


def make_envelope(
    payload: Message,
    *,
    event_type: str,
    producer: str,
    person_id: str = "",
    occurred_at: datetime | None = None,
) -> envelope_pb2.Envelope:
    """Wrap a payload in an envelope with a new id and the current trace context."""
    envelope = envelope_pb2.Envelope(id=new_id_str(), type=event_type, person_id=person_id, producer=producer)
    envelope.occurred_at.FromDatetime(occurred_at or datetime.now(UTC))
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    envelope.trace_context.update(carrier)
    envelope.payload.Pack(payload)
    return envelope


DEFAULT_MAX_ENVELOPE_BYTES = 512 * 1024
"""The largest envelope staged by default: half of NATS's default max_payload (1 MiB), leaving room for the
message headers; Runtime lowers it further when the server's max_payload is smaller."""


@dataclass
class EnvelopeTooLarge(InvalidArgument):
    """An event too large to publish was staged: the request is refused and nothing of it is written.

    Its field violation names the request field the event came from, so an RPC answers INVALID_ARGUMENT
    with it; a consumer that stages one treats it as permanent (the event is dead-lettered at once).
    """

    size: int = 0
    limit: int = 0
    reason: str = "EVENT_TOO_LARGE"
    metadata: dict[str, str] = field(default_factory=dict)


def check_envelope_size(
    envelope: envelope_pb2.Envelope | EncodedEnvelope, limit: int, field_path: str
) -> bytes:
    """The envelope's bytes; raises EnvelopeTooLarge naming field_path when they are over limit."""
    data = serialised(envelope)
    if len(data) > limit:
        raise EnvelopeTooLarge(
            message=f"the {envelope.type} event would be {len(data)} bytes; at most {limit} can be published",
            violations=[
                FieldViolation(field_path, f"makes an event of {len(data)} bytes, over the {limit} allowed")
            ],
            metadata={"event_type": envelope.type, "size": str(len(data)), "limit": str(limit)},
            size=len(data),
            limit=limit,
        )
    return data


class PermanentError(ValueError):
    """An event that can never be applied (wrong payload, malformed ids): dead-lettered without retries."""


def unpack(envelope: envelope_pb2.Envelope, message_type: type[M]) -> M:
    """Open the envelope's payload as message_type; a mismatch is a PermanentError."""
    message = message_type()
    if not envelope.payload.Unpack(message):
        raise PermanentError(
            f"event {envelope.id} of type {envelope.type} does not hold {message_type.__name__}"
        )
    return message


_ONE_BYTE = [bytes((n,)) for n in range(128)]


def varint(value: int) -> bytes:
    """A non-negative integer in protobuf's base-128 varint encoding."""
    if value < 128:  # tags and most lengths: one byte, from a table
        return _ONE_BYTE[value]
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """One length-delimited field (a string, bytes or message) in protobuf's wire format."""
    return varint(field_number << 3 | 2) + varint(len(payload)) + payload


def pack_batch(serialized: Sequence[bytes]) -> bytes:
    """An EnvelopeBatch of already serialised envelopes, written without parsing them again.

    Field 1 (envelopes) is length-delimited: tag 0x0A, the length as a varint, the envelope's bytes.
    """
    return b"".join([b"\x0a" + varint(len(envelope)) + envelope for envelope in serialized])


def envelopes_in(data: bytes, headers: Mapping[str, str] | None) -> list[envelope_pb2.Envelope]:
    """The envelopes a published message holds: one, or an EnvelopeBatch's when it has the batch header.

    Raises google.protobuf.message.DecodeError for bytes that are not what the header says.
    """
    if headers and BATCH_HEADER in headers:
        return list(envelope_pb2.EnvelopeBatch.FromString(data).envelopes)
    return [envelope_pb2.Envelope.FromString(data)]
