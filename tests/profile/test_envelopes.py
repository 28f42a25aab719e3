"""Profile's envelopes written as bytes are the envelopes the message classes would build."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from google.protobuf import struct_pb2
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from omni.events.v1 import envelope_pb2
from omni.profile.v1 import events_pb2
from omni_kit.bus import Outbox
from omni_profile import events
from omni_profile.domain import CartLine
from omni_profile.envelopes import EnvelopeBatch, new_ids, struct_bytes, type_url
from omni_profile.wire import StructProperties


def test_wrapped_bytes_parse_to_the_envelope_the_message_classes_build() -> None:
    outbox = Outbox("profile", namespace="t")
    tracer = TracerProvider().get_tracer("test")
    with trace.use_span(tracer.start_span("ingest"), end_on_exit=True):
        batch = EnvelopeBatch(outbox)
    payloads = [
        events_pb2.ProfileChangedEvent(person_id=str(uuid.uuid4()), changed=["cart"]),
        events_pb2.ProfileChangedEvent(person_id="", changed=["traits"] * 200),  # a payload over 127 bytes
    ]
    moment = datetime(2026, 11, 22, 10, 30, 15, 123456, tzinfo=UTC)
    ids = new_ids(len(payloads))
    wrapped = batch.wrap(
        ids,
        "profile.profile_changed",
        [
            (payloads[0].person_id, payloads[0].SerializeToString(), moment),
            ("", payloads[1].SerializeToString(), None),
        ],
        type_url(events_pb2.ProfileChangedEvent),
    )

    first, second = (envelope_pb2.Envelope.FromString(w.data) for w in wrapped)
    expected = envelope_pb2.Envelope(
        id=ids[0], type="profile.profile_changed", person_id=payloads[0].person_id, producer="profile"
    )
    expected.occurred_at.FromDatetime(moment)
    expected.trace_context.update(first.trace_context)
    expected.payload.Pack(payloads[0])
    assert first == expected
    assert "traceparent" in first.trace_context  # the span current when the batch began
    assert (wrapped[0].id, wrapped[0].type, wrapped[0].person_id) == (
        ids[0],
        "profile.profile_changed",
        payloads[0].person_id,
    )
    assert second.id == ids[1] and second.person_id == "" and second.HasField("occurred_at")
    unpacked = events_pb2.ProfileChangedEvent()
    assert second.payload.Unpack(unpacked) and unpacked == payloads[1]


def test_profile_changed_bytes_parse_to_the_payload_profile_changed_builds() -> None:
    person = uuid.uuid4()
    values = {
        "lifetime_value": {"amount_minor": 1050, "currency_code": "EUR"},
        "last_login_at": {"app": "2026-11-22T10:30:15.123456Z", "web": "2026-11-20T08:00:00Z"},
        "orders_30d": 0,
        "average": 12.75,
        "flags": [True, False, None, "x", {"nested": []}],
        "name ü": "Zoë",
    }
    lines = [CartLine("sku-1", 2, "Boots", 4999, "EUR"), CartLine("sku-2", 1, "", None, None)]
    cases = [
        {"changed": ["cart", "computed_traits"], "cart": lines, "computed_traits": values},
        {"changed": ["cart"], "cart": []},
        {"changed": ["computed_traits"], "computed_traits": values},
    ]
    for case in cases:
        expected = events.profile_changed(person, **case)  # type: ignore[arg-type]
        written = events.profile_changed_bytes(str(person), **case)  # type: ignore[arg-type]
        assert events_pb2.ProfileChangedEvent.FromString(written) == expected
        assert events_pb2.ProfileChangedEvent.FromString(written).HasField("cart") == expected.HasField(
            "cart"
        )


def test_struct_bytes_parse_to_the_struct_protobuf_builds() -> None:
    values: dict[str, Any] = {
        "n": -0.5,
        "big": 2**60,
        "s": "",
        "t": True,
        "f": False,
        "z": None,
        "d": {"a": [1, [2, {}]]},
    }
    expected = struct_pb2.Struct()
    expected.update(values)
    assert struct_pb2.Struct.FromString(struct_bytes(values)) == expected


def test_properties_read_from_the_struct_are_its_values_and_leave_it_as_it_was() -> None:
    values: dict[str, Any] = {
        "category": "shoes",
        "revenue": 10.5,
        "quantity": 2,
        "gift": False,
        "tags": ["a"],
    }
    message = struct_pb2.Struct()
    message.update(values)
    encoded = message.SerializeToString()
    properties = StructProperties(message)
    assert properties.get("category") == "shoes"
    assert properties["quantity"] == 2 and isinstance(properties["quantity"], int)
    assert properties.get("missing") is None and "missing" not in properties
    assert len(properties) == 5 and set(properties) == set(values)
    assert dict(properties) == values == properties
    assert message.SerializeToString() == encoded  # looking up a missing key added nothing
