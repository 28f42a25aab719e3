"""The HTTP SMS provider against a local server speaking Twilio's Messages API, and the gateway's callback
endpoints receiving the vendor's signed status callbacks and inbound messages."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from omni_gateway.domain import Channel, Purpose
from omni_gateway.providers.base import (
    ChannelProvider,
    FailureKind,
    Outgoing,
    ProviderFailure,
    Receipt,
    ReceiptKind,
    SmsContent,
)
from omni_gateway.providers.http_sms import (
    HttpSmsProvider,
    HttpSmsSettings,
    http_sms_provider,
    twilio_signature,
)
from omni_gateway.sms_inbound import sms_callbacks_app
from omni_gateway.sms_keywords import DEFAULT_KEYWORDS, SmsKeywords
from omni_kit.embedded import free_port

from .sms_vendor import SmsVendor, sign
from .support import until

pytestmark = pytest.mark.integration

NUMBER = "+4915112345678"
FROM = "+15005550006"


class Sink:
    def __init__(self) -> None:
        self.receipts: list[Receipt] = []

    async def __call__(self, receipt: Receipt) -> None:
        self.receipts.append(receipt)


def _outgoing(text: str, address: str = NUMBER) -> Outgoing:
    return Outgoing(
        message_id=uuid.uuid4(),
        person_id=uuid.uuid4(),
        channel=Channel.SMS,
        purpose=Purpose.TRANSACTIONAL,
        address=address,
        content=SmsContent(text),
    )


@pytest.fixture
async def vendor() -> AsyncIterator[SmsVendor]:
    server = await SmsVendor().start()
    yield server
    await server.stop()


class Gateway:
    """The provider, started, and the callback endpoints mounted under /sms of an HTTP server."""

    def __init__(self, provider: HttpSmsProvider, sink: Sink, base: str) -> None:
        self.provider, self.sink, self.base = provider, sink, base


@pytest.fixture
async def gateway(vendor: SmsVendor) -> AsyncIterator[Gateway]:
    port = free_port("127.0.0.1")
    base = f"http://127.0.0.1:{port}"
    provider = http_sms_provider(
        HttpSmsSettings(
            base_url=vendor.url,
            account_sid=vendor.account_sid,
            auth_token=vendor.auth_token,  # type: ignore[arg-type]
            from_number=FROM,
            status_callback_url=f"{base}/sms/twilio/status",
            inbound_url=f"{base}/sms/twilio/inbound",
        )
    )
    sink = Sink()
    await provider.start(sink)
    keywords = SmsKeywords(identity=None, profile=None)  # type: ignore[arg-type]  # HELP asks neither
    root = web.Application()
    root.add_subapp("/sms", sms_callbacks_app(provider, keywords.handle_inbound))
    runner = web.AppRunner(root)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield Gateway(provider, sink, base)
    await runner.cleanup()
    await provider.close()


def test_the_signature_is_twilio_s_documented_example() -> None:
    # The example of Twilio's webhook security page: this token, URL and parameters sign to this value.
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+12349013030",
        "Digits": "1234",
        "From": "+12349013030",
        "To": "+18005551212",
    }
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert twilio_signature("12345", url, params) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    assert sign("12345", url, params) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


async def test_send_and_signed_status_callbacks_become_a_receipt(vendor: SmsVendor, gateway: Gateway) -> None:
    assert isinstance(gateway.provider, ChannelProvider)
    outgoing = _outgoing("Your order 1234 has shipped")
    accepted = await gateway.provider.send(outgoing)

    [message] = vendor.messages
    assert (message.to, message.from_, message.body) == (NUMBER, FROM, "Your order 1234 has shipped")
    assert (
        message.status_callback == f"{gateway.base}/sms/twilio/status?omni_message_id={outgoing.message_id}"
    )
    assert accepted.provider == "http-sms"
    assert accepted.provider_message_id == message.sid
    assert accepted.details == {"encoding": "GSM-7", "segments": 1, "status": "queued"}

    await until(lambda: len(vendor.callbacks) == 2)
    assert [status for status, _ in vendor.callbacks] == [200, 200]
    [receipt] = gateway.sink.receipts  # "sent" is not final
    assert receipt.kind is ReceiptKind.DELIVERED
    assert receipt.provider_message_id == message.sid
    assert receipt.provider_event_id == f"{message.sid}:delivered"
    assert receipt.message_id == outgoing.message_id


async def test_undelivered_to_an_unknown_handset_is_a_failed_receipt_for_a_bad_address(
    vendor: SmsVendor, gateway: Gateway
) -> None:
    vendor.unknown_handsets.add(NUMBER)
    await gateway.provider.send(_outgoing("hello"))
    await until(lambda: len(gateway.sink.receipts) == 1)
    [receipt] = gateway.sink.receipts
    assert receipt.kind is ReceiptKind.FAILED
    assert receipt.address_invalid
    assert receipt.detail == "undelivered 30005"


async def test_a_callback_with_a_bad_signature_is_refused(vendor: SmsVendor, gateway: Gateway) -> None:
    url = f"{gateway.base}/sms/twilio/status"
    params = {"MessageSid": "SM" + "1" * 32, "MessageStatus": "delivered", "AccountSid": vendor.account_sid}
    good = sign(vendor.auth_token, url, params)
    forged = sign("another-token", url, params)
    assert await vendor.post_signed(url, params, signature=forged) == 403
    assert await vendor.post_signed(url, {**params, "MessageStatus": "failed"}, signature=good) == 403
    assert await vendor.post_signed(url, params, signature="") == 403
    assert gateway.sink.receipts == []
    assert await vendor.post_signed(url, params, signature=good) == 200
    assert len(gateway.sink.receipts) == 1


async def test_help_and_keywords_arrive_as_signed_inbound_messages(
    vendor: SmsVendor, gateway: Gateway
) -> None:
    status, twiml = await vendor.incoming(f"{gateway.base}/sms/twilio/inbound", NUMBER, "HELP")
    assert status == 200
    assert twiml == (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Message>'
        + DEFAULT_KEYWORDS["en"].help_reply.replace("&", "&amp;")
        + "</Message></Response>"
    )
    status, twiml = await vendor.incoming(f"{gateway.base}/sms/twilio/inbound", NUMBER, "see you tomorrow")
    assert (status, twiml) == (200, '<?xml version="1.0" encoding="UTF-8"?><Response></Response>')


@pytest.mark.parametrize(
    ("setup", "address", "kind"),
    [
        ({"throttle": True}, NUMBER, FailureKind.TRANSIENT),
        ({"auth_token": "rotated"}, NUMBER, FailureKind.TRANSIENT),
        ({}, "+4915", FailureKind.ADDRESS_INVALID),
    ],
)
async def test_failures_are_classified(
    vendor: SmsVendor, gateway: Gateway, setup: dict[str, Any], address: str, kind: FailureKind
) -> None:
    for name, value in setup.items():
        setattr(vendor, name, value)
    with pytest.raises(ProviderFailure) as failure:
        await gateway.provider.send(_outgoing("hi", address))
    assert failure.value.kind is kind
    if setup.get("throttle"):
        assert failure.value.retry_after_s == 3.0
        assert "20429" in failure.value.detail


async def test_the_vendor_s_invalid_number_answer_is_an_invalid_address(
    vendor: SmsVendor, gateway: Gateway
) -> None:
    # Well-formed, but the vendor knows it is no valid number (its lookup; Twilio's test number +15005550001).
    vendor.invalid_numbers.add(NUMBER)
    with pytest.raises(ProviderFailure) as failure:
        await gateway.provider.send(_outgoing("hi"))
    assert failure.value.kind is FailureKind.ADDRESS_INVALID
    assert "21211" in failure.value.detail
    assert vendor.requests["create"] == 1


async def test_a_body_over_the_api_s_limit_is_refused_before_the_api(
    vendor: SmsVendor, gateway: Gateway
) -> None:
    with pytest.raises(ProviderFailure) as failure:
        await gateway.provider.send(_outgoing("x" * 1601))
    assert failure.value.kind is FailureKind.PERMANENT
    assert vendor.requests["create"] == 0


async def test_an_api_that_is_down_is_transient() -> None:
    port = free_port("127.0.0.1")
    provider = http_sms_provider(
        HttpSmsSettings(
            base_url=f"http://127.0.0.1:{port}",
            account_sid="AC" + "1" * 32,
            auth_token="t",  # type: ignore[arg-type]
            from_number=FROM,
            timeout_s=2.0,
        )
    )
    await provider.start(Sink())
    try:
        with pytest.raises(ProviderFailure) as failure:
            await provider.send(_outgoing("hi"))
        assert failure.value.kind is FailureKind.TRANSIENT
        assert "cannot reach" in failure.value.detail
    finally:
        await provider.close()
