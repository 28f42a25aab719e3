"""Every kind of bad input gets the right status, names the bad fields, and writes nothing."""

from __future__ import annotations

import math
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import struct_pb2
from google.protobuf.message import Message as ProtoMessage

from omni.common.v1 import common_pb2
from omni.gateway.v1 import gateway_pb2
from omni.profile.v1 import profile_pb2
from omni_kit.errors import StatusDetails, status_details

from .support import (
    CART_TEMPLATE,
    Gateway,
    Neighbours,
    counts,
    create_cart_template,
    create_person,
    send_request,
    unique,
)

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
    template_id = unique("missing-")
    details = await _refused(gateway, "SendMessage", _send(template_id=template_id))
    assert details.code == grpc.StatusCode.NOT_FOUND
    assert "template" in details.message
    assert details.error_info is not None
    assert details.error_info.reason == "TEMPLATE_NOT_FOUND"
    assert dict(details.error_info.metadata) == {"template_id": template_id}


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
    assert details.error_info is not None
    assert details.error_info.reason == "TEMPLATE_NOT_FOUND"
    assert dict(details.error_info.metadata) == {"template_id": "nope"}


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
    assert details.error_info is not None
    assert details.error_info.reason == "MESSAGE_NOT_FOUND"
    assert dict(details.error_info.metadata) == {"message_id": PERSON}


async def test_a_template_is_stored_and_read_back(gateway: Gateway) -> None:
    request = _template()
    created = await gateway.stub.CreateTemplate(request)
    assert created.template.id == request.template.id
    assert created.template.body_text == request.template.body_text
    assert created.template.HasField("create_time")
    read = await gateway.stub.GetTemplate(gateway_pb2.GetTemplateRequest(template_id=request.template.id))
    assert read.template == created.template


# -- Control characters -------------------------------------------------------------------------------------
# PostgreSQL cannot store a NUL (text refuses it, JSONB refuses \u0000): it reached the database and answered
# INTERNAL. Ids and variable names hold no control characters; a template's Liquid (subject included: the
# rendered subject is made one line) and the strings of the variables may keep tabs and line breaks.


def _variables(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [
        ({"request_id": "req\x00"}, "request_id"),
        ({"request_id": "req\n"}, "request_id"),
        ({"person_id": f"{PERSON}\x00"}, "person_id"),
        ({"template_id": "cart\x00"}, "template_id"),
        ({"template_id": "cart\n"}, "template_id"),
        ({"journey_id": "journey\x00"}, "journey_id"),
        ({"journey_id": "journey\t1"}, "journey_id"),
        ({"variables": _variables({"coupon": "BACK\x0010"})}, "variables.coupon"),
        ({"variables": _variables({"coupon": "\x1b[1mBACK10"})}, "variables.coupon"),
        ({"variables": _variables({"cou\x00pon": "BACK10"})}, "variables"),
        ({"variables": _variables({"order": {"skus": ["a", "b\x00"]}})}, "variables.order.skus[1]"),
        ({"variables": _variables({"order": {"s\x00": 1}})}, "variables.order"),
        ({"variables": _variables({"order": {"total": math.nan}})}, "variables.order.total"),
        ({"variables": _variables({"limits": [math.inf]})}, "variables.limits[0]"),
    ],
    ids=[
        "request-id",
        "request-id-line-break",
        "person-id",
        "template-id",
        "template-id-line-break",
        "journey-id",
        "journey-id-tab",
        "variable-value",
        "variable-value-escape",
        "variable-name",
        "variable-list-item",
        "variable-nested-name",
        "variable-nan",
        "variable-infinity",
    ],
)
async def test_send_with_control_characters_is_invalid(
    gateway: Gateway, fields: dict[str, object], bad_field: str
) -> None:
    template_id = await create_cart_template(gateway)
    request = _send(template_id=template_id)
    for name, value in fields.items():
        if isinstance(value, struct_pb2.Struct):
            getattr(request, name).CopyFrom(value)
        else:
            setattr(request, name, value)

    details = await _refused(gateway, "SendMessage", request)

    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == {bad_field}


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [
        ({"id": "cart\x00"}, "template.id"),
        ({"id": "cart\n"}, "template.id"),
        ({"subject": "Your cart\x00"}, "template.subject"),
        ({"subject": "\x1b[1mYour cart"}, "template.subject"),
        ({"body_text": "You left\x00:"}, "template.body_text"),
        ({"body_text": "Ding\x07"}, "template.body_text"),
        ({"body_html": "<p>\x00</p>"}, "template.body_html"),
    ],
    ids=[
        "id",
        "id-line-break",
        "subject",
        "subject-escape",
        "body-text",
        "body-text-bell",
        "body-html",
    ],
)
async def test_template_with_control_characters_is_invalid(
    gateway: Gateway, fields: dict[str, object], bad_field: str
) -> None:
    details = await _refused(gateway, "CreateTemplate", _template(**fields))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == {bad_field}


@pytest.mark.parametrize(
    ("method", "request_", "bad_field"),
    [
        ("GetTemplate", gateway_pb2.GetTemplateRequest(template_id="cart\x00"), "template_id"),
        ("GetMessage", gateway_pb2.GetMessageRequest(message_id=f"{PERSON}\x00"), "message_id"),
    ],
    ids=["template-id", "message-id"],
)
async def test_a_read_with_a_nul_is_invalid(
    gateway: Gateway, method: str, request_: ProtoMessage, bad_field: str
) -> None:
    details = await _refused(gateway, method, request_)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == {bad_field}


async def test_templates_and_variables_keep_tabs_and_line_breaks(
    gateway: Gateway, neighbours: Neighbours
) -> None:
    template = _template(
        subject="{% if traits.first_name %}\n\tHi{% endif %} your cart", body_text="A\r\n\tB"
    )
    created = await gateway.stub.CreateTemplate(template)
    assert created.template.body_text == "A\r\n\tB"
    person_id = await create_person(neighbours, f"{unique('free-text-')}@example.com")

    response = await gateway.stub.SendMessage(
        send_request(person_id, template.template.id, note="Leave it\nat the door\t(back)")
    )

    async with gateway.database.connect() as connection:
        stored = await connection.scalar(
            sa.text("SELECT variables FROM messages WHERE id = :id"), {"id": response.message.id}
        )
    assert stored == {"note": "Leave it\nat the door\t(back)"}


async def test_variables_over_16_kib_are_refused_and_nothing_is_stored(gateway: Gateway) -> None:
    # 5 MB of variables were stored with the message.
    template_id = await create_cart_template(gateway)
    for size in (5 * 1024 * 1024, 16 * 1024):
        request = _send(template_id=template_id, variables=_variables({"note": "x" * size}))
        details = await _refused(gateway, "SendMessage", request)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.fields == {"variables"}
