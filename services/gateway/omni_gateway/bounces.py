"""The inbound SMTP endpoint bounces come back to (aiosmtpd), and how a report becomes a receipt.

Every email is sent with its own return path, `bounces+<message>.<tag>@<bounce domain>` (VERP, see
email_links), so the report names the message whatever the reporting server quotes of it. The endpoint takes
mail only for such addresses with an authentic tag (550 otherwise, so it is no open relay and a forged bounce
for a message cannot be made up), at most 10 recipients and `bounce_max_bytes` per message (552 above).

What a report means (`read_report`):

- a delivery status notification (RFC 3464: `multipart/report; report-type=delivery-status`): per recipient,
  `Action: failed` with a `Status` of class 5 is a hard bounce, `Receipt(BOUNCED, address_invalid=True)`, the
  address is to be suppressed; except the 5.7.x statuses (security or policy: the content or the sender was
  blocked, not the address), which are bounces with `address_invalid=False`. `Action: failed` with a 4.x.x
  status, or `Action: delayed`, is a soft bounce: `Receipt(BOUNCED, address_invalid=False)`, nothing
  suppressed. `delivered`, `relayed`, `expanded`: nothing;
- a feedback report (RFC 5965 ARF: `report-type=feedback-report`) of type abuse, fraud, virus or other is a
  complaint, `Receipt(COMPLAINED)`; `not-spam` is nothing;
- anything else (an out-of-office reply to the return path): nothing, accepted and dropped.

The receipt's provider event id is the report's own Message-ID (the sha256 of its bytes when it has none), so
a report delivered twice is one receipt once the sink deduplicates. A sink that fails gets the report answered
451: the reporting server tries again later.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import ssl
import uuid
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import Message
from email.parser import BytesParser
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from omni_gateway.email_links import EmailLinks
from omni_gateway.providers.base import Receipt, ReceiptKind, ReceiptSink

log = logging.getLogger(__name__)

__all__ = ["PROVIDER", "BounceEndpoint", "Report", "read_report"]

PROVIDER = "smtp"
"""The provider name of bounce and complaint receipts: the provider that sent the email."""

MAX_RECIPIENTS = 10
MAX_DETAIL = 500
_STATUS = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})")
_COMPLAINTS = frozenset({"abuse", "fraud", "virus", "other"})


@dataclass(frozen=True)
class Report:
    """What a report says about the message it came back for."""

    kind: ReceiptKind
    address_invalid: bool
    detail: str
    event_id: str


def read_report(raw: bytes) -> Report | None:
    """The meaning of an email received at a return path (see the module's docstring), or None."""
    message = BytesParser(policy=policy.default).parsebytes(raw)
    event_id = str(message.get("Message-ID") or "").strip() or f"sha256:{hashlib.sha256(raw).hexdigest()}"
    if message.get_content_type() != "multipart/report":
        return None
    report_type = str(message.get_param("report-type", "") or "").lower()
    if report_type == "delivery-status":
        return _delivery_status(message, event_id)
    if report_type == "feedback-report":
        return _feedback(message, event_id)
    return None


def _delivery_status(message: Message, event_id: str) -> Report | None:
    worst: Report | None = None
    for fields in _blocks(message, "message/delivery-status")[1:]:  # the first holds the per-message fields
        action = str(fields.get("Action", "")).strip().lower()
        status = str(fields.get("Status", "")).strip()
        diagnostic = str(fields.get("Diagnostic-Code", "")).strip()
        recipient = str(fields.get("Final-Recipient", "")).strip()
        match = _STATUS.match(status)
        klass = match.group(1) if match else ""
        if action == "failed" and klass == "5":
            blocked = match is not None and match.group(2) == "7"
            report = Report(
                ReceiptKind.BOUNCED,
                address_invalid=not blocked,
                detail=_detail("blocked" if blocked else "hard bounce", status, recipient, diagnostic),
                event_id=event_id,
            )
        elif action in ("failed", "delayed"):
            report = Report(
                ReceiptKind.BOUNCED,
                address_invalid=False,
                detail=_detail(f"soft bounce ({action})", status, recipient, diagnostic),
                event_id=event_id,
            )
        else:
            continue
        if worst is None or (report.address_invalid and not worst.address_invalid):
            worst = report
    return worst


def _feedback(message: Message, event_id: str) -> Report | None:
    for fields in _blocks(message, "message/feedback-report"):
        feedback_type = str(fields.get("Feedback-Type", "")).strip().lower()
        if feedback_type in _COMPLAINTS:
            agent = str(fields.get("User-Agent", "")).strip()
            return Report(
                ReceiptKind.COMPLAINED, False, _detail(f"complaint ({feedback_type})", agent), event_id
            )
    return None


def _blocks(message: Message, content_type: str) -> list[Message]:
    """The header blocks of the report's part of content_type (the email package parses each as a message)."""
    for part in message.walk():
        if part.get_content_type() == content_type:
            payload = part.get_payload()
            if isinstance(payload, list):
                return [block for block in payload if isinstance(block, Message)]
            return []
    return []


def _detail(*parts: str) -> str:
    text = ": ".join(p for p in parts if p)
    text = "".join(c if c.isprintable() else " " for c in text)
    return text[:MAX_DETAIL]


class BounceEndpoint:
    """The SMTP server of the return paths; start() binds, stop() closes."""

    def __init__(
        self,
        *,
        links: EmailLinks,
        receipts: ReceiptSink,
        host: str,
        port: int,
        max_bytes: int = 10 * 1024 * 1024,
        hostname: str = "omni-bounces",
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self._links = links
        # With a context the endpoint offers STARTTLS (not required: a mail server bouncing to us may not
        # speak it, and a bounce carries nothing a link token does not already name).
        self._tls_context = tls_context
        self._receipts = receipts
        self._host = host
        self._port = port
        self._max_bytes = max_bytes
        self._hostname = hostname
        self._server: asyncio.Server | None = None
        self._connections: weakref.WeakSet[SMTP] = weakref.WeakSet()

    async def start(self) -> None:
        """Listen; with port 0 a free port is chosen (see `port`)."""
        handler = _Handler(self._links, self._receipts)

        def connection() -> SMTP:
            smtp = SMTP(
                handler,
                hostname=self._hostname,
                data_size_limit=self._max_bytes,
                enable_SMTPUTF8=True,
                timeout=60,
                tls_context=self._tls_context,
            )
            self._connections.add(smtp)
            return smtp

        self._server = await asyncio.get_running_loop().create_server(connection, self._host, self._port)
        self._port = int(self._server.sockets[0].getsockname()[1])
        log.info("bounce SMTP endpoint on %s:%d", self._host, self._port)

    @property
    def port(self) -> int:
        """The port the endpoint listens on."""
        return self._port

    async def stop(self) -> None:
        """Stop listening and close the connections."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            for smtp in list(self._connections):
                if smtp.transport is not None:
                    smtp.transport.close()
            await server.wait_closed()


class _Handler:
    def __init__(self, links: EmailLinks, receipts: ReceiptSink) -> None:
        self._links = links
        self._receipts = receipts

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if self._links.message_of_return_path(address) is None:
            return "550 5.1.1 No such mailbox"
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content: Any = envelope.original_content or envelope.content or b""
        raw = content if isinstance(content, bytes) else str(content).encode()
        report = read_report(raw)
        if report is None:
            return "250 2.0.0 OK"
        received_at = datetime.now(UTC)
        several = len(envelope.rcpt_tos) > 1
        for address in envelope.rcpt_tos:
            message_id: uuid.UUID | None = self._links.message_of_return_path(address)
            if message_id is None:
                continue
            try:
                await self._receipts(
                    Receipt(
                        provider=PROVIDER,
                        kind=report.kind,
                        # One report for several return paths is one receipt per message.
                        provider_event_id=f"{report.event_id}#{message_id}" if several else report.event_id,
                        occurred_at=received_at,
                        message_id=message_id,
                        detail=report.detail,
                        address_invalid=report.address_invalid,
                    )
                )
            except Exception:
                log.exception("the receipt of a report for message %s could not be recorded", message_id)
                return "451 4.3.0 Try again later"
        return "250 2.0.0 OK"
