"""Bounces over real SMTP: reports as a receiving server writes them (RFC 3464 DSNs, RFC 5965 ARF), sent to
the message's VERP return path on the gateway's inbound endpoint, become receipts; hard bounces mark the
address invalid, soft ones do not; a report delivered twice is one receipt; unknown return paths are refused."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aiosmtplib
import pytest

from omni_gateway.bounces import BounceEndpoint, read_report
from omni_gateway.email_links import EmailLinks
from omni_gateway.providers.base import Receipt, ReceiptKind

from .email_support import DOMAIN, Receipts, email_links


def dsn(*, action: str, status: str, report_id: str, diagnostic: str = "") -> bytes:
    """A delivery status notification shaped as Postfix writes one (text part, status, returned headers)."""
    text = f"""From: MAILER-DAEMON@mx.example.com (Mail Delivery System)
To: <placeholder>
Subject: Undelivered Mail Returned to Sender
Date: Mon, 7 Dec 2026 21:00:00 +0000
Message-ID: {report_id}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="5E1A2.1765141200/mx.example.com"

--5E1A2.1765141200/mx.example.com
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

--5E1A2.1765141200/mx.example.com
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.com
X-Postfix-Queue-ID: 5E1A2
Arrival-Date: Mon,  7 Dec 2026 20:59:58 +0000 (UTC)

Final-Recipient: rfc822; ada@example.com
Original-Recipient: rfc822;ada@example.com
Action: {action}
Status: {status}
Remote-MTA: dns; mail.example.com
Diagnostic-Code: smtp; {diagnostic or status}

--5E1A2.1765141200/mx.example.com
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

From: Shop <news@shop.example>
To: ada@example.com
Subject: Your offer

--5E1A2.1765141200/mx.example.com--
"""
    return text.replace("\n", "\r\n").encode()


def arf(*, feedback_type: str, report_id: str) -> bytes:
    text = f"""From: feedback@isp.example
To: <placeholder>
Subject: Abuse report
Message-ID: {report_id}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="part"

--part
Content-Type: text/plain

This is an email abuse report.

--part
Content-Type: message/feedback-report

Feedback-Type: {feedback_type}
User-Agent: ISP-FBL/1.0
Version: 1

--part
Content-Type: text/rfc822-headers

From: news@shop.example
Subject: Your offer

--part--
"""
    return text.replace("\n", "\r\n").encode()


@pytest.fixture
async def bounces() -> AsyncIterator[tuple[BounceEndpoint, EmailLinks, Receipts]]:
    links, receipts = email_links(), Receipts()
    endpoint = BounceEndpoint(links=links, receipts=receipts, host="127.0.0.1", port=0, max_bytes=256 * 1024)
    await endpoint.start()
    try:
        yield endpoint, links, receipts
    finally:
        await endpoint.stop()


async def _deliver(endpoint: BounceEndpoint, recipient: str, report: bytes) -> None:
    """Deliver a report as a reporting MTA does: null sender, to the return path."""
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=endpoint.port) as client:
        await client.sendmail("", [recipient], report)


async def test_a_hard_bounce_to_the_return_path_is_an_invalid_address_receipt_once(
    bounces: tuple[BounceEndpoint, EmailLinks, Receipts],
) -> None:
    endpoint, links, receipts = bounces
    message_id = uuid.uuid4()
    report = dsn(
        action="failed",
        status="5.1.1",
        report_id="<20261207210000.5E1A2@mx.example.com>",
        diagnostic="550 5.1.1 <ada@example.com>: Recipient address rejected: User unknown",
    )
    # Twice, as a reporting server that lost our 250 sends it again; and to the address in upper case.
    await _deliver(endpoint, links.return_path(message_id), report)
    await _deliver(endpoint, links.return_path(message_id).upper(), report)

    kept = receipts.distinct(message_id)
    assert list(kept) == ["<20261207210000.5E1A2@mx.example.com>"]
    [receipt] = kept.values()
    assert receipt.kind is ReceiptKind.BOUNCED and receipt.address_invalid
    assert receipt.provider == "smtp"
    assert "5.1.1" in receipt.detail and "User unknown" in receipt.detail


@pytest.mark.parametrize(("action", "status"), [("delayed", "4.4.1"), ("failed", "4.2.2")])
async def test_a_soft_bounce_is_a_bounce_that_suppresses_nothing(
    bounces: tuple[BounceEndpoint, EmailLinks, Receipts], action: str, status: str
) -> None:
    endpoint, links, receipts = bounces
    message_id = uuid.uuid4()
    await _deliver(
        endpoint, links.return_path(message_id), dsn(action=action, status=status, report_id="<soft@mx>")
    )
    [receipt] = receipts.of(message_id)
    assert receipt.kind is ReceiptKind.BOUNCED and not receipt.address_invalid
    assert receipt.detail.startswith(f"soft bounce ({action})")


async def test_a_complaint_is_a_complained_receipt(
    bounces: tuple[BounceEndpoint, EmailLinks, Receipts],
) -> None:
    endpoint, links, receipts = bounces
    message_id = uuid.uuid4()
    await _deliver(
        endpoint, links.return_path(message_id), arf(feedback_type="abuse", report_id="<fbl-1@isp>")
    )
    [receipt] = receipts.of(message_id)
    assert receipt.kind is ReceiptKind.COMPLAINED and receipt.provider_event_id == "<fbl-1@isp>"
    assert not receipt.address_invalid


async def test_forged_and_unknown_return_paths_are_refused_at_rcpt(
    bounces: tuple[BounceEndpoint, EmailLinks, Receipts],
) -> None:
    endpoint, links, receipts = bounces
    real = links.return_path(uuid.uuid4())
    forged = real.replace(real[8:40], uuid.uuid4().hex)
    for address in (forged, f"postmaster@{DOMAIN}", "bounces+nothing@shop.example"):
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
            await _deliver(endpoint, address, dsn(action="failed", status="5.1.1", report_id="<x@mx>"))
        assert refused.value.recipients[0].code == 550
    assert receipts.received == []


async def test_mail_that_is_no_report_is_accepted_and_dropped(
    bounces: tuple[BounceEndpoint, EmailLinks, Receipts],
) -> None:
    endpoint, links, receipts = bounces
    reply = b"From: ada@example.com\r\nSubject: Out of office\r\nMessage-ID: <ooo@example.com>\r\n\r\nBack Monday.\r\n"
    await _deliver(endpoint, links.return_path(uuid.uuid4()), reply)
    assert receipts.received == []


async def test_a_failing_sink_gets_the_report_deferred_so_it_comes_again(
    bounces: tuple[BounceEndpoint, EmailLinks, Receipts],
) -> None:
    links = email_links()
    failures: list[Receipt] = []

    async def broken(receipt: Receipt) -> None:
        failures.append(receipt)
        raise RuntimeError("database down")

    endpoint = BounceEndpoint(links=links, receipts=broken, host="127.0.0.1", port=0)
    await endpoint.start()
    try:
        with pytest.raises(aiosmtplib.SMTPDataError) as deferred:
            await _deliver(
                endpoint,
                links.return_path(uuid.uuid4()),
                dsn(action="failed", status="5.1.1", report_id="<y@mx>"),
            )
        assert deferred.value.code == 451
    finally:
        await endpoint.stop()
    assert len(failures) == 1


def test_report_reading_rules() -> None:
    """Statuses of class 5 about policy (x.7.x) are blocks, not invalid addresses; delivered is nothing."""
    blocked = read_report(dsn(action="failed", status="5.7.1", report_id="<b@mx>"))
    assert blocked is not None and blocked.kind is ReceiptKind.BOUNCED and not blocked.address_invalid
    assert read_report(dsn(action="delivered", status="2.0.0", report_id="<d@mx>")) is None
    assert read_report(arf(feedback_type="not-spam", report_id="<n@isp>")) is None
    no_id = dsn(action="failed", status="5.1.1", report_id="").replace(b"Message-ID: \r\n", b"")
    report = read_report(no_id)
    assert report is not None and report.event_id.startswith("sha256:")
