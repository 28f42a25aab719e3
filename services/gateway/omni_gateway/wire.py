"""Protobuf ⇄ domain translation shared by the servicer and the events: channels, purposes, statuses,
templates (their variants and rendered content), messages, and the validation of a send request however it arrives (as a SendMessageRequest)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from omni.common.v1 import common_pb2
from omni.gateway.v1 import gateway_pb2
from omni.profile.v1 import profile_pb2
from omni_gateway.domain import Channel, MessageStatus, Purpose, SendRequest
from omni_gateway.models import Message
from omni_gateway.providers.base import (
    Content,
    EmailContent,
    PushContent,
    SmsContent,
    TerminalContent,
    WebhookContent,
)
from omni_gateway.templates import StoredTemplate, legacy_parts
from omni_gateway.variants import Variant, VariantKind
from omni_kit import validation
from omni_kit.errors import Violations, check_json_text
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


def template_to_proto(template: StoredTemplate) -> gateway_pb2.Template:
    """The wire form of a template version: its variants, and for a template written for one channel the
    subject and bodies of its variant for that channel."""
    legacy = legacy_parts(template)
    return gateway_pb2.Template(
        id=template.id,
        channel=channel_to_proto(template.channel) if template.channel is not None else 0,
        subject=legacy.subject,
        body_text=legacy.body_text,
        body_html=legacy.body_html,
        create_time=timestamp(template.create_time),
        version=template.version,
        variants=[variant_to_proto(v) for v in template.variants],
        state=gateway_pb2.TEMPLATE_STATE_ARCHIVED if template.archived else gateway_pb2.TEMPLATE_STATE_ACTIVE,
        update_time=timestamp(template.update_time),
        archive_time=timestamp(template.archive_time),
        channels=[channel_to_proto(c) for c in template.channels()],
    )


def variant_to_proto(variant: Variant) -> gateway_pb2.TemplateVariant:
    """The wire form of a variant: its locale and its kind's parts."""
    result = gateway_pb2.TemplateVariant(locale=variant.locale)
    parts = getattr(result, variant.kind.value)
    parts.SetInParent()
    for name, source in variant.parts.items():
        setattr(parts, name, source)
    return result


def variant_from_proto(variant: gateway_pb2.TemplateVariant) -> Variant:
    """A variant from the wire (checked by its proto's rules first: one content is set)."""
    which = variant.WhichOneof("content")
    assert which is not None  # the proto's rules
    kind = VariantKind(which)
    parts = getattr(variant, which)
    return Variant(kind, variant.locale, {f.name: value for f, value in parts.ListFields()})


def content_to_proto(
    content: Content | None, kind: VariantKind, locale: str, error: str = ""
) -> gateway_pb2.RenderedVariant:
    """A rendered variant on the wire; with an error (nothing rendered) the content is its kind's, empty."""
    result = gateway_pb2.RenderedVariant(locale=locale, error=error)
    match content:
        case EmailContent():
            result.email.CopyFrom(
                gateway_pb2.RenderedEmail(subject=content.subject, html=content.html, text=content.text)
            )
        case SmsContent():
            result.sms.CopyFrom(gateway_pb2.RenderedSms(text=content.text))
        case PushContent():
            result.push.CopyFrom(
                gateway_pb2.RenderedPush(
                    title=content.title,
                    body=content.body,
                    deep_link=content.deep_link,
                    image_url=content.image_url,
                )
            )
        case TerminalContent():
            result.terminal.CopyFrom(gateway_pb2.RenderedTerminal(text=content.text))
        case WebhookContent():
            result.webhook.payload.update(dict(content.payload))
        case None:
            getattr(result, kind.value).SetInParent()
    return result


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
        template_version=message.template_version,
    )


def struct_to_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain JSON-like Python values."""
    return json_format.MessageToDict(value)


def check_variables(values: struct_pb2.Struct, path: str, violations: Violations) -> None:
    """Check a Struct of values a template sees (a send's variables, a preview's sample traits): at most
    MAX_VARIABLES_BYTES encoded, names without control characters, strings none but tabs and line breaks,
    numbers finite; each bad value named by its path ("variables.order.skus[1]")."""
    if values.ByteSize() > MAX_VARIABLES_BYTES:
        violations.add(path, f"at most {MAX_VARIABLES_BYTES} bytes encoded, not {values.ByteSize()}")
    else:
        check_json_text(values, path, violations)


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
    check_variables(variables, "variables", violations)
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
