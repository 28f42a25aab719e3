"""Idempotency in the gateway: a send's fingerprint (omni_kit.idempotency's hash of the SendMessageRequest
asking for it) and its refusal, and CreateTemplate by request id through omni_kit's store."""

from __future__ import annotations

import uuid

import grpc
import pytest

from omni.common.v1 import common_pb2
from omni.gateway.v1 import gateway_pb2
from omni.profile.v1 import profile_pb2
from omni_gateway.delivery import ensure_same_send
from omni_gateway.domain import Channel, Purpose, SendRequest
from omni_gateway.models import Message
from omni_gateway.wire import send_fingerprint
from omni_kit.errors import AlreadyExists, status_details
from omni_kit.idempotency import KEY_REUSED_REASON, fingerprint
from omni_kit.ids import new_id_str

from ..idempotency import assert_key_reused, forget_shown_answers, purge_aged, stored_answers
from .support import CART_TEMPLATE, Gateway, Neighbours, counts, publish, unique
from .test_erasure import _forget

PERSON = uuid.UUID("0193a0b4-5f6e-7c3d-9a1b-2c3d4e5f6a7b")


def _request(**overrides: object) -> SendRequest:
    values: dict[str, object] = {
        "request_id": "r-1",
        "person_id": PERSON,
        "channel": Channel.EMAIL,
        "template_id": "cart",
        "variables": {"a": 1, "b": {"c": [1, 2]}},
        "journey_id": "j-1",
    }
    values.update(overrides)
    return SendRequest(**values)  # type: ignore[arg-type]


def test_a_send_is_fingerprinted_as_the_send_message_request_asking_for_it() -> None:
    asked = gateway_pb2.SendMessageRequest(
        request_id="r-1",
        person_id=str(PERSON),
        channel=common_pb2.CHANNEL_EMAIL,
        template_id="cart",
        purpose=profile_pb2.CONSENT_PURPOSE_MARKETING,
    )
    asked.variables.update({"b": {"c": [1, 2]}, "a": 1})
    assert send_fingerprint(_request()) == fingerprint("SendMessage", asked)


def test_who_asked_and_when_do_not_count() -> None:
    assert send_fingerprint(_request()) == send_fingerprint(
        _request(variables={"b": {"c": [1, 2]}, "a": 1}, journey_id="j-2", contact_verdict_version=7)
    )


@pytest.mark.parametrize(
    "change",
    [
        {"person_id": uuid.UUID(int=1)},
        {"channel": Channel.SMS},
        {"template_id": "other"},
        {"variables": {"a": 2, "b": {"c": [1, 2]}}},
        {"variables": {}},
        {"purpose": Purpose.TRANSACTIONAL},
    ],
)
def test_other_content_has_another_fingerprint(change: dict[str, object]) -> None:
    assert send_fingerprint(_request(**change)) != send_fingerprint(_request())


def test_a_reused_key_with_other_content_is_refused_with_omni_kits_reason() -> None:
    message = Message(id=uuid.uuid4(), request_id="r-1", fingerprint=send_fingerprint(_request()))
    ensure_same_send(message, send_fingerprint(_request()))
    with pytest.raises(AlreadyExists) as raised:
        ensure_same_send(message, send_fingerprint(_request(template_id="other")))
    assert raised.value.reason == KEY_REUSED_REASON
    assert raised.value.metadata == {"request_id": "r-1", "message_id": str(message.id)}


def _template_request(
    request_id: str = "", template_id: str | None = None, subject: str = ""
) -> gateway_pb2.CreateTemplateRequest:
    template = gateway_pb2.Template()
    template.CopyFrom(CART_TEMPLATE)
    template.id = template_id or unique("cart-")
    if subject:
        template.subject = subject
    return gateway_pb2.CreateTemplateRequest(template=template, request_id=request_id)


async def test_a_retried_create_template_answers_the_first_answer(gateway: Gateway) -> None:
    request = _template_request(new_id_str())
    first = await gateway.stub.CreateTemplate(request)
    again = await gateway.stub.CreateTemplate(request)

    assert again == first
    [answer] = await stored_answers(gateway.runtime, request.request_id)
    assert answer.scope == "CreateTemplate"


async def test_the_same_id_with_another_template_is_refused_and_nothing_is_written(gateway: Gateway) -> None:
    request = _template_request(new_id_str())
    await gateway.stub.CreateTemplate(request)
    before = await counts(gateway.database)

    for other in (
        _template_request(request.request_id),
        _template_request(request.request_id, request.template.id, subject="Another subject"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gateway.stub.CreateTemplate(other)
        assert_key_reused(refused.value, request.request_id)

    assert await counts(gateway.database) == before


async def test_without_a_request_id_a_taken_template_id_is_refused_as_before(gateway: Gateway) -> None:
    request = _template_request()
    await gateway.stub.CreateTemplate(request)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await gateway.stub.CreateTemplate(request)
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert await stored_answers(gateway.runtime, "") == []


@pytest.mark.parametrize("request_id", ["x" * 129, "key\x00", "ke\ny"])
async def test_a_malformed_request_id_is_refused(gateway: Gateway, request_id: str) -> None:
    before = await counts(gateway.database)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await gateway.stub.CreateTemplate(_template_request(request_id))
    details = status_details(refused.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == {"request_id"}
    assert await counts(gateway.database) == before


async def test_an_answer_past_the_retention_is_purged_and_its_id_free_again(gateway: Gateway) -> None:
    request_id = new_id_str()
    await gateway.stub.CreateTemplate(_template_request(request_id))

    await purge_aged(gateway.runtime, request_id)

    newer = _template_request(request_id)
    assert (await gateway.stub.CreateTemplate(newer)).template.id == newer.template.id


async def test_an_erasure_removes_the_answers_showing_the_person(
    gateway: Gateway, neighbours: Neighbours
) -> None:
    async def forget(person_id: str) -> None:
        await publish(gateway.runtime.js, neighbours.namespace, _forget(person_id, person_id))

    await forget_shown_answers(gateway.runtime, forget)
