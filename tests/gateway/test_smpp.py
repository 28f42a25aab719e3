"""The SMPP provider against the test SMSC (a real SMPP server on a local port): submits, receipts, failures,
segments, keep-alive and binding again after the SMSC goes away."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from omni_gateway.domain import Channel, Purpose
from omni_gateway.providers.base import (
    ChannelProvider,
    FailureKind,
    Outgoing,
    PersonContacts,
    ProviderFailure,
    Receipt,
    ReceiptKind,
    SmsContent,
)
from omni_gateway.providers.smpp import SmppProvider, SmppSettings, smpp_provider
from omni_gateway.sms_keywords import SmsKeywords
from omni_kit.embedded import free_port

from .smsc import TestSmsc
from .support import until

pytestmark = pytest.mark.integration

NUMBER = "+4915112345678"


def _outgoing(text: str, address: str = NUMBER) -> Outgoing:
    return Outgoing(
        message_id=uuid.uuid4(),
        person_id=uuid.uuid4(),
        channel=Channel.SMS,
        purpose=Purpose.MARKETING,
        address=address,
        content=SmsContent(text),
    )


def _settings(port: int, **overrides: Any) -> SmppSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "system_id": "omni",
        "password": "secret",
        "source_addr": "OmniShop",
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.2,
        "bind_wait_s": 3.0,
        "connect_timeout_s": 2.0,
        "submit_timeout_s": 3.0,
    }
    return SmppSettings(**{**values, **overrides})


class Sink:
    def __init__(self) -> None:
        self.receipts: list[Receipt] = []

    async def __call__(self, receipt: Receipt) -> None:
        self.receipts.append(receipt)


@pytest.fixture
async def smsc() -> AsyncIterator[TestSmsc]:
    server = await TestSmsc().start()
    yield server
    await server.stop()


StartProvider = Callable[..., Awaitable[SmppProvider]]


@pytest.fixture
async def start_provider() -> AsyncIterator[StartProvider]:
    started: list[SmppProvider] = []

    async def start(
        port: int, sink: Sink | None = None, inbound: Any = None, **overrides: Any
    ) -> SmppProvider:
        provider = smpp_provider(_settings(port, **overrides), inbound)
        await provider.start(sink or Sink())
        started.append(provider)
        return provider

    yield start
    for provider in started:
        await provider.close()


async def test_submit_and_delivery_receipt_reach_the_sink(
    smsc: TestSmsc, start_provider: StartProvider
) -> None:
    sink = Sink()
    provider = await start_provider(smsc.port, sink)
    assert isinstance(provider, ChannelProvider)
    assert provider.address_of(PersonContacts(uuid.uuid4(), {"phone": [NUMBER]})) == NUMBER
    assert provider.address_of(PersonContacts(uuid.uuid4(), {"email": ["a@b.example"]})) is None

    accepted = await provider.send(_outgoing("Your 10th coffee is free €"))

    [submitted] = smsc.submitted
    assert submitted.destination == NUMBER[1:]
    assert submitted.source == "OmniShop"
    assert (submitted.data_coding, submitted.esm_class, submitted.registered_delivery) == (0, 0, 1)
    assert submitted.short_message == b"Your 10th coffee is free \x1b\x65"
    assert accepted.provider == "smpp"
    assert accepted.provider_message_id == submitted.message_id
    assert accepted.details == {"encoding": "GSM-7", "segments": 1}

    await until(lambda: len(sink.receipts) == 1)
    [receipt] = sink.receipts
    assert receipt.kind is ReceiptKind.DELIVERED
    assert receipt.provider_message_id == submitted.message_id
    assert receipt.provider_event_id == f"{submitted.message_id}:DELIVRD"
    assert smsc.received["deliver_sm_resp"] == 1


async def test_receipts_by_tlv_and_failed_receipts(smsc: TestSmsc, start_provider: StartProvider) -> None:
    sink = Sink()
    smsc.receipt_style = "tlv"
    smsc.receipt_stat = "UNDELIV"
    smsc.receipt_err = "001"
    provider = await start_provider(smsc.port, sink)
    accepted = await provider.send(_outgoing("hello"))
    await until(lambda: len(sink.receipts) == 1)
    [receipt] = sink.receipts
    assert smsc.submitted[0].short_message == b"hello"
    assert receipt.kind is ReceiptKind.FAILED
    assert receipt.provider_message_id == accepted.provider_message_id
    assert receipt.address_invalid is False  # TLV receipts carry no err code here

    smsc.receipt_style = "text"
    await provider.send(_outgoing("again"))
    await until(lambda: len(sink.receipts) == 2)
    assert sink.receipts[1].kind is ReceiptKind.FAILED
    assert sink.receipts[1].address_invalid is True  # err:001, unknown subscriber
    assert sink.receipts[1].detail == "stat:UNDELIV err:001"


async def test_long_ucs2_text_goes_in_udh_segments_and_is_delivered_once_all_are(
    smsc: TestSmsc, start_provider: StartProvider
) -> None:
    sink = Sink()
    provider = await start_provider(smsc.port, sink)
    text = "Приветствуем! " * 10  # 140 Cyrillic code units: UCS-2, three segments of at most 67
    outgoing = _outgoing(text)
    accepted = await provider.send(outgoing)

    assert accepted.details["encoding"] == "UCS-2"
    assert accepted.details["segments"] == 3
    assert len(smsc.submitted) == 3
    headers = [s.short_message[:6] for s in smsc.submitted]
    reference = headers[0][3]
    assert headers == [bytes((5, 0, 3, reference, 3, n)) for n in (1, 2, 3)]
    assert all(s.esm_class == 0x40 and s.data_coding == 8 for s in smsc.submitted)
    assert b"".join(s.user_data for s in smsc.submitted).decode("utf-16-be") == text
    assert accepted.provider_message_id == smsc.submitted[0].message_id

    await until(lambda: smsc.received["deliver_sm_resp"] == 3)
    await until(lambda: len(sink.receipts) == 1)
    await asyncio.sleep(0.1)
    [receipt] = sink.receipts  # one receipt for the message, not one per segment
    assert receipt.kind is ReceiptKind.DELIVERED
    assert receipt.message_id == outgoing.message_id
    assert receipt.provider_message_id == accepted.provider_message_id


async def test_long_text_whole_in_message_payload(smsc: TestSmsc, start_provider: StartProvider) -> None:
    provider = await start_provider(smsc.port, multipart="message_payload", registered_delivery=False)
    text = "Sale {today} only! " * 20  # 380 septets with the braces: GSM-7, three segments
    accepted = await provider.send(_outgoing(text))
    [submitted] = smsc.submitted
    assert submitted.short_message == b""
    assert submitted.registered_delivery == 0
    assert submitted.user_data.count(b"\x1b\x28") == 20
    assert accepted.details == {"encoding": "GSM-7", "segments": 3}


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (0x58, FailureKind.TRANSIENT),  # ESME_RTHROTTLED
        (0x14, FailureKind.TRANSIENT),  # ESME_RMSGQFUL
        (0x08, FailureKind.TRANSIENT),  # ESME_RSYSERR
        (0x0B, FailureKind.ADDRESS_INVALID),  # ESME_RINVDSTADR
        (0x65, FailureKind.PERMANENT),  # ESME_RX_P_APPN
    ],
)
async def test_command_status_is_classified(
    smsc: TestSmsc, start_provider: StartProvider, status: int, kind: FailureKind
) -> None:
    provider = await start_provider(smsc.port, throttle_retry_s=2.5)
    smsc.status_for[NUMBER[1:]] = status
    with pytest.raises(ProviderFailure) as failure:
        await provider.send(_outgoing("hi"))
    assert failure.value.kind is kind
    assert failure.value.provider == "smpp"
    if status in (0x58, 0x14):
        assert failure.value.retry_after_s == 2.5
    assert len(smsc.submitted) == 1


async def test_an_invalid_number_is_refused_before_the_smsc(
    smsc: TestSmsc, start_provider: StartProvider
) -> None:
    provider = await start_provider(smsc.port)
    for address in ("+1555", "0151 1234567", "nobody"):
        with pytest.raises(ProviderFailure) as failure:
            await provider.send(_outgoing("hi", address))
        assert failure.value.kind is FailureKind.ADDRESS_INVALID
    with pytest.raises(ProviderFailure) as failure:
        await provider.send(_outgoing("x" * 2000))
    assert failure.value.kind is FailureKind.PERMANENT
    assert smsc.submitted == []


async def test_binds_again_after_the_smsc_drops(smsc: TestSmsc, start_provider: StartProvider) -> None:
    provider = await start_provider(smsc.port)
    await provider.send(_outgoing("one"))
    assert provider.binds == 1

    await smsc.drop()
    # A send racing the drop fails as transient (the delivery flow tries again); once bound again, it goes.
    await until(lambda: provider.binds == 2 and provider.bound)
    await provider.send(_outgoing("two"))

    assert provider.binds == 2
    assert smsc.received["bind_transceiver"] == 2
    assert [s.short_message for s in smsc.submitted] == [b"one", b"two"]


async def test_smsc_down_then_up(start_provider: StartProvider) -> None:
    port = free_port("127.0.0.1")
    provider = await start_provider(port, bind_wait_s=0.2, connect_timeout_s=0.5)
    with pytest.raises(ProviderFailure) as failure:
        await provider.send(_outgoing("early"))
    assert failure.value.kind is FailureKind.TRANSIENT
    assert "not bound" in failure.value.detail

    late = await TestSmsc(port=port).start()
    try:
        await until(lambda: provider.bound)
        await provider.send(_outgoing("late"))
        assert [s.short_message for s in late.submitted] == [b"late"]
    finally:
        await late.stop()


async def test_a_refused_bind_is_transient(smsc: TestSmsc, start_provider: StartProvider) -> None:
    provider = await start_provider(smsc.port, password="wrong", bind_wait_s=0.3)
    with pytest.raises(ProviderFailure) as failure:
        await provider.send(_outgoing("hi"))
    assert failure.value.kind is FailureKind.TRANSIENT
    assert "bind failed" in failure.value.detail
    assert smsc.received["bind_transceiver"] >= 1
    assert smsc.submitted == []


async def test_enquire_link_is_answered_and_close_unbinds(
    smsc: TestSmsc, start_provider: StartProvider
) -> None:
    provider = await start_provider(smsc.port)
    assert await smsc.enquire() == 0
    assert smsc.received["enquire_link_resp"] == 1
    await provider.close()
    await until(lambda: smsc.received["unbind"] == 1)
    assert smsc.sessions == 0


async def test_help_from_the_handset_is_answered(smsc: TestSmsc, start_provider: StartProvider) -> None:
    keywords = SmsKeywords(identity=None, profile=None)  # type: ignore[arg-type]  # HELP asks neither
    await start_provider(smsc.port, inbound=keywords.handle_inbound)
    assert await smsc.deliver(NUMBER[1:], "help") == 0
    [reply] = await smsc.until_submitted(1)
    assert reply.destination == NUMBER[1:]
    assert reply.registered_delivery == 0
    assert reply.user_data.decode("latin-1").startswith("Reply STOP to unsubscribe")

    assert await smsc.deliver(NUMBER[1:], "just saying hi") == 0
    await asyncio.sleep(0.2)
    assert len(smsc.submitted) == 1  # no keyword, no reply


async def test_receipts_written_before_their_submit_sm_resp_are_not_lost_or_early(
    smsc: TestSmsc, start_provider: StartProvider
) -> None:
    sink = Sink()
    smsc.receipt_first = True
    provider = await start_provider(smsc.port, sink)

    single = await provider.send(_outgoing("short"))
    await until(lambda: len(sink.receipts) == 1)
    assert sink.receipts[0].provider_message_id == single.provider_message_id

    outgoing = _outgoing("ő" * 140)  # three UCS-2 segments, each receipt ahead of its submit_sm_resp
    accepted = await provider.send(outgoing)
    assert accepted.details["segments"] == 3
    await until(lambda: smsc.received["deliver_sm_resp"] == 4)
    await until(lambda: len(sink.receipts) == 2)
    await asyncio.sleep(0.2)
    assert len(sink.receipts) == 2  # one for the message, only once all segments were delivered
    receipt = sink.receipts[1]
    assert receipt.kind is ReceiptKind.DELIVERED
    assert receipt.message_id == outgoing.message_id
    assert receipt.provider_message_id == accepted.provider_message_id


async def test_a_national_sender_is_read_in_the_smsc_s_country(
    smsc: TestSmsc, start_provider: StartProvider
) -> None:
    heard: list[tuple[str, str]] = []

    async def inbound(phone: str, text: str) -> str | None:
        heard.append((phone, text))
        return "noted"

    await start_provider(smsc.port, inbound=inbound, national_region="DE")
    assert await smsc.deliver("015112345678", "Hallo €", ton=2) == 0
    assert await smsc.deliver("4915112345679", "привет") == 0
    await until(lambda: len(heard) == 2)
    assert heard == [("+4915112345678", "Hallo €"), ("+4915112345679", "привет")]
    replies = await smsc.until_submitted(2)
    assert {r.destination for r in replies} == {"4915112345678", "4915112345679"}


async def test_an_idle_bind_is_kept_alive_with_enquire_link(
    smsc: TestSmsc, start_provider: StartProvider
) -> None:
    # smpp34's core sends enquire_link every 30 s on a bind (not configurable from Python).
    provider = await start_provider(smsc.port)
    await until(lambda: smsc.received["enquire_link"] >= 1, within=45.0)
    assert provider.bound and provider.binds == 1
