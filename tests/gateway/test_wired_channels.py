"""Every channel through SendMessage on a real gateway, its providers configured as the registry's entries
(OMNI_GATEWAY_PROVIDERS), against the local servers that speak each provider's protocol: SMS to the test
SMSC with its delivery receipt, failing over to the HTTP vendor while the SMSC is down; Web Push decrypted
by the local push service, and a subscription it reports gone suppressed; a webhook verified by the
receiver, retried on the webhook's own schedule."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import struct_pb2

from omni.common.v1 import common_pb2
from omni.gateway.v1 import gateway_pb2
from omni.identity.v1 import identity_pb2
from omni.profile.v1 import profile_pb2
from omni_kit.embedded import free_port

from . import apns_server
from .apns_server import running_apns
from .push_service import PushService, running_push_service
from .sms_vendor import SmsVendor
from .smsc import TestSmsc
from .support import Gateway, Neighbours, StartGateway, unique
from .webhook_receiver import Answer, Receiver, new_secret, receiving

pytestmark = pytest.mark.integration

TRANSACTIONAL = profile_pb2.CONSENT_PURPOSE_TRANSACTIONAL


@pytest.fixture
async def smsc() -> AsyncIterator[TestSmsc]:
    server = await TestSmsc().start()
    yield server
    await server.stop()


@pytest.fixture
async def vendor() -> AsyncIterator[SmsVendor]:
    server = await SmsVendor().start()
    yield server
    await server.stop()


@pytest.fixture
async def push_service() -> AsyncIterator[PushService]:
    async with running_push_service() as service:
        yield service


def _smpp(port: int) -> dict[str, Any]:
    return {
        "name": "smsc",
        "kind": "smpp",
        "channel": "sms",
        "host": "127.0.0.1",
        "port": port,
        "system_id": "omni",
        "password": "secret",
        "source_addr": "CoffeeCo",
        "bind_wait_s": 0.2,
        "connect_timeout_s": 0.5,
        "reconnect_max_s": 0.5,
    }


def _http_sms(vendor: SmsVendor) -> dict[str, Any]:
    return {
        "name": "vendor",
        "kind": "http-sms",
        "channel": "sms",
        "base_url": vendor.url,
        "account_sid": vendor.account_sid,
        "auth_token": vendor.auth_token,
        "from_number": "+15005550006",
    }


def _vapid_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


async def _person(neighbours: Neighbours, *identifiers: tuple[str, str]) -> str:
    response = await neighbours.identity.ResolvePerson(
        identity_pb2.ResolvePersonRequest(
            identifiers=[common_pb2.Identifier(type=t, value=v) for t, v in identifiers], source="app"
        )
    )
    return str(response.resolution.person_id)


async def _template(gateway: Gateway, variant: gateway_pb2.TemplateVariant) -> str:
    template_id = unique("wired-")
    await gateway.stub.CreateTemplate(
        gateway_pb2.CreateTemplateRequest(template=gateway_pb2.Template(id=template_id, variants=[variant]))
    )
    return template_id


async def _send(
    gateway: Gateway, person: str, channel: int, template_id: str, **variables: Any
) -> gateway_pb2.Message:
    values = struct_pb2.Struct()
    values.update(variables)
    response = await gateway.stub.SendMessage(
        gateway_pb2.SendMessageRequest(
            request_id=unique("req-"),
            person_id=person,
            channel=channel,  # type: ignore[arg-type]
            template_id=template_id,
            purpose=TRANSACTIONAL,
            variables=values,
        )
    )
    return response.message


async def _until_status(
    gateway: Gateway, message_id: str, status: int, within: float = 10.0
) -> gateway_pb2.Message:
    async with asyncio.timeout(within):
        while True:
            found = (
                await gateway.stub.GetMessage(gateway_pb2.GetMessageRequest(message_id=message_id))
            ).message
            if found.status == status:
                return found
            await asyncio.sleep(0.05)


SMS_TEXT = gateway_pb2.TemplateVariant(
    sms=gateway_pb2.SmsVariant(text="Your order {{ variables.order }} is ready")
)


async def test_an_sms_goes_to_the_smsc_and_its_delivery_receipt_marks_it_delivered(
    start_gateway: StartGateway, neighbours: Neighbours, smsc: TestSmsc
) -> None:
    gateway = await start_gateway(providers=[_smpp(smsc.port)])
    person = await _person(neighbours, ("phone", "+4915112345678"))
    template = await _template(gateway, SMS_TEXT)

    sent = await _send(gateway, person, common_pb2.CHANNEL_SMS, template, order="A-17")

    assert sent.status in (gateway_pb2.MESSAGE_STATUS_SENT, gateway_pb2.MESSAGE_STATUS_DELIVERED), sent
    [submitted] = await smsc.until_submitted(1)
    assert submitted.destination == "4915112345678"
    assert submitted.user_data.decode("ascii") == "Your order A-17 is ready"
    delivered = await _until_status(gateway, sent.id, gateway_pb2.MESSAGE_STATUS_DELIVERED)
    assert delivered.provider == "smsc"


async def test_with_the_smsc_down_the_http_vendor_takes_the_sms(
    start_gateway: StartGateway, neighbours: Neighbours, vendor: SmsVendor
) -> None:
    gateway = await start_gateway(
        providers=[_smpp(free_port("127.0.0.1")), _http_sms(vendor)],
        provider_order={"sms": ["smsc", "vendor"]},
    )
    person = await _person(neighbours, ("phone", "+4915187654321"))
    template = await _template(gateway, SMS_TEXT)

    sent = await _send(gateway, person, common_pb2.CHANNEL_SMS, template, order="B-2")

    assert sent.status == gateway_pb2.MESSAGE_STATUS_SENT, sent
    assert sent.provider == "vendor"
    [taken] = vendor.messages
    assert (taken.to, taken.body) == ("+4915187654321", "Your order B-2 is ready")


async def test_a_vendor_status_callback_that_overtakes_the_recorded_send_still_marks_it_delivered(
    start_gateway: StartGateway, neighbours: Neighbours, vendor: SmsVendor
) -> None:
    vendor.callbacks_first = True  # "delivered" reaches the gateway before the vendor answers the send
    port = free_port("127.0.0.1")
    gateway = await start_gateway(
        providers=[
            {**_http_sms(vendor), "status_callback_url": f"http://127.0.0.1:{port}/sms/vendor/twilio/status"}
        ],
        email_http_port=port,
    )
    person = await _person(neighbours, ("phone", "+4915100000003"))
    template = await _template(gateway, SMS_TEXT)

    sent = await _send(gateway, person, common_pb2.CHANNEL_SMS, template, order="E-1")

    assert sent.provider == "vendor"
    assert [status for status, _ in vendor.callbacks] == [200, 200]
    await _until_status(gateway, sent.id, gateway_pb2.MESSAGE_STATUS_DELIVERED)


def _webpush(push_service: PushService) -> dict[str, Any]:
    return {
        "name": "webpush",
        "kind": "webpush",
        "channel": "push",
        "vapid_private_key": _vapid_pem(),
        "vapid_subject": "mailto:push@coffee.example",
        "allow_http_loopback": True,
    }


PUSH = gateway_pb2.TemplateVariant(
    push=gateway_pb2.PushVariant(title="Thanks for coming by", body="your {{ variables.nth }} coffee is free")
)


async def test_a_web_push_is_decrypted_by_the_push_service(
    start_gateway: StartGateway, neighbours: Neighbours, push_service: PushService
) -> None:
    gateway = await start_gateway(providers=[_webpush(push_service)])
    subscription = push_service.subscribe()
    person = await _person(neighbours, ("web_push_subscription", subscription.to_json()))
    template = await _template(gateway, PUSH)

    sent = await _send(gateway, person, common_pb2.CHANNEL_PUSH, template, nth="10th")

    assert sent.status == gateway_pb2.MESSAGE_STATUS_SENT, sent
    [delivered] = push_service.delivered_to(subscription)
    assert delivered.payload["title"] == "Thanks for coming by"
    assert delivered.payload["body"] == "your 10th coffee is free"
    assert delivered.payload["message_id"] == sent.id


async def test_a_subscription_the_push_service_reports_gone_is_suppressed(
    start_gateway: StartGateway, neighbours: Neighbours, push_service: PushService
) -> None:
    gateway = await start_gateway(providers=[_webpush(push_service)])
    subscription = push_service.subscribe()
    subscription.answer = (410, {})
    person = await _person(neighbours, ("web_push_subscription", subscription.to_json()))
    template = await _template(gateway, PUSH)

    gone = await _send(gateway, person, common_pb2.CHANNEL_PUSH, template, nth="1st")
    assert gone.status == gateway_pb2.MESSAGE_STATUS_FAILED, gone
    # Not tried again: the next message fails on the suppression list before the push service is called.
    subscription.answer = None
    again = await _send(gateway, person, common_pb2.CHANNEL_PUSH, template, nth="2nd")
    assert again.status == gateway_pb2.MESSAGE_STATUS_FAILED
    assert again.error == "address suppressed: address_invalid"
    assert push_service.delivered_to(subscription) == []


async def test_an_ios_app_gets_the_push_through_apns_and_a_token_apns_reports_gone_is_suppressed(
    start_gateway: StartGateway, neighbours: Neighbours
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    async with running_apns(key.public_key()) as apns:
        gateway = await start_gateway(
            providers=[
                {"name": "apns", "kind": "apns", "channel": "push", "key": pem, "key_id": apns_server.KEY_ID,
                 "team_id": apns_server.TEAM_ID, "topic": apns_server.TOPIC, "base_url": apns.url}
            ]
        )  # fmt: skip
        live, gone = uuid.uuid4().hex * 2, uuid.uuid4().hex * 2
        apns.unregistered.add(gone)
        template = await _template(gateway, PUSH)

        sent = await _send(
            gateway,
            await _person(neighbours, ("push_token", live)),
            common_pb2.CHANNEL_PUSH,
            template,
            nth="10th",
        )
        assert sent.status == gateway_pb2.MESSAGE_STATUS_SENT, sent
        [taken] = apns.delivered
        assert taken.payload["aps"]["alert"]["body"] == "your 10th coffee is free"

        owner = await _person(neighbours, ("push_token", gone))
        failed = await _send(gateway, owner, common_pb2.CHANNEL_PUSH, template, nth="1st")
        assert failed.status == gateway_pb2.MESSAGE_STATUS_FAILED, failed
        again = await _send(gateway, owner, common_pb2.CHANNEL_PUSH, template, nth="2nd")
        assert again.error == "address suppressed: address_invalid"
        assert len(apns.refused) == 1  # not tried again


WEBHOOK = gateway_pb2.TemplateVariant(
    webhook=gateway_pb2.WebhookVariant(body='{"type": "order.ready", "order": {{ variables.order | json }}}')
)


def _webhook(url: str, secret: str, **more: Any) -> dict[str, Any]:
    return {
        "name": "hooks",
        "kind": "webhook",
        "channel": "webhook",
        "destinations": [{"name": "crm", "url": url, "secrets": [secret]}],
        **more,
    }


async def test_a_webhook_is_verified_by_the_receiver_and_retried_on_the_webhooks_own_schedule(
    start_gateway: StartGateway, neighbours: Neighbours
) -> None:
    secret = new_secret()
    async with receiving(Receiver(secret)) as crm:
        gateway = await start_gateway(
            providers=[_webhook(crm.url, secret, retry_schedule_s=[0.3, 0.3])],
            # The policy's backoff would wait an hour and allow 8 attempts: the webhook's schedule rules.
            retry_first_delay_s=3600,
            send_max_attempts=8,
        )
        person = await _person(neighbours, ("email", f"{unique('hook-')}@example.com"))
        template = await _template(gateway, WEBHOOK)

        sent = await _send(gateway, person, common_pb2.CHANNEL_WEBHOOK, template, order="C-3")
        assert sent.status == gateway_pb2.MESSAGE_STATUS_SENT, sent
        [delivery] = crm.verified
        assert delivery.payload == {"type": "order.ready", "order": "C-3"}
        assert delivery.headers["webhook-id"] == sent.id

        crm.answer = Answer(503, "restarting")
        failing = await _send(gateway, person, common_pb2.CHANNEL_WEBHOOK, template, order="C-4")
        assert failing.status == gateway_pb2.MESSAGE_STATUS_QUEUED
        failed = await _until_status(gateway, failing.id, gateway_pb2.MESSAGE_STATUS_FAILED)
    assert failed.error.startswith("gave up after 3 attempts")
    assert len(crm.verified) == 4  # one sent, three attempts of the failing one
    assert {json.loads(d.body)["order"] for d in crm.verified[1:]} == {"C-4"}


async def test_a_delivery_receipt_that_overtakes_the_recorded_send_still_marks_it_delivered(
    start_gateway: StartGateway, neighbours: Neighbours, smsc: TestSmsc
) -> None:
    smsc.receipt_first = True  # the receipt reaches the gateway before the submit's answer
    gateway = await start_gateway(providers=[_smpp(smsc.port)])
    person = await _person(neighbours, ("phone", "+4915100000001"))
    template = await _template(gateway, SMS_TEXT)

    sent = await _send(gateway, person, common_pb2.CHANNEL_SMS, template, order="D-1")

    assert sent.provider == "smsc"
    await _until_status(gateway, sent.id, gateway_pb2.MESSAGE_STATUS_DELIVERED)


async def test_a_failed_receipt_that_overtakes_the_recorded_send_marks_it_bounced(
    start_gateway: StartGateway, neighbours: Neighbours, smsc: TestSmsc
) -> None:
    smsc.receipt_first = True
    smsc.receipt_stat, smsc.receipt_err = "UNDELIV", "001"  # unknown subscriber: the number does not exist
    gateway = await start_gateway(providers=[_smpp(smsc.port)])
    person = await _person(neighbours, ("phone", "+4915100000002"))
    template = await _template(gateway, SMS_TEXT)

    sent = await _send(gateway, person, common_pb2.CHANNEL_SMS, template, order="D-2")

    assert sent.provider == "smsc"
    await _until_status(gateway, sent.id, gateway_pb2.MESSAGE_STATUS_BOUNCED)
    again = await _send(gateway, person, common_pb2.CHANNEL_SMS, template, order="D-3")
    assert again.error == "address suppressed: hard_bounce"
