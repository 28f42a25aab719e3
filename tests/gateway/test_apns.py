"""The APNs provider against a local APNs speaking Apple's HTTP/2 protocol (tests/gateway/apns_server.py):
the provider token verified with the key's public half, the request's headers and payload as Apple
documents them, the answers mapped (a token gone is ADDRESS_INVALID, 429/503 transient, an expired provider
token made anew once)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from omni_gateway.domain import Channel, Purpose
from omni_gateway.providers.apns import ApnsProvider, ApnsSettings, create
from omni_gateway.providers.base import (
    ChannelProvider,
    FailureKind,
    Outgoing,
    PersonContacts,
    ProviderFailure,
    PushContent,
    Receipt,
)

from .apns_server import KEY_ID, TEAM_ID, TOPIC, LocalApns, running_apns

pytestmark = pytest.mark.integration

KEY = ec.generate_private_key(ec.SECP256R1())
PEM = KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
).decode()


def _token() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


def _outgoing(device: str, purpose: Purpose = Purpose.MARKETING, **content: object) -> Outgoing:
    fields: dict[str, object] = {"title": "Thanks for coming by", "body": "your 10th coffee is free"}
    fields.update(content)
    return Outgoing(
        message_id=uuid.uuid4(),
        person_id=uuid.uuid4(),
        channel=Channel.PUSH,
        purpose=purpose,
        address=device,
        content=PushContent(**fields),  # type: ignore[arg-type]
    )


async def _nothing(receipt: Receipt) -> None:
    return None


@pytest.fixture
async def apns() -> AsyncIterator[LocalApns]:
    async with running_apns(KEY.public_key()) as server:
        yield server


@pytest.fixture
async def provider(apns: LocalApns) -> AsyncIterator[ApnsProvider]:
    made = create(
        "apns",
        {
            "key": PEM,
            "key_id": KEY_ID,
            "team_id": TEAM_ID,
            "topic": TOPIC,
            "base_url": apns.url,
            "ttl_s": 3600,
        },
        {},
    )
    await made.start(_nothing)
    yield made
    await made.close()


async def test_a_notification_goes_over_http2_with_a_verified_provider_token_and_apple_s_headers(
    apns: LocalApns, provider: ApnsProvider
) -> None:
    assert isinstance(provider, ChannelProvider)
    device = _token()
    outgoing = _outgoing(
        device,
        Purpose.TRANSACTIONAL,
        deep_link="coffee://offers/10",
        image_url="https://cdn.coffee.example/cup.png",
        data={"topic": "loyalty", "offer": "10th-free"},
    )

    accepted = await provider.send(outgoing)

    [taken] = apns.delivered
    assert taken.http_version == "2"
    assert taken.device_token == device
    assert accepted.provider_message_id == str(outgoing.message_id) == taken.headers["apns-id"]
    assert taken.headers["apns-topic"] == TOPIC
    assert taken.headers["apns-push-type"] == "alert"
    assert taken.headers["apns-priority"] == "10"
    assert abs(int(taken.headers["apns-expiration"]) - (time.time() + 3600)) < 60
    assert taken.headers["apns-collapse-id"] == "loyalty"
    assert taken.payload["aps"] == {
        "alert": {"title": "Thanks for coming by", "body": "your 10th coffee is free"},
        "sound": "default",
        "mutable-content": 1,
    }
    assert taken.payload["deep_link"] == "coffee://offers/10"
    assert taken.payload["message_id"] == str(outgoing.message_id)
    assert taken.payload["offer"] == "10th-free"

    await provider.send(_outgoing(_token()))
    assert apns.delivered[1].headers["apns-priority"] == "5"  # marketing
    assert len(set(apns.provider_tokens_seen)) == 1  # one provider token for every request


async def test_a_token_apns_reports_gone_is_an_invalid_address(
    apns: LocalApns, provider: ApnsProvider
) -> None:
    gone, bad = _token(), _token()
    apns.unregistered.add(gone)
    apns.bad_tokens.add(bad)
    for device, reason in ((gone, "Unregistered"), (bad, "BadDeviceToken")):
        with pytest.raises(ProviderFailure) as refused:
            await provider.send(_outgoing(device))
        assert refused.value.kind is FailureKind.ADDRESS_INVALID
        assert reason in refused.value.detail
    with pytest.raises(ProviderFailure) as malformed:
        await provider.send(_outgoing("not-a-device-token"))
    assert malformed.value.kind is FailureKind.ADDRESS_INVALID
    assert apns.delivered == []


async def test_throttling_and_unavailability_are_transient(apns: LocalApns, provider: ApnsProvider) -> None:
    throttled, down = _token(), _token()
    apns.throttled.add(throttled)
    apns.unavailable.add(down)
    for device, status in ((throttled, "429 TooManyRequests"), (down, "503 ServiceUnavailable")):
        with pytest.raises(ProviderFailure) as failed:
            await provider.send(_outgoing(device))
        assert failed.value.kind is FailureKind.TRANSIENT
        assert status in failed.value.detail


async def test_an_expired_provider_token_is_made_anew_once(apns: LocalApns, provider: ApnsProvider) -> None:
    await provider.send(_outgoing(_token()))
    first = provider.provider_token()
    apns.expire_tokens_before = time.time()  # every token made so far is called expired

    await asyncio.sleep(1.1)  # a new token has a later iat (whole seconds)
    await provider.send(_outgoing(_token()))

    assert provider.provider_token() != first
    assert apns.refused == [(403, "ExpiredProviderToken")]
    assert len(apns.delivered) == 2


async def test_a_payload_over_4_kib_is_refused_before_sending(
    apns: LocalApns, provider: ApnsProvider
) -> None:
    with pytest.raises(ProviderFailure) as refused:
        await provider.send(_outgoing(_token(), body="x" * 5000))
    assert refused.value.kind is FailureKind.PERMANENT
    assert apns.delivered == [] and apns.refused == []


async def test_apns_down_is_transient() -> None:
    provider = ApnsProvider(
        ApnsSettings(key=PEM, key_id=KEY_ID, team_id=TEAM_ID, topic=TOPIC, base_url="http://127.0.0.1:1")  # type: ignore[arg-type]
    )
    await provider.start(_nothing)
    try:
        with pytest.raises(ProviderFailure) as failed:
            await provider.send(_outgoing(_token()))
        assert failed.value.kind is FailureKind.TRANSIENT
    finally:
        await provider.close()


def test_the_address_is_the_newest_apns_token_of_the_person() -> None:
    provider = ApnsProvider(ApnsSettings(key=PEM, key_id=KEY_ID, team_id=TEAM_ID, topic=TOPIC))  # type: ignore[arg-type]
    older, newer, fcm = _token(), _token(), "fcm-token:APA91bH_something"
    person = PersonContacts(person_id=uuid.uuid4(), identifiers={"push_token": (older, fcm, newer)})
    assert provider.address_of(person) == newer
    assert provider.addresses_of(person) == (newer, older)


def test_a_key_that_is_not_p256_is_refused_without_showing_it() -> None:
    with pytest.raises(ValueError) as refused:
        ApnsSettings(
            key="-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----",
            key_id=KEY_ID,
            team_id=TEAM_ID,
            topic=TOPIC,
        )  # type: ignore[arg-type]
    assert "nope" not in str(refused.value)
