"""Handing emails to a real SMTP server: the session's sink, a refusing server, and no server at all."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from omni_gateway.domain import PermanentFailure, TransientFailure
from omni_gateway.email_message import build_email
from omni_gateway.rendering import Rendered
from omni_gateway.smtp import Mailer, SmtpConfig, classify
from omni_kit.embedded import SmtpSink, free_port


def _email(recipient: str, subject: str, html: str = "") -> Any:
    return build_email(
        message_id=uuid.uuid4(),
        sender="Omni Shop <shop@omni.example>",
        recipient=recipient,
        rendered=Rendered(subject=subject, text="Your cart misses you", html=html),
    )


class _Refusing:
    """Refuses recipients by their local part: nobody@ for good (550), later@ for now (451)."""

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user"
        if address.startswith("later@"):
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 OK"


@pytest.fixture(scope="module")
def refusing_server() -> Iterator[int]:
    port = free_port("127.0.0.1")
    controller = Controller(_Refusing(), hostname="127.0.0.1", port=port, server_hostname="refusing")
    controller.start()
    yield port
    controller.stop()


async def test_an_email_reaches_the_sink_with_text_and_html(smtp_sink: SmtpSink) -> None:
    recipient = f"ada-{uuid.uuid4().hex[:8]}@example.com"
    mailer = Mailer(SmtpConfig(host="127.0.0.1", port=smtp_sink.port, timeout_s=5))
    await mailer.send(
        _email(recipient, "Still thinking?", html="<p>Still thinking?</p>"), message_id=uuid.uuid4()
    )
    received = await smtp_sink.wait_for(lambda m: m["To"] == recipient, timeout=5)
    assert received["Subject"] == "Still thinking?"
    assert received["X-Omni-Rcpt-To"] == recipient
    assert received["X-Omni-Mail-From"] == "shop@omni.example"
    assert received.get_content_type() == "multipart/alternative"
    body = received.get_body(preferencelist=("plain",))
    assert body is not None and "Your cart misses you" in body.get_content()


async def test_a_refused_recipient_is_permanent(refusing_server: int) -> None:
    mailer = Mailer(SmtpConfig(host="127.0.0.1", port=refusing_server, timeout_s=5))
    with pytest.raises(PermanentFailure, match="550"):
        await mailer.send(_email("nobody@example.com", "x"), message_id=uuid.uuid4())


async def test_a_deferred_recipient_is_transient(refusing_server: int) -> None:
    mailer = Mailer(SmtpConfig(host="127.0.0.1", port=refusing_server, timeout_s=5))
    with pytest.raises(TransientFailure, match="451"):
        await mailer.send(_email("later@example.com", "x"), message_id=uuid.uuid4())


async def test_no_server_listening_is_transient() -> None:
    mailer = Mailer(SmtpConfig(host="127.0.0.1", port=free_port("127.0.0.1"), timeout_s=2))
    with pytest.raises(TransientFailure, match="cannot reach"):
        await mailer.send(_email("ada@example.com", "x"), message_id=uuid.uuid4())


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (aiosmtplib.SMTPResponseException(554, "rejected"), False),
        (aiosmtplib.SMTPResponseException(421, "busy"), True),
        (aiosmtplib.SMTPDataError(552, "too big"), False),
        (aiosmtplib.SMTPAuthenticationError(535, "bad credentials"), True),
        (aiosmtplib.SMTPServerDisconnected("gone"), True),
        (aiosmtplib.SMTPReadTimeoutError("slow"), True),
        (aiosmtplib.SMTPConnectError("refused"), True),
        (aiosmtplib.SMTPNotSupported("no STARTTLS"), True),
    ],
)
def test_smtp_errors_are_sorted_into_transient_and_permanent(
    error: aiosmtplib.SMTPException, transient: bool
) -> None:
    assert classify(error).transient is transient


class _CountingSessions:
    """Accepts everything and counts the SMTP sessions (EHLOs) and the emails."""

    def __init__(self) -> None:
        self.sessions = 0
        self.emails = 0

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        self.sessions += 1
        session.host_name = hostname
        return responses

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.emails += 1
        return "250 OK"


async def test_emails_share_pooled_connections_and_a_connection_the_server_dropped_is_replaced() -> None:
    counting = _CountingSessions()
    port = free_port("127.0.0.1")
    controller = Controller(counting, hostname="127.0.0.1", port=port, server_hostname="pooled")
    controller.start()
    mailer = Mailer(SmtpConfig(host="127.0.0.1", port=port, timeout_s=5, pool_size=2))
    try:
        for n in range(10):
            await mailer.send(_email(f"p{n}@example.com", "pooled"), message_id=uuid.uuid4())
        assert counting.emails == 10
        assert counting.sessions == 1, "one after another, the emails share one connection"

        # The server restarts: the pooled connection is dead, found so at its first command, and replaced.
        controller.stop()
        controller = Controller(counting, hostname="127.0.0.1", port=port, server_hostname="pooled")
        controller.start()
        await mailer.send(_email("after@example.com", "pooled"), message_id=uuid.uuid4())
        assert counting.emails == 11
        assert counting.sessions == 2
    finally:
        await mailer.close()
        controller.stop()
