"""FCM HTTP v1 against a local server speaking its API and Google's token endpoint (fcm_server.py)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import pydantic
import pytest

from omni_gateway.domain import Channel, Purpose
from omni_gateway.providers.base import (
    ChannelProvider,
    FailureKind,
    Outgoing,
    PersonContacts,
    ProviderFailure,
    PushContent,
)
from omni_gateway.providers.fcm import FcmProvider, FcmSettings
from omni_kit.embedded import free_port

from .fcm_server import FcmServer, running_fcm_server

COFFEE = PushContent(
    title="Thanks for coming by",
    body="your 10th coffee is free",
    deep_link="https://coffee.example/rewards/10th-coffee",
    image_url="https://cdn.coffee.example/free-coffee.png",
    data={"offer_id": "coffee-10", "topic": "loyalty"},
)


def outgoing(token: str, content: PushContent = COFFEE, **overrides: object) -> Outgoing:
    values: dict[str, object] = {
        "message_id": uuid.uuid4(),
        "person_id": uuid.uuid4(),
        "channel": Channel.PUSH,
        "purpose": Purpose.MARKETING,
        "address": token,
        "content": content,
        **overrides,
    }
    return Outgoing(**values)  # type: ignore[arg-type]


async def _no_receipts(_: object) -> None:
    raise AssertionError("FCM reports no receipts")


@pytest.fixture
async def fcm_server() -> AsyncIterator[FcmServer]:
    async with running_fcm_server() as server:
        yield server


def settings_for(server: FcmServer, **overrides: object) -> FcmSettings:
    values: dict[str, object] = {
        "service_account_json": server.service_account_json(),
        "base_url": server.origin,
        "timeout_s": 5.0,
        **overrides,
    }
    return FcmSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def provider(fcm_server: FcmServer) -> AsyncIterator[FcmProvider]:
    fcm = FcmProvider.from_settings(settings_for(fcm_server))
    await fcm.start(_no_receipts)
    yield fcm
    await fcm.close()


async def test_a_token_is_exchanged_once_and_the_message_sent_in_the_v1_format(
    fcm_server: FcmServer, provider: FcmProvider
) -> None:
    assert isinstance(provider, ChannelProvider)
    token = "fcm-token-" + uuid.uuid4().hex
    message = outgoing(token)
    accepted = await asyncio.gather(provider.send(message), provider.send(outgoing(token)))

    # One grant for both concurrent sends: the assertion verified with the account's public key.
    assert fcm_server.grants == 1 and not fcm_server.refused_grants
    assert accepted[0].provider == "fcm"
    assert accepted[0].provider_message_id.startswith(f"projects/{fcm_server.project_id}/messages/")
    sent = fcm_server.messages[0]
    assert sent["token"] == token
    assert sent["notification"] == {
        "title": "Thanks for coming by",
        "body": "your 10th coffee is free",
        "image": "https://cdn.coffee.example/free-coffee.png",
    }
    assert sent["data"]["deep_link"] == "https://coffee.example/rewards/10th-coffee"
    assert sent["data"]["offer_id"] == "coffee-10"
    assert {m["data"]["message_id"] for m in fcm_server.messages} >= {str(message.message_id)}
    assert sent["android"] == {"ttl": "86400s", "priority": "NORMAL", "collapse_key": "loyalty"}
    assert sent["apns"]["headers"]["apns-priority"] == "5"
    assert sent["apns"]["headers"]["apns-collapse-id"] == "loyalty"
    assert sent["webpush"]["fcm_options"] == {"link": "https://coffee.example/rewards/10th-coffee"}

    # The cached access token serves later sends too; a transactional one is urgent on every platform.
    await provider.send(outgoing(token, purpose=Purpose.TRANSACTIONAL))
    assert fcm_server.grants == 1
    urgent = fcm_server.messages[-1]
    assert urgent["android"]["priority"] == "HIGH" and urgent["apns"]["headers"]["apns-priority"] == "10"
    assert urgent["webpush"]["headers"]["Urgency"] == "high"


async def test_an_access_token_revoked_early_is_renewed_and_the_send_repeated(
    fcm_server: FcmServer, provider: FcmProvider
) -> None:
    await provider.send(outgoing("tok-a"))
    fcm_server.expire_tokens()
    await provider.send(outgoing("tok-b"))
    assert fcm_server.grants == 2
    assert [m["token"] for m in fcm_server.messages] == ["tok-a", "tok-b"]


async def test_an_access_token_is_renewed_before_it_expires(fcm_server: FcmServer) -> None:
    fcm_server.token_lifetime_s = 1  # renewed when half its life is gone, at the latest
    fcm = FcmProvider(settings_for(fcm_server))
    await fcm.start(_no_receipts)
    try:
        await fcm.send(outgoing("tok-a"))
        await asyncio.sleep(0.6)
        await fcm.send(outgoing("tok-b"))
    finally:
        await fcm.close()
    assert fcm_server.grants == 2 and len(fcm_server.messages) == 2


async def test_an_unregistered_token_is_an_invalid_address(
    fcm_server: FcmServer, provider: FcmProvider
) -> None:
    fcm_server.unregistered.add("uninstalled")
    with pytest.raises(ProviderFailure) as caught:
        await provider.send(outgoing("uninstalled"))
    assert caught.value.kind is FailureKind.ADDRESS_INVALID
    assert "UNREGISTERED" in caught.value.detail
    assert not fcm_server.messages


async def test_quota_and_outages_are_transient_with_retry_after(
    fcm_server: FcmServer, provider: FcmProvider
) -> None:
    fcm_server.queue(429, "QUOTA_EXCEEDED", retry_after="60")
    with pytest.raises(ProviderFailure) as caught:
        await provider.send(outgoing("tok"))
    assert caught.value.kind is FailureKind.TRANSIENT and caught.value.retry_after_s == 60
    assert "QUOTA_EXCEEDED" in caught.value.detail

    fcm_server.queue(503, "UNAVAILABLE", retry_after="5")
    with pytest.raises(ProviderFailure) as caught:
        await provider.send(outgoing("tok"))
    assert caught.value.kind is FailureKind.TRANSIENT and caught.value.retry_after_s == 5

    await provider.send(outgoing("tok"))
    assert len(fcm_server.messages) == 1


async def test_a_stalled_api_is_transient_after_the_timeout(fcm_server: FcmServer) -> None:
    fcm_server.delay_s = 3
    fcm = FcmProvider(settings_for(fcm_server, timeout_s=0.5))
    await fcm.start(_no_receipts)
    try:
        with pytest.raises(ProviderFailure) as caught:
            await asyncio.wait_for(fcm.send(outgoing("tok")), 5)
        assert caught.value.kind is FailureKind.TRANSIENT
    finally:
        await fcm.close()


async def test_an_invalid_argument_is_permanent(fcm_server: FcmServer, provider: FcmProvider) -> None:
    fcm_server.queue(400, "INVALID_ARGUMENT")
    with pytest.raises(ProviderFailure) as caught:
        await provider.send(outgoing("tok"))
    assert caught.value.kind is FailureKind.PERMANENT
    # Data FCM reserves is refused before anything is sent.
    with pytest.raises(ProviderFailure) as caught:
        await provider.send(outgoing("tok", PushContent(title="t", body="b", data={"google.x": "1"})))
    assert caught.value.kind is FailureKind.PERMANENT
    assert not fcm_server.messages


async def test_refusals_of_our_credentials_are_transient_and_of_the_token_permanent(
    fcm_server: FcmServer, provider: FcmProvider
) -> None:
    # The project's API not enabled, a role missing: ours to fix; messages wait.
    fcm_server.queue(403, "PERMISSION_DENIED")
    with pytest.raises(ProviderFailure) as caught:
        await provider.send(outgoing("tok"))
    assert caught.value.kind is FailureKind.TRANSIENT
    # A token of another project, the APNs key refused at FCM: this message does not go this way, and a
    # new access token would not change that (no second grant).
    fcm_server.queue(403, "SENDER_ID_MISMATCH")
    fcm_server.queue(401, "THIRD_PARTY_AUTH_ERROR")
    for _ in range(2):
        with pytest.raises(ProviderFailure) as caught:
            await provider.send(outgoing("tok"))
        assert caught.value.kind is FailureKind.PERMANENT
    assert fcm_server.grants == 1 and not fcm_server.messages


async def test_a_grant_refused_or_unreachable_is_transient(fcm_server: FcmServer) -> None:
    # A service account whose key the token endpoint does not know (a deleted key).
    other = FcmServer(origin=fcm_server.origin)
    account = json.loads(other.service_account_json())
    fcm = FcmProvider(settings_for(fcm_server, service_account_json=json.dumps(account)))
    await fcm.start(_no_receipts)
    try:
        with pytest.raises(ProviderFailure) as caught:
            await fcm.send(outgoing("tok"))
        assert caught.value.kind is FailureKind.TRANSIENT and "access token refused" in caught.value.detail
        assert fcm_server.refused_grants and not fcm_server.messages
    finally:
        await fcm.close()

    account["token_uri"] = f"http://127.0.0.1:{free_port('127.0.0.1')}/token"
    unreachable = FcmProvider(settings_for(fcm_server, service_account_json=json.dumps(account)))
    await unreachable.start(_no_receipts)
    try:
        with pytest.raises(ProviderFailure) as caught:
            await unreachable.send(outgoing("tok"))
        assert caught.value.kind is FailureKind.TRANSIENT
    finally:
        await unreachable.close()


def test_settings_read_the_service_account(fcm_server: FcmServer, tmp_path: object) -> None:
    settings = settings_for(fcm_server)
    assert FcmProvider(settings).project_id == fcm_server.project_id
    assert FcmProvider(settings_for(fcm_server, project_id="other-project")).project_id == "other-project"
    assert not FcmSettings().configured
    assert not FcmSettings(service_account_json="").configured  # type: ignore[arg-type]
    with pytest.raises(pydantic.ValidationError):
        settings_for(fcm_server, service_account_json='{"type": "service_account"}')
    account = json.loads(fcm_server.service_account_json())
    account["private_key"] = "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n"
    with pytest.raises((pydantic.ValidationError, ValueError)):
        settings_for(fcm_server, service_account_json=json.dumps(account))
    contacts = PersonContacts(person_id=uuid.uuid4(), identifiers={"push_token": ["tok-1", "tok-2"]})
    # Identity lists the oldest first; the newest is tried first.
    assert FcmProvider(settings).address_of(contacts) == "tok-2"
    assert FcmProvider(settings).addresses_of(contacts) == ("tok-2", "tok-1")
