"""Email as the running gateway sends it through SendMessage, to a local SMTP server: DKIM that dkimpy verifies,
RFC 8058 one-click unsubscribe on the gateway's own HTTP endpoint revoking consent in profile and suppressing the
address, a DSN on the bounce endpoint marking the message bounced, opens and clicks recorded once each and on
the person's timeline in profile."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from html import unescape

import aiohttp
import aiosmtplib
import dkim
import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from omni.common.v1 import common_pb2
from omni.gateway.v1 import events_pb2, gateway_pb2
from omni.profile.v1 import profile_pb2
from omni_kit.bus import unpack
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres, free_port

from .conftest import _gateways
from .email_support import DOMAIN, SELECTOR, DkimKey, dkim_key
from .support import (
    EventLog,
    Gateway,
    Neighbours,
    create_person,
    send_request,
    set_consent,
    unique,
    until,
)
from .test_email_bounces import dsn

TRANSACTIONAL = profile_pb2.CONSENT_PURPOSE_TRANSACTIONAL
HUMAN = {"User-Agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1) AppleWebKit/605.1.15 Mail"}


@dataclass
class Received:
    """An email as the SMTP server took it: envelope and the exact bytes."""

    mail_from: str
    rcpt_tos: list[str]
    raw: bytes


@dataclass
class Inbox:
    """A local SMTP server keeping every email's envelope and bytes as received."""

    received: list[Received] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        self.received.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos), bytes(raw)))
        return "250 OK"

    def to(self, address: str) -> list[Received]:
        return [r for r in self.received if address in r.rcpt_tos]


@dataclass
class Wired:
    """The module's gateway with its email endpoints, and what it sends to."""

    gateway: Gateway
    inbox: Inbox
    key: DkimKey
    http_port: int
    bounce_port: int


@pytest.fixture(scope="module")
def inbox() -> Iterator[tuple[Inbox, int]]:
    handler, port = Inbox(), free_port("127.0.0.1")
    controller = Controller(handler, hostname="127.0.0.1", port=port, server_hostname="inbox")
    controller.start()
    yield handler, port
    controller.stop()


@pytest.fixture(scope="module")
async def wired(
    postgres: EmbeddedPostgres, nats_server: EmbeddedNats, neighbours: Neighbours, inbox: tuple[Inbox, int]
) -> AsyncIterator[Wired]:
    key = dkim_key(2048)
    http_port, bounce_port = free_port("127.0.0.1"), free_port("127.0.0.1")
    async with _gateways(postgres, nats_server, neighbours) as start:
        gateway = await start(
            smtp_port=inbox[1],
            smtp_from=f"Shop <news@{DOMAIN}>",
            dkim_domain=DOMAIN,
            dkim_selector=SELECTOR,
            dkim_private_key=key.private_pem.decode(),
            email_token_secret="the-links-secret",
            email_http_port=http_port,
            email_public_url=f"http://127.0.0.1:{http_port}",
            bounce_smtp_port=bounce_port,
            # Opens in a test come within seconds of sending; here they count as a person's.
            email_machine_open_window_s=0,
        )
        yield Wired(gateway, inbox[0], key, http_port, bounce_port)


CART_URL = "https://shop.example/cart?from=email&x=1"


async def _template(gateway: Gateway) -> str:
    template_id = unique("wired-")
    await gateway.stub.CreateTemplate(
        gateway_pb2.CreateTemplateRequest(
            template=gateway_pb2.Template(
                id=template_id,
                channel=common_pb2.CHANNEL_EMAIL,
                subject="Hi, your cart is waiting",
                body_text="Your cart is waiting: https://shop.example/cart",
                body_html=f'<html><body><p>Your cart is waiting.</p><a href="{CART_URL}">Back to it</a>'
                "</body></html>",
            )
        )
    )
    return template_id


async def _send(
    wired: Wired, neighbours: Neighbours, person_id: str, *, transactional: bool = False
) -> gateway_pb2.Message:
    template_id = await _template(wired.gateway)
    purpose = TRANSACTIONAL if transactional else profile_pb2.CONSENT_PURPOSE_UNSPECIFIED
    return (
        await wired.gateway.stub.SendMessage(send_request(person_id, template_id, purpose=purpose))
    ).message


async def _sent_email(wired: Wired, neighbours: Neighbours) -> tuple[gateway_pb2.Message, str, Received]:
    address = f"{unique('wired-')}@example.com"
    person_id = await create_person(neighbours, address, consent=True)
    message = await _send(wired, neighbours, person_id)
    assert message.status == gateway_pb2.MESSAGE_STATUS_SENT, message.error
    [received] = wired.inbox.to(address)
    return message, address, received


def _header(raw: bytes, name: str) -> str:
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    match = re.search(rf"^{name}:(.*(?:\r\n[ \t].*)*)", head, re.MULTILINE | re.IGNORECASE)
    return re.sub(r"\r\n[ \t]", " ", match.group(1)).strip() if match else ""


def _links(raw: bytes, path: str) -> list[str]:
    text = raw.decode().replace("=\r\n", "")  # quoted-printable soft breaks, were there any
    return [unescape(u) for u in re.findall(rf'"(http://127\.0\.0\.1:\d+/{path}/[^"]+)"', text)]


async def _receipts(wired: Wired, message_id: str) -> list[tuple[str, bool]]:
    async with wired.gateway.database.connect() as connection:
        rows = await connection.execute(
            sa.text("SELECT kind, machine FROM receipts WHERE message_id = CAST(:id AS uuid) ORDER BY kind"),
            {"id": message_id},
        )
        return [(row.kind, row.machine) for row in rows]


def _announced(events: EventLog, message_id: str) -> list[events_pb2.MessageReceiptEvent]:
    found = [
        unpack(e, events_pb2.MessageReceiptEvent)
        for e in events.envelopes
        if e.type == "gateway.message_receipt"
    ]
    return [r for r in found if r.message.id == message_id]


async def test_a_marketing_email_is_dkim_signed_with_one_click_unsubscribe_tracking_and_a_return_path(
    wired: Wired, neighbours: Neighbours
) -> None:
    message, address, received = await _sent_email(wired, neighbours)

    assert dkim.verify(received.raw, dnsfunc=wired.key.dnsfunc())
    assert b"d=shop.example" in received.raw and b"s=omni2026" in received.raw
    unsubscribe = _header(received.raw, "List-Unsubscribe")
    assert f"<http://127.0.0.1:{wired.http_port}/u/" in unsubscribe
    assert _header(received.raw, "List-Unsubscribe-Post") == "List-Unsubscribe=One-Click"
    assert _links(received.raw, "o") and _links(received.raw, "c"), "the pixel and tracked links"
    # VERP: the envelope sender names the message, on the bounce domain.
    assert received.mail_from.startswith(f"bounces+{uuid.UUID(message.id).hex}.")
    assert received.mail_from.endswith(f"@{DOMAIN}")

    # A transactional email: signed, no List-Unsubscribe (signed as absent), nothing tracked.
    await set_consent(neighbours, message.person_id, profile_pb2.CONSENT_STATE_GRANTED, purpose=TRANSACTIONAL)
    receipt = await _send(wired, neighbours, message.person_id, transactional=True)
    assert receipt.status == gateway_pb2.MESSAGE_STATUS_SENT, receipt.error
    transactional = wired.inbox.to(address)[-1]
    assert dkim.verify(transactional.raw, dnsfunc=wired.key.dnsfunc())
    assert not _header(transactional.raw, "List-Unsubscribe")
    assert not _links(transactional.raw, "o") and not _links(transactional.raw, "c")
    # Tampering breaks the signature: dkimpy really checks.
    assert not dkim.verify(
        transactional.raw.replace(b"your cart is waiting", b"your cart is WAITING"),
        dnsfunc=wired.key.dnsfunc(),
    )


async def test_the_one_click_post_revokes_marketing_consent_and_suppresses_the_address(
    wired: Wired, neighbours: Neighbours, events: EventLog
) -> None:
    message, address, received = await _sent_email(wired, neighbours)
    url = _header(received.raw, "List-Unsubscribe").split(">", 1)[0].lstrip("<")

    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers=HUMAN) as page:  # a scanner's GET changes nothing
            assert page.status == 200 and "<form" in await page.text()
        assert await _receipts(wired, message.id) == []
        for _ in range(2):  # mail providers repeat the POST
            async with http.post(
                url, data={"List-Unsubscribe": "One-Click"}, allow_redirects=False
            ) as answer:
                assert answer.status == 200

    profile = (
        await neighbours.profile.GetProfile(profile_pb2.GetProfileRequest(person_id=message.person_id))
    ).profile
    [marketing_email] = [
        c
        for c in profile.consents
        if c.purpose == profile_pb2.CONSENT_PURPOSE_MARKETING and c.channel == common_pb2.CHANNEL_EMAIL
    ]
    assert marketing_email.state == profile_pb2.CONSENT_STATE_REVOKED
    assert marketing_email.source == "list_unsubscribe"
    assert await _receipts(wired, message.id) == [("unsubscribed", False)]
    await until(lambda: bool(_announced(events, message.id)))
    assert _announced(events, message.id)[0].kind == events_pb2.RECEIPT_KIND_UNSUBSCRIBED

    # The person grants marketing again elsewhere, yet the address unsubscribed by its link stays suppressed
    # for marketing; a transactional email still goes.
    await set_consent(neighbours, message.person_id, profile_pb2.CONSENT_STATE_GRANTED)
    again = await _send(wired, neighbours, message.person_id)
    assert again.status == gateway_pb2.MESSAGE_STATUS_FAILED
    assert again.error == "address suppressed: unsubscribed"
    await set_consent(neighbours, message.person_id, profile_pb2.CONSENT_STATE_GRANTED, purpose=TRANSACTIONAL)
    transactional = await _send(wired, neighbours, message.person_id, transactional=True)
    assert transactional.status == gateway_pb2.MESSAGE_STATUS_SENT, transactional.error
    assert len(wired.inbox.to(address)) == 2


async def test_a_dsn_at_the_return_path_bounces_the_message_and_suppresses_the_address(
    wired: Wired, neighbours: Neighbours, events: EventLog
) -> None:
    message, address, received = await _sent_email(wired, neighbours)
    report = dsn(action="failed", status="5.1.1", report_id=f"<{uuid.uuid4()}@mx.example.com>")

    for _ in range(2):  # the reporting server delivers it twice, from the null sender as bounces come
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=wired.bounce_port, timeout=5) as client:
            await client.sendmail("", [received.mail_from], report)

    found = (
        await wired.gateway.stub.GetMessage(gateway_pb2.GetMessageRequest(message_id=message.id))
    ).message
    assert found.status == gateway_pb2.MESSAGE_STATUS_BOUNCED
    assert await _receipts(wired, message.id) == [("bounced", False)]
    await until(lambda: bool(_announced(events, message.id)))
    [bounced] = _announced(events, message.id)
    assert bounced.kind == events_pb2.RECEIPT_KIND_BOUNCED and bounced.hard
    # A hard bounce stops every purpose.
    await set_consent(neighbours, message.person_id, profile_pb2.CONSENT_STATE_GRANTED, purpose=TRANSACTIONAL)
    transactional = await _send(wired, neighbours, message.person_id, transactional=True)
    assert transactional.status == gateway_pb2.MESSAGE_STATUS_FAILED
    assert transactional.error == "address suppressed: hard_bounce"
    assert len(wired.inbox.to(address)) == 1


async def test_an_open_and_a_click_are_recorded_once_each_and_reach_the_timeline(
    wired: Wired, neighbours: Neighbours, events: EventLog
) -> None:
    message, _, received = await _sent_email(wired, neighbours)
    [pixel] = _links(received.raw, "o")
    click = _links(received.raw, "c")[0]

    async with aiohttp.ClientSession() as http:
        for _ in range(2):  # the person opens the email twice and clicks the link twice
            async with http.get(pixel, headers=HUMAN) as answer:
                assert answer.status == 200 and answer.content_type == "image/gif"
            async with http.get(click, headers=HUMAN, allow_redirects=False) as answer:
                assert answer.status == 302
                assert answer.headers["Location"] == CART_URL

    assert await _receipts(wired, message.id) == [("clicked", False), ("opened", False)]
    await until(lambda: len(_announced(events, message.id)) >= 2)
    await asyncio.sleep(0.3)
    kinds = sorted(r.kind for r in _announced(events, message.id))
    assert kinds == [events_pb2.RECEIPT_KIND_OPENED, events_pb2.RECEIPT_KIND_CLICKED]

    async def timeline() -> list[str]:
        answer = await neighbours.profile.ListTimeline(
            profile_pb2.ListTimelineRequest(person_id=message.person_id)
        )
        return [event.type for event in answer.events]

    async with asyncio.timeout(10):
        while "email_opened" not in (types := await timeline()):  # noqa: ASYNC110 - polling profile
            await asyncio.sleep(0.1)
    assert types.count("email_opened") == 1 and types.count("email_clicked") <= 1
