"""Every kind of bad input gets the right status, names the bad fields, and writes nothing."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.message import Message as ProtoMessage

from omni.common.v1 import common_pb2
from omni.gateway.v1 import gateway_pb2
from omni.profile.v1 import profile_pb2
from omni_kit.errors import StatusDetails, status_details

from .support import CART_TEMPLATE, Gateway, Neighbours, counts, create_cart_template, create_person, unique

PERSON = "0193a0b4-5f6e-7c3d-9a1b-2c3d4e5f6a7b"


async def _refused(gateway: Gateway, method: str, request: ProtoMessage) -> StatusDetails:
    """Call method, expect a failure, and check that no table changed."""
    before = await counts(gateway.database)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await getattr(gateway.stub, method)(request)
    assert await counts(gateway.database) == before
    return status_details(raised.value)


def _send(**fields: object) -> gateway_pb2.SendMessageRequest:
    values: dict[str, object] = {
        "request_id": unique("req-"),
        "person_id": PERSON,
        "channel": common_pb2.CHANNEL_EMAIL,
        "template_id": "cart",
    }
    values.update(fields)
    return gateway_pb2.SendMessageRequest(**values)  # type: ignore[arg-type]


def _template(**fields: object) -> gateway_pb2.CreateTemplateRequest:
    template = gateway_pb2.Template()
    template.CopyFrom(CART_TEMPLATE)
    template.id = unique("tpl-")
    for name, value in fields.items():
        setattr(template, name, value)
    return gateway_pb2.CreateTemplateRequest(template=template)


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [
        ({"request_id": ""}, "request_id"),
        ({"request_id": "r" * 129}, "request_id"),
        ({"person_id": ""}, "person_id"),
        ({"person_id": "not-a-uuid"}, "person_id"),
        ({"channel": common_pb2.CHANNEL_UNSPECIFIED}, "channel"),
        ({"channel": 99}, "channel"),
        ({"channel": common_pb2.CHANNEL_SMS}, "channel"),
        ({"template_id": ""}, "template_id"),
        ({"template_id": "Not A Template!"}, "template_id"),
        ({"journey_id": "j" * 129}, "journey_id"),
        ({"purpose": profile_pb2.CONSENT_PURPOSE_ANALYTICS}, "purpose"),
        ({"purpose": profile_pb2.CONSENT_PURPOSE_PERSONALIZATION}, "purpose"),
        ({"purpose": 99}, "purpose"),
    ],
    ids=[
        "missing-request-id",
        "long-request-id",
        "missing-person-id",
        "bad-person-id",
        "unspecified-channel",
        "unknown-channel",
        "unsupported-channel",
        "missing-template-id",
        "malformed-template-id",
        "long-journey-id",
        "analytics-purpose",
        "personalization-purpose",
        "unknown-purpose",
    ],
)
async def test_send_with_a_bad_field_is_invalid(
    gateway: Gateway, fields: dict[str, object], bad_field: str
) -> None:
    template_id = await create_cart_template(gateway)
    request = _send(template_id=template_id)
    for name, value in fields.items():
        setattr(request, name, value)

    details = await _refused(gateway, "SendMessage", request)

    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == {bad_field}


async def test_send_names_every_bad_field_at_once(gateway: Gateway) -> None:
    details = await _refused(
        gateway,
        "SendMessage",
        gateway_pb2.SendMessageRequest(person_id="x", channel=common_pb2.CHANNEL_UNSPECIFIED),
    )
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == {"request_id", "person_id", "channel", "template_id"}


async def test_send_with_an_unknown_template_is_not_found(gateway: Gateway) -> None:
    details = await _refused(gateway, "SendMessage", _send(template_id=unique("missing-")))
    assert details.code == grpc.StatusCode.NOT_FOUND
    assert "template" in details.message


async def test_send_with_a_template_of_another_channel_is_invalid(
    gateway: Gateway, neighbours: Neighbours
) -> None:
    sms = _template(channel=common_pb2.CHANNEL_SMS, subject="", body_html="")
    await gateway.stub.CreateTemplate(sms)
    person_id = await create_person(neighbours, f"{unique('chan-')}@example.com")

    details = await _refused(gateway, "SendMessage", _send(person_id=person_id, template_id=sms.template.id))

    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == {"template_id"}


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [
        ({"body_text": "Hello {{ traits.first_name "}, "template.body_text"),
        ({"body_text": "{% for item in cart.items %}never closed"}, "template.body_text"),
        ({"subject": "{{ oops"}, "template.subject"),
        ({"body_html": "<p>{% if x %}</p>"}, "template.body_html"),
        ({"body_text": "{{ traits.name | no_such_filter }}"}, "template.body_text"),
        ({"body_text": ""}, "template.body_text"),
        ({"subject": ""}, "template.subject"),
        ({"id": "Bad Id"}, "template.id"),
        ({"id": ""}, "template.id"),
        ({"id": "x" * 65}, "template.id"),
        ({"channel": common_pb2.CHANNEL_UNSPECIFIED}, "template.channel"),
    ],
    ids=[
        "unclosed-output",
        "unclosed-tag",
        "bad-subject",
        "bad-html",
        "unknown-filter",
        "missing-body",
        "email-without-subject",
        "malformed-id",
        "missing-id",
        "long-id",
        "unspecified-channel",
    ],
)
async def test_template_with_a_bad_field_is_invalid(
    gateway: Gateway, fields: dict[str, object], bad_field: str
) -> None:
    details = await _refused(gateway, "CreateTemplate", _template(**fields))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == {bad_field}


async def test_missing_template_is_invalid(gateway: Gateway) -> None:
    details = await _refused(gateway, "CreateTemplate", gateway_pb2.CreateTemplateRequest())
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "template" in details.fields


async def test_a_duplicate_template_id_is_refused_and_the_first_template_stays(gateway: Gateway) -> None:
    template_id = await create_cart_template(gateway)
    details = await _refused(gateway, "CreateTemplate", _template(id=template_id, body_text="other"))
    assert details.code == grpc.StatusCode.ALREADY_EXISTS
    stored = await gateway.stub.GetTemplate(gateway_pb2.GetTemplateRequest(template_id=template_id))
    assert stored.template.body_text == CART_TEMPLATE.body_text


async def test_an_unknown_template_is_not_found(gateway: Gateway) -> None:
    details = await _refused(gateway, "GetTemplate", gateway_pb2.GetTemplateRequest(template_id="nope"))
    assert details.code == grpc.StatusCode.NOT_FOUND


async def test_a_malformed_template_id_to_get_is_invalid(gateway: Gateway) -> None:
    details = await _refused(gateway, "GetTemplate", gateway_pb2.GetTemplateRequest(template_id="NOPE!"))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == {"template_id"}


@pytest.mark.parametrize("message_id", ["", "not-a-uuid"])
async def test_a_malformed_message_id_is_invalid(gateway: Gateway, message_id: str) -> None:
    details = await _refused(gateway, "GetMessage", gateway_pb2.GetMessageRequest(message_id=message_id))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == {"message_id"}


async def test_an_unknown_message_is_not_found(gateway: Gateway) -> None:
    details = await _refused(gateway, "GetMessage", gateway_pb2.GetMessageRequest(message_id=PERSON))
    assert details.code == grpc.StatusCode.NOT_FOUND


async def test_a_template_is_stored_and_read_back(gateway: Gateway) -> None:
    request = _template()
    created = await gateway.stub.CreateTemplate(request)
    assert created.template.id == request.template.id
    assert created.template.body_text == request.template.body_text
    assert created.template.HasField("create_time")
    read = await gateway.stub.GetTemplate(gateway_pb2.GetTemplateRequest(template_id=request.template.id))
    assert read.template == created.template
