"""Protobuf ⇄ domain translation shared by the servicer and the events: channels, purposes, statuses,
templates, messages, and the validation of a send request however it arrives (as a SendMessageRequest)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from omni.common.v1 import common_pb2
from omni.gateway.v1 import gateway_pb2
from omni.profile.v1 import profile_pb2
from omni_gateway.domain import Channel, MessageStatus, Purpose, SendRequest
from omni_gateway.models import Message, Template
from omni_kit import validation
from omni_kit.errors import check_json_text
from omni_kit.idempotency import fingerprint

# A message's variables are stored with it (and replayed): a cap keeps one send from storing megabytes.
MAX_VARIABLES_BYTES = 16 * 1024

_CHANNELS = {
    common_pb2.CHANNEL_WEB: Channel.WEB,
    common_pb2.CHANNEL_APP: Channel.APP,
    common_pb2.CHANNEL_EMAIL: Channel.EMAIL,
    common_pb2.CHANNEL_SMS: Channel.SMS,
    common_pb2.CHANNEL_PUSH: Channel.PUSH,
    common_pb2.CHANNEL_STORE: Channel.STORE,
    common_pb2.CHANNEL_CALL_CENTER: Channel.CALL_CENTER,
    common_pb2.CHANNEL_WEBHOOK: Channel.WEBHOOK,
}
_CHANNELS_PB = {channel: number for number, channel in _CHANNELS.items()}
# Consent's vocabulary (profile's ConsentPurpose): unspecified means marketing there, and so here.
_PURPOSES = {
    profile_pb2.CONSENT_PURPOSE_UNSPECIFIED: Purpose.MARKETING,
    profile_pb2.CONSENT_PURPOSE_MARKETING: Purpose.MARKETING,
    profile_pb2.CONSENT_PURPOSE_TRANSACTIONAL: Purpose.TRANSACTIONAL,
}
_PURPOSES_PB = {
    Purpose.MARKETING: profile_pb2.CONSENT_PURPOSE_MARKETING,
    Purpose.TRANSACTIONAL: profile_pb2.CONSENT_PURPOSE_TRANSACTIONAL,
}
_STATUSES_PB = {
    MessageStatus.QUEUED: gateway_pb2.MESSAGE_STATUS_QUEUED,
    MessageStatus.SENT: gateway_pb2.MESSAGE_STATUS_SENT,
    MessageStatus.FAILED: gateway_pb2.MESSAGE_STATUS_FAILED,
    MessageStatus.DELIVERED: gateway_pb2.MESSAGE_STATUS_DELIVERED,
    MessageStatus.BOUNCED: gateway_pb2.MESSAGE_STATUS_BOUNCED,
}


def channel_from_proto(value: int) -> Channel | None:
    """The domain channel of an omni.common.v1.Channel number; None for UNSPECIFIED or unknown numbers."""
    return _CHANNELS.get(value)  # type: ignore[call-overload]


def channel_to_proto(channel: Channel) -> common_pb2.Channel.ValueType:
    """The omni.common.v1.Channel number of a domain channel."""
    return _CHANNELS_PB[channel]


def purpose_from_proto(value: int) -> Purpose | None:
    """The domain purpose of an omni.profile.v1.ConsentPurpose number (UNSPECIFIED is marketing); None for
    purposes that are not a message's (personalization, analytics) and unknown numbers."""
    return _PURPOSES.get(value)  # type: ignore[call-overload]


def purpose_to_proto(purpose: Purpose) -> profile_pb2.ConsentPurpose.ValueType:
    """The omni.profile.v1.ConsentPurpose number of a domain purpose."""
    return _PURPOSES_PB[purpose]


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A protobuf Timestamp of an aware datetime."""
    if value is None:
        return None
    result = timestamp_pb2.Timestamp()
    result.FromDatetime(value)
    return result


def template_to_proto(template: Template) -> gateway_pb2.Template:
    """The wire form of a stored template."""
    return gateway_pb2.Template(
        id=template.id,
        channel=channel_to_proto(template.channel),
        subject=template.subject,
        body_text=template.body_text,
        body_html=template.body_html,
        create_time=timestamp(template.create_time),
    )


def message_to_proto(message: Message) -> gateway_pb2.Message:
    """The wire form of a message (the fingerprint, lease and trace context stay inside)."""
    return gateway_pb2.Message(
        id=str(message.id),
        request_id=message.request_id,
        person_id=str(message.person_id),
        channel=channel_to_proto(message.channel),
        template_id=message.template_id,
        recipient=message.recipient,
        status=_STATUSES_PB[message.status],
        error=message.error,
        create_time=timestamp(message.create_time),
        update_time=timestamp(message.update_time),
        journey_id=message.journey_id,
        attempt_count=message.attempt_count,
        next_attempt_time=timestamp(
            message.next_attempt_at if message.status == MessageStatus.QUEUED else None
        ),
        purpose=purpose_to_proto(message.purpose),
        provider=message.provider,
        provider_message_id=message.provider_message_id,
    )


def struct_to_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain JSON-like Python values."""
    return json_format.MessageToDict(value)


def parse_send_request(
    request: gateway_pb2.SendMessageRequest, *, contact_verdict_version: int = 0
) -> SendRequest:
    """Validate a send, from SendMessageRequest or SendRequestedEvent (made into one) alike.

    Raises InvalidArgument naming every bad field: what gateway.proto declares (request_id, person_id,
    channel, template_id, journey_id, purpose), and each bad value of the variables by its path
    ("variables.order.skus[1]"), which a proto cannot say. The variables are turned into plain JSON once
    they passed. Whether the channel can be delivered and the template exists is the delivery's to decide.
    """
    violations = validation.check(request)
    variables = request.variables
    if variables.ByteSize() > MAX_VARIABLES_BYTES:
        violations.add(
            "variables", f"at most {MAX_VARIABLES_BYTES} bytes encoded, not {variables.ByteSize()}"
        )
    else:
        check_json_text(variables, "variables", violations)
    violations.raise_if_any()
    domain_channel = channel_from_proto(request.channel)
    domain_purpose = purpose_from_proto(request.purpose)
    assert domain_channel is not None and domain_purpose is not None  # the proto's rules
    return SendRequest(
        request_id=request.request_id,
        person_id=uuid.UUID(request.person_id),
        channel=domain_channel,
        template_id=request.template_id,
        variables=struct_to_dict(variables) if request.HasField("variables") else {},
        journey_id=request.journey_id,
        purpose=domain_purpose,
        contact_verdict_version=max(contact_verdict_version, 0),
    )


def send_fingerprint(request: SendRequest) -> bytes:
    """What a send asks for, hashed as omni_kit.idempotency hashes every request: the SendMessageRequest that
    asks for it (request id, person, channel, template, variables, purpose), whether it came from SendMessage
    or from decisioning's send_requested. The journey is left out, as is the version of the verdicts a
    journey's send was decided by: they say who asked and when, not what is sent."""
    canonical = gateway_pb2.SendMessageRequest(
        request_id=request.request_id,
        person_id=str(request.person_id),
        channel=channel_to_proto(request.channel),
        template_id=request.template_id,
        purpose=purpose_to_proto(request.purpose),
    )
    if request.variables:
        canonical.variables.update(request.variables)
    return fingerprint("SendMessage", canonical)
