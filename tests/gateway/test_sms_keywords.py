"""Keywords texted to the SMSC (or through the HTTP vendor) change SMS consent in a real profile service for the person identity finds by
the number, and the confirmation reply reaches the SMSC."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from aiohttp import web

from omni.common.v1 import common_pb2
from omni.identity.v1 import identity_pb2, identity_pb2_grpc
from omni.profile.v1 import profile_pb2
from omni_gateway.providers.http_sms import HttpSmsProvider, HttpSmsSettings
from omni_gateway.providers.smpp import SmppProvider, SmppSettings
from omni_gateway.sms_inbound import sms_callbacks_app
from omni_gateway.sms_keywords import DEFAULT_KEYWORDS, SmsKeywords
from omni_gateway.sms_text import decode, plan
from omni_kit.embedded import free_port

from .sms_vendor import SmsVendor
from .smsc import TestSmsc
from .support import Neighbours, unique


async def _person_with_phone(neighbours: Neighbours, phone: str) -> str:
    response = await neighbours.identity.ResolvePerson(
        identity_pb2.ResolvePersonRequest(
            identifiers=[
                common_pb2.Identifier(type="phone", value=phone),
                common_pb2.Identifier(type="anonymous_id", value=unique("cookie-")),
            ],
            source="app",
        )
    )
    person_id = response.resolution.person_id
    await neighbours.profile.SetConsent(
        profile_pb2.SetConsentRequest(
            person_id=person_id,
            consent=profile_pb2.Consent(
                channel=common_pb2.CHANNEL_SMS,
                state=profile_pb2.CONSENT_STATE_GRANTED,
                purpose=profile_pb2.CONSENT_PURPOSE_MARKETING,
                source="app_signup",
            ),
        )
    )
    return person_id


async def _sms_consent(neighbours: Neighbours, person_id: str) -> profile_pb2.Consent | None:
    response = await neighbours.profile.GetProfile(profile_pb2.GetProfileRequest(person_id=person_id))
    for consent in response.profile.consents:
        if consent.channel == common_pb2.CHANNEL_SMS:
            return consent
    return None


@pytest.fixture
async def smsc() -> AsyncIterator[TestSmsc]:
    server = await TestSmsc().start()
    yield server
    await server.stop()


@pytest.fixture
async def keywords(neighbours: Neighbours) -> SmsKeywords:
    return SmsKeywords(neighbours.identity, neighbours.profile)


@pytest.fixture
async def provider(smsc: TestSmsc, keywords: SmsKeywords) -> AsyncIterator[SmppProvider]:
    settings = SmppSettings(
        host="127.0.0.1", port=smsc.port, system_id="omni", password="secret", source_addr="12345"
    )
    provider = SmppProvider(settings, keywords.handle_inbound)

    async def ignore(_: object) -> None:
        return None

    await provider.start(ignore)
    yield provider
    await provider.close()


def _number() -> str:
    """A valid German mobile number no other test uses."""
    return "+49151" + unique()[:8].translate(str.maketrans("abcdef", "123456"))


async def test_stop_from_the_handset_revokes_sms_consent_and_is_confirmed(
    neighbours: Neighbours, smsc: TestSmsc, provider: SmppProvider
) -> None:
    phone = _number()
    person_id = await _person_with_phone(neighbours, phone)
    before = await _sms_consent(neighbours, person_id)
    assert before is not None and before.state == profile_pb2.CONSENT_STATE_GRANTED

    assert await smsc.deliver(phone[1:], "Stop") == 0

    [reply] = await smsc.until_submitted(1)
    assert reply.destination == phone[1:]
    assert reply.source == "12345"
    assert reply.user_data.decode("latin-1") == DEFAULT_KEYWORDS["en"].stop_reply
    consent = await _sms_consent(neighbours, person_id)
    assert consent is not None
    assert consent.state == profile_pb2.CONSENT_STATE_REVOKED
    assert consent.source == "sms_keyword"
    assert not consent.contact_allowed

    # START subscribes again, and is confirmed.
    assert await smsc.deliver(phone[1:], "START") == 0
    await smsc.until_submitted(2)
    assert smsc.submitted[1].user_data.decode("latin-1") == DEFAULT_KEYWORDS["en"].start_reply
    consent = await _sms_consent(neighbours, person_id)
    assert consent is not None and consent.state == profile_pb2.CONSENT_STATE_GRANTED


@pytest.mark.parametrize(("word", "language"), [("STOPP", "de"), ("afmeld", "da"), ("Arrêt", "fr")])
async def test_stop_in_other_languages_is_answered_in_them(
    neighbours: Neighbours, smsc: TestSmsc, provider: SmppProvider, word: str, language: str
) -> None:
    phone = _number()
    person_id = await _person_with_phone(neighbours, phone)
    assert await smsc.deliver(phone[1:], word) == 0
    expected = DEFAULT_KEYWORDS[language].stop_reply
    parts = await smsc.until_submitted(plan(expected).segments)  # the French reply is UCS-2, in 2 segments
    assert "".join(decode(part.user_data, part.data_coding) for part in parts) == expected
    consent = await _sms_consent(neighbours, person_id)
    assert consent is not None and consent.state == profile_pb2.CONSENT_STATE_REVOKED


async def test_stop_from_an_unknown_number_is_still_confirmed(
    neighbours: Neighbours, smsc: TestSmsc, provider: SmppProvider
) -> None:
    phone = _number()
    assert await smsc.deliver(phone[1:], "UNSUBSCRIBE") == 0
    [reply] = await smsc.until_submitted(1)
    assert reply.user_data.decode("latin-1") == DEFAULT_KEYWORDS["en"].stop_reply


async def test_help_answers_without_changing_consent(neighbours: Neighbours, keywords: SmsKeywords) -> None:
    phone = _number()
    person_id = await _person_with_phone(neighbours, phone)
    assert await keywords.handle_inbound(phone, " help ") == DEFAULT_KEYWORDS["en"].help_reply
    assert await keywords.handle_inbound(phone, "Hilfe") == DEFAULT_KEYWORDS["de"].help_reply
    assert await keywords.handle_inbound(phone, "stop sending me pizza ads") is None
    consent = await _sms_consent(neighbours, person_id)
    assert consent is not None and consent.state == profile_pb2.CONSENT_STATE_GRANTED


async def test_stop_through_the_http_vendor_revokes_and_is_answered_as_twiml(
    neighbours: Neighbours, keywords: SmsKeywords
) -> None:
    vendor = await SmsVendor().start()
    port = free_port("127.0.0.1")
    inbound_url = f"http://127.0.0.1:{port}/sms/twilio/inbound"
    provider = HttpSmsProvider(
        HttpSmsSettings(
            base_url=vendor.url,
            account_sid=vendor.account_sid,
            auth_token=vendor.auth_token,  # type: ignore[arg-type]
            from_number="+15005550006",
            inbound_url=inbound_url,
        )
    )
    root = web.Application()
    root.add_subapp("/sms", sms_callbacks_app(provider, keywords.handle_inbound))
    runner = web.AppRunner(root)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        phone = _number()
        person_id = await _person_with_phone(neighbours, phone)
        status, twiml = await vendor.incoming(inbound_url, phone, "STOPALL")
        assert status == 200
        assert f"<Message>{DEFAULT_KEYWORDS['en'].stop_reply}</Message>" in twiml
        consent = await _sms_consent(neighbours, person_id)
        assert consent is not None and consent.state == profile_pb2.CONSENT_STATE_REVOKED
    finally:
        await runner.cleanup()
        await vendor.stop()


async def test_stop_is_confirmed_even_when_identity_cannot_be_reached() -> None:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{free_port('127.0.0.1')}")
    try:
        stub: Any = identity_pb2_grpc.IdentityServiceStub(channel)
        keywords = SmsKeywords(stub, None, call_timeout_s=0.3, attempts=2, retry_delay_s=0.01)  # type: ignore[arg-type]
        assert await keywords.handle_inbound(_number(), "STOP") == DEFAULT_KEYWORDS["en"].stop_reply
    finally:
        await channel.close()
