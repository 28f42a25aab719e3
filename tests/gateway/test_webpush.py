"""Web Push against a local push service that checks VAPID and decrypts like a browser (push_service.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pydantic
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from omni.common.v1 import common_pb2
from omni.identity.v1 import identity_pb2
from omni_gateway.domain import Channel, Purpose
from omni_gateway.providers.base import (
    ChannelProvider,
    FailureKind,
    Outgoing,
    PersonContacts,
    ProviderFailure,
    PushContent,
)
from omni_gateway.providers.webpush import MAX_PAYLOAD_BYTES, WebPushProvider, WebPushSettings
from omni_kit.embedded import free_port

from .push_service import PushService, Subscription, running_push_service
from .support import Neighbours

COFFEE = PushContent(
    title="Thanks for coming by",
    body="your 10th coffee is free",
    deep_link="coffeeapp://rewards/10th-coffee",
    image_url="https://cdn.coffee.example/free-coffee.png",
    data={"offer_id": "coffee-10", "topic": "loyalty"},
)


def _vapid_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _raw_b64(key: ec.EllipticCurvePrivateKey) -> str:
    raw = key.private_numbers().private_value.to_bytes(32, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def settings(**overrides: object) -> WebPushSettings:
    values: dict[str, object] = {
        "vapid_private_key": _pem(_vapid_key()),
        "vapid_subject": "mailto:push@coffee.example",
        "allow_http_loopback": True,
        "timeout_s": 5.0,
        **overrides,
    }
    return WebPushSettings(**values)  # type: ignore[arg-type]


def outgoing(address: str, content: PushContent = COFFEE, **overrides: object) -> Outgoing:
    values: dict[str, object] = {
        "message_id": uuid.uuid4(),
        "person_id": uuid.uuid4(),
        "channel": Channel.PUSH,
        "purpose": Purpose.MARKETING,
        "address": address,
        "content": content,
        **overrides,
    }
    return Outgoing(**values)  # type: ignore[arg-type]


async def _receipt(_: object) -> None:
    raise AssertionError("Web Push reports no receipts")


@pytest.fixture
async def push_service() -> AsyncIterator[PushService]:
    async with running_push_service() as service:
        yield service


@pytest.fixture
async def provider() -> AsyncIterator[WebPushProvider]:
    webpush = WebPushProvider.from_settings(settings())
    await webpush.start(_receipt)
    yield webpush
    await webpush.close()


async def test_the_push_service_decrypts_the_message_and_verifies_vapid(
    push_service: PushService, provider: WebPushProvider
) -> None:
    assert isinstance(provider, ChannelProvider)
    subscription = push_service.subscribe()
    message = outgoing(subscription.to_json())
    accepted = await provider.send(message)

    [delivered] = push_service.delivered_to(subscription)
    assert delivered.payload == {
        "title": "Thanks for coming by",
        "body": "your 10th coffee is free",
        "deep_link": "coffeeapp://rewards/10th-coffee",
        "image": "https://cdn.coffee.example/free-coffee.png",
        "data": {"offer_id": "coffee-10", "topic": "loyalty"},
        "message_id": str(message.message_id),
    }
    # The JWT verified with the key in k=, which is the key browsers subscribe with; for this origin.
    assert delivered.vapid_public_key == provider.application_server_key
    assert delivered.claims["aud"] == push_service.origin
    assert delivered.claims["sub"] == "mailto:push@coffee.example"
    assert time.time() < delivered.claims["exp"] <= time.time() + 24 * 3600
    assert delivered.headers["TTL"] == "86400"
    assert delivered.headers["Urgency"] == "normal"
    assert delivered.headers["Topic"] == "loyalty"
    assert accepted.provider == "webpush"
    assert accepted.provider_message_id.startswith(f"{push_service.origin}/messages/")

    # A transactional message is urgent; a topic that is no RFC 8030 topic is left out.
    receipt_ready = PushContent(title="Order", body="ready for pickup", data={"topic": "not a topic!"})
    await provider.send(outgoing(subscription.to_json(), receipt_ready, purpose=Purpose.TRANSACTIONAL))
    latest = push_service.delivered_to(subscription)[-1]
    assert latest.payload["body"] == "ready for pickup"
    assert latest.headers["Urgency"] == "high" and "Topic" not in latest.headers


async def test_a_gone_subscription_is_an_invalid_address(
    push_service: PushService, provider: WebPushProvider
) -> None:
    gone = push_service.subscribe()
    gone.answer = (410, {})
    with pytest.raises(ProviderFailure) as caught:
        await provider.send(outgoing(gone.to_json()))
    assert caught.value.kind is FailureKind.ADDRESS_INVALID
    assert "410" in caught.value.detail

    # An endpoint the push service does not know (404) is gone too.
    unknown = Subscription(
        id="x",
        endpoint=f"{push_service.origin}/push/unknown",
        private_key=_vapid_key(),
        auth_secret=b"a" * 16,
    )
    with pytest.raises(ProviderFailure) as caught:
        await provider.send(outgoing(unknown.to_json()))
    assert caught.value.kind is FailureKind.ADDRESS_INVALID
    assert not push_service.delivered


async def test_throttling_and_outages_are_transient_with_the_services_retry_after(
    push_service: PushService, provider: WebPushProvider
) -> None:
    subscription = push_service.subscribe()
    subscription.answer = (429, {"Retry-After": "120"})
    with pytest.raises(ProviderFailure) as caught:
        await provider.send(outgoing(subscription.to_json()))
    assert caught.value.kind is FailureKind.TRANSIENT
    assert caught.value.retry_after_s == 120

    later = format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    subscription.answer = (503, {"Retry-After": later})
    with pytest.raises(ProviderFailure) as caught:
        await provider.send(outgoing(subscription.to_json()))
    assert caught.value.kind is FailureKind.TRANSIENT
    assert caught.value.retry_after_s is not None and 80 <= caught.value.retry_after_s <= 90

    # The service back: the same message goes.
    subscription.answer = None
    await provider.send(outgoing(subscription.to_json()))
    assert len(push_service.delivered_to(subscription)) == 1


async def test_an_unreachable_push_service_is_transient(provider: WebPushProvider) -> None:
    nobody = Subscription(
        id="x",
        endpoint=f"http://127.0.0.1:{free_port('127.0.0.1')}/push/x",
        private_key=_vapid_key(),
        auth_secret=b"a" * 16,
    )
    with pytest.raises(ProviderFailure) as caught:
        await provider.send(outgoing(nobody.to_json()))
    assert caught.value.kind is FailureKind.TRANSIENT


async def test_a_stalled_push_service_is_transient_after_the_timeout(push_service: PushService) -> None:
    subscription = push_service.subscribe()
    subscription.delay_s = 3
    webpush = WebPushProvider(settings(timeout_s=0.5))
    await webpush.start(_receipt)
    try:
        with pytest.raises(ProviderFailure) as caught:
            await asyncio.wait_for(webpush.send(outgoing(subscription.to_json())), 5)
        assert caught.value.kind is FailureKind.TRANSIENT
    finally:
        await webpush.close()


async def test_a_payload_over_4_kb_is_refused_before_sending(
    push_service: PushService, provider: WebPushProvider
) -> None:
    subscription = push_service.subscribe()
    skeleton = outgoing(subscription.to_json(), PushContent(title="t", body=""))
    overhead = len(
        json.dumps({"title": "t", "body": "", "message_id": str(skeleton.message_id)}, separators=(",", ":"))
    )
    fits = PushContent(title="t", body="x" * (MAX_PAYLOAD_BYTES - overhead))
    await provider.send(outgoing(subscription.to_json(), fits, message_id=skeleton.message_id))
    [delivered] = push_service.delivered_to(subscription)
    assert len(delivered.plaintext) == MAX_PAYLOAD_BYTES
    assert delivered.body_size == 4096  # exactly what every push service must take

    too_big = PushContent(title="t", body="x" * (MAX_PAYLOAD_BYTES - overhead + 1))
    with pytest.raises(ProviderFailure) as caught:
        await provider.send(outgoing(subscription.to_json(), too_big, message_id=skeleton.message_id))
    assert caught.value.kind is FailureKind.PERMANENT
    assert len(push_service.delivered) == 1 and not push_service.refused


async def test_addresses_that_are_no_subscription_are_invalid(provider: WebPushProvider) -> None:
    secure_only = WebPushProvider.from_settings(settings(allow_http_loopback=False))
    await secure_only.start(_receipt)
    try:
        for webpush, address in [
            (provider, "not json"),
            (
                provider,
                json.dumps({"endpoint": "https://push.example.com/x", "keys": {"p256dh": "a", "auth": "b"}}),
            ),
            (
                provider,
                json.dumps(
                    {
                        "endpoint": "https://push.example.com/x",
                        "keys": {"p256dh": "BA" * 43, "auth": "a" * 22},
                    }
                ),
            ),
            (provider, json.dumps({"endpoint": "https://push.example.com/x"})),
            (
                provider,
                json.dumps({"endpoint": "http://push.example.com/x", "keys": {"p256dh": "a", "auth": "b"}}),
            ),
            (
                secure_only,
                json.dumps({"endpoint": "http://127.0.0.1:9/x", "keys": {"p256dh": "a", "auth": "b"}}),
            ),
        ]:
            with pytest.raises(ProviderFailure) as caught:
                await webpush.send(outgoing(address))
            assert caught.value.kind is FailureKind.ADDRESS_INVALID, address
    finally:
        await secure_only.close()


def test_the_vapid_key_is_read_from_pem_base64_or_a_file(tmp_path: Path) -> None:
    key = _vapid_key()
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_file = tmp_path / "vapid.pem"
    key_file.write_text(_pem(key))
    forms = [
        settings(vapid_private_key=_pem(key)),
        settings(vapid_private_key=_raw_b64(key)),
        settings(vapid_private_key=base64.urlsafe_b64encode(der).decode()),
        settings(vapid_private_key=None, vapid_private_key_file=key_file),
    ]
    assert len({WebPushProvider(s).application_server_key for s in forms}) == 1

    with pytest.raises(pydantic.ValidationError, match="neither PEM nor base64url"):
        settings(vapid_private_key="not a key")
    rsa_pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        .decode()
    )
    with pytest.raises(pydantic.ValidationError, match="P-256"):
        settings(vapid_private_key=rsa_pem)
    with pytest.raises(pydantic.ValidationError, match="mailto"):
        settings(vapid_subject="push@coffee.example")
    assert not WebPushSettings(vapid_subject="mailto:a@b.example").configured
    assert not WebPushSettings(vapid_private_key="", vapid_subject="mailto:a@b.example").configured
    # Any contact the settings take signs (py_vapid alone would refuse a domain without a dot).
    intranet = WebPushProvider(settings(vapid_subject="mailto:push@intranet"))
    assert intranet._vapid_authorization("http://127.0.0.1:9").startswith("vapid t=")


async def _contacts(neighbours: Neighbours, *identifiers: tuple[str, str]) -> PersonContacts:
    """Resolve the identifiers at identity (as the app would, through profile's tracking) and answer the
    person's contacts as identity then lists them."""
    resolved = await neighbours.identity.ResolvePerson(
        identity_pb2.ResolvePersonRequest(
            identifiers=[common_pb2.Identifier(type=t, value=v) for t, v in identifiers], source="app"
        )
    )
    person = (
        await neighbours.identity.GetPerson(
            identity_pb2.GetPersonRequest(person_id=resolved.resolution.person_id)
        )
    ).person
    by_type: dict[str, list[str]] = {}
    for identifier in person.identifiers:
        by_type.setdefault(identifier.type, []).append(identifier.value)
    return PersonContacts(person_id=uuid.UUID(person.id), identifiers=by_type)


async def test_a_subscription_kept_by_identity_is_delivered_to(
    neighbours: Neighbours, push_service: PushService, provider: WebPushProvider
) -> None:
    """The browser registers its subscription at identity with the loyalty card; what identity keeps (its
    canonical form) is the address the provider delivers to; after the browser subscribed anew, the newest."""
    old, new = push_service.subscribe(), push_service.subscribe()
    card = f"card-{uuid.uuid4().hex[:10]}"
    await _contacts(neighbours, ("loyalty_card", card), ("web_push_subscription", old.to_json()))
    contacts = await _contacts(neighbours, ("loyalty_card", card), ("web_push_subscription", new.to_json()))
    assert len(contacts.identifiers["web_push_subscription"]) == 2
    address = provider.address_of(contacts)
    assert address is not None and address != new.to_json()  # canonical, not the browser's layout
    assert json.loads(address)["endpoint"] == new.endpoint
    assert [json.loads(a)["endpoint"] for a in provider.addresses_of(contacts)] == [
        new.endpoint,
        old.endpoint,
    ]

    await provider.send(outgoing(address, person_id=contacts.person_id))
    [delivered] = push_service.delivered_to(new)
    assert delivered.payload["body"] == "your 10th coffee is free"
    assert not push_service.delivered_to(old)
    assert provider.address_of(PersonContacts(person_id=uuid.uuid4())) is None
