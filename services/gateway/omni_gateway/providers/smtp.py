"""Email over SMTP (aiosmtplib): a pool of open connections per provider instance, failures sorted into the
interface's kinds.

An instance is one SMTP server with its credentials; a channel may have several (`smtp`, `smtp-backup`),
tried in order by the delivery flow. Connections stay open between emails (up to `pool_size`, each reused
for at most `max_idle_s` of idleness, since servers drop idle clients), so a batch of emails is one TCP and
TLS handshake per connection rather than per email. A pooled connection the server closed meanwhile fails at
its first command, before anything of the email was given: that email is tried once more on a new
connection.

The email itself is built by `email_message.wire_email` (headers, body; DKIM and List-Unsubscribe are added
there, and it is flattened there once: the signed bytes are the bytes sent, by `sendmail`), never here. Given the gateway's `EmailLinks` (defaults "email_links"), a marketing email gets the
one-click List-Unsubscribe headers and, with "email_tracking", tracked links and the open pixel; every email is
sent from its own return path (VERP, `links.return_path(message id)`) so bounces name it. Given a `DkimSigner`
(defaults "dkim"), every email is signed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import aiosmtplib
from opentelemetry import trace

from omni_gateway.dkim_signing import DkimSigner
from omni_gateway.domain import Channel, DeliveryError, Purpose
from omni_gateway.email_links import EmailLinks
from omni_gateway.email_message import WireEmail, from_address, wire_email
from omni_gateway.providers.base import (
    Accepted,
    EmailContent,
    FailureKind,
    Outgoing,
    PersonContacts,
    ProviderFailure,
    ReceiptSink,
)
from omni_gateway.rendering import Rendered

tracer = trace.get_tracer("omni_gateway.smtp")

KIND = "smtp"

# Enhanced status codes (RFC 3463) saying the mailbox or address is wrong, not the message: X.1.1 bad
# mailbox, X.1.2 bad domain, X.1.3 bad syntax, X.1.6 moved, X.1.10 null MX; and the basic codes for "no such
# user" when a server gives no enhanced code.
_ADDRESS_INVALID_ENHANCED = ("5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10")
_ADDRESS_INVALID_BASIC = frozenset({550, 551, 553})


@dataclass(frozen=True)
class SmtpConfig:
    """Where and how to submit mail."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    timeout_s: float = 10.0
    starttls: bool = False
    pool_size: int = 4
    """Connections kept open at most (and so emails in flight at once through this server)."""
    max_idle_s: float = 30.0
    """A pooled connection idle longer is closed rather than reused (servers drop idle clients)."""


class _Connection:
    def __init__(self, client: aiosmtplib.SMTP) -> None:
        self.client = client
        self.last_used = time.monotonic()
        self.reused = False


class SmtpPool:
    """Open SMTP connections to one server, handed out one email at a time, at most `pool_size` at once."""

    def __init__(self, config: SmtpConfig) -> None:
        self._config = config
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(config.pool_size)
        self._closed = False

    async def send(self, email: EmailMessage | WireEmail, *, sender: str | None = None) -> None:
        """Submit one email on a pooled connection, from the envelope `sender` (else its From); raise
        aiosmtplib's error when it is not taken. A WireEmail's bytes are sent as they are."""
        async with self._slots:
            connection = await self._take()
            try:
                await _submit(connection.client, email, sender)
            except aiosmtplib.SMTPServerDisconnected:
                await self._discard(connection)
                if not connection.reused:
                    raise
                # The server closed the idle connection; nothing of this email reached it. Once more, fresh.
                connection = await self._take(fresh=True)
                try:
                    await _submit(connection.client, email, sender)
                except BaseException:
                    await self._discard(connection)
                    raise
            except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
                # A refusal: aiosmtplib reset the envelope (RSET), the connection is good for the next email.
                await self._give_back(connection)
                raise
            except BaseException:
                await self._discard(connection)
                raise
            await self._give_back(connection)

    async def close(self) -> None:
        """Close the idle connections (QUIT); those in use close when their email is done."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            await self._discard(connection)

    async def _take(self, *, fresh: bool = False) -> _Connection:
        now = time.monotonic()
        while self._idle and not fresh:
            connection = self._idle.pop()
            if connection.client.is_connected and now - connection.last_used < self._config.max_idle_s:
                connection.reused = True
                return connection
            await self._discard(connection)
        config = self._config
        client = aiosmtplib.SMTP(
            hostname=config.host,
            port=config.port,
            username=config.username,
            password=config.password,
            timeout=config.timeout_s,
            start_tls=config.starttls,
        )
        await client.connect()
        return _Connection(client)

    async def _give_back(self, connection: _Connection) -> None:
        if self._closed or not connection.client.is_connected:
            await self._discard(connection)
            return
        connection.last_used = time.monotonic()
        self._idle.append(connection)

    async def _discard(self, connection: _Connection) -> None:
        client = connection.client
        if not client.is_connected:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.quit(), timeout=1.0)
        if client.is_connected:
            client.close()


async def _submit(client: aiosmtplib.SMTP, email: EmailMessage | WireEmail, sender: str | None) -> None:
    if isinstance(email, EmailMessage):
        await client.send_message(email, sender=sender)
        return
    if sender is None:
        raise ValueError("a WireEmail needs its envelope sender")
    await client.sendmail(
        sender, [email.recipient], email.data, mail_options=["SMTPUTF8"] if email.smtputf8 else None
    )


class SmtpProvider:
    """The email channel through one SMTP server (a ChannelProvider)."""

    channel = Channel.EMAIL

    def __init__(
        self,
        name: str,
        config: SmtpConfig,
        *,
        sender: str,
        links: EmailLinks | None = None,
        dkim: DkimSigner | None = None,
        track: bool = False,
    ) -> None:
        self.name = name
        self.config = config
        self.sender = sender
        self.links = links
        self.dkim = dkim
        self.track = track
        self._pool = SmtpPool(config)
        self.receipts: ReceiptSink | None = None
        self._envelope_sender = from_address(sender)

    def address_of(self, person: PersonContacts) -> str | None:
        """The person's first email address."""
        return person.first("email")

    async def start(self, receipts: ReceiptSink) -> None:
        """Keep the receipt sink (for what reports on this provider's emails: bounces, opens, clicks); nothing
        to open ahead, connections are opened by the first emails."""
        self.receipts = receipts

    async def send(self, outgoing: Outgoing) -> Accepted:
        """Build the email (List-Unsubscribe and tracking for marketing, DKIM) and hand it to the server from
        the message's return path; the provider's id is the email's Message-ID."""
        content = outgoing.content
        if not isinstance(content, EmailContent):
            raise ProviderFailure(
                FailureKind.PERMANENT, f"cannot send {type(content).__name__} as email", provider=self.name
            )
        return_path = self.links.return_path(outgoing.message_id) if self.links is not None else None
        try:
            email = wire_email(
                envelope_sender=return_path,
                message_id=outgoing.message_id,
                sender=self.sender,
                recipient=outgoing.address,
                rendered=Rendered(subject=content.subject, text=content.text, html=content.html),
                person_id=outgoing.person_id,
                purpose=outgoing.purpose,
                links=self.links,
                # Transactional emails (a receipt, a password reset) are not tracked.
                track=self.track and outgoing.purpose is Purpose.MARKETING,
                dkim=self.dkim,
            )
        except DeliveryError as error:
            # Not ADDRESS_INVALID: the sender (configuration) may be what is wrong, and that must not suppress
            # every recipient.
            raise ProviderFailure(FailureKind.PERMANENT, str(error), provider=self.name) from error
        await self.submit(email, message_id=outgoing.message_id, sender=return_path or self._envelope_sender)
        return Accepted(provider=self.name, provider_message_id=email.message_id)

    async def submit(
        self, email: EmailMessage | WireEmail, *, message_id: uuid.UUID, sender: str | None = None
    ) -> None:
        """Submit a built email from the envelope `sender` (else its From), in a span "smtp send"; raise
        ProviderFailure if it is not taken."""
        config = self.config
        with tracer.start_as_current_span(
            "smtp send",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "omni.message_id": str(message_id),
                "omni.provider": self.name,
                "server.address": config.host,
                "server.port": config.port,
            },
        ) as span:
            try:
                await self._pool.send(email, sender=sender)
            except aiosmtplib.SMTPException as error:
                failure = classify(error, provider=self.name)
                span.record_exception(error)
                span.set_status(trace.Status(trace.StatusCode.ERROR, str(failure)))
                raise failure from error
            except OSError as error:  # a connection reset between commands
                raise ProviderFailure(
                    FailureKind.TRANSIENT, f"cannot reach the server: {error}", provider=self.name
                ) from error

    async def close(self) -> None:
        """Close the pooled connections."""
        await self._pool.close()


def classify(error: aiosmtplib.SMTPException, *, provider: str = "smtp") -> ProviderFailure:
    """Sort an SMTP error: 5xx answers about the message or its recipients are final, the rest may pass later.

    A recipient refused for good with a "bad address" code (550/551/553, or enhanced 5.1.x for a wrong
    mailbox or domain) is ADDRESS_INVALID, so the address is suppressed; other 5xx answers are PERMANENT.
    Authentication and TLS problems count as transient: they are the operator's to fix, and the message
    should go out once they are fixed (or through the next provider) rather than be failed.
    """

    def failure(kind: FailureKind, detail: str) -> ProviderFailure:
        return ProviderFailure(kind, detail, provider=provider)

    if isinstance(error, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in error.recipients]
        detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in error.recipients)
        if codes and all(code >= 500 for code in codes):
            invalid = all(_address_invalid(r.code, r.message) for r in error.recipients)
            kind = FailureKind.ADDRESS_INVALID if invalid else FailureKind.PERMANENT
            return failure(kind, f"recipient refused: {detail}")
        return failure(FailureKind.TRANSIENT, f"recipient deferred: {detail}")
    if isinstance(error, aiosmtplib.SMTPAuthenticationError):
        return failure(FailureKind.TRANSIENT, f"authentication failed: {error.code} {error.message}")
    if isinstance(error, aiosmtplib.SMTPConnectError | aiosmtplib.SMTPServerDisconnected):
        return failure(FailureKind.TRANSIENT, f"cannot reach the server: {error}")
    if isinstance(error, aiosmtplib.SMTPTimeoutError):
        return failure(FailureKind.TRANSIENT, f"timed out: {error}")
    if isinstance(error, aiosmtplib.SMTPResponseException):
        if error.code >= 500:
            return failure(FailureKind.PERMANENT, f"refused: {error.code} {error.message}")
        return failure(FailureKind.TRANSIENT, f"deferred: {error.code} {error.message}")
    return failure(FailureKind.TRANSIENT, str(error))


def _address_invalid(code: int, message: str) -> bool:
    enhanced = message.split(" ", 1)[0] if message[:1].isdigit() else ""
    if enhanced:
        return enhanced in _ADDRESS_INVALID_ENHANCED
    return code in _ADDRESS_INVALID_BASIC


def create(name: str, options: Mapping[str, Any], defaults: Mapping[str, Any]) -> SmtpProvider:
    """An SMTP provider from its configuration entry (OMNI_GATEWAY_PROVIDERS): host, port, username, password,
    timeout_s, starttls, pool_size, max_idle_s, sender (default: the gateway's smtp_from). From `defaults`:
    "email_links" (EmailLinks: List-Unsubscribe, tracking, VERP return paths), "dkim" (DkimSigner) and
    "email_tracking" (bool), the gateway's email settings shared by every SMTP instance."""
    config = SmtpConfig(
        host=str(options.get("host", "127.0.0.1")),
        port=int(options.get("port", 25)),
        username=options.get("username"),
        password=options.get("password"),
        timeout_s=float(options.get("timeout_s", 10.0)),
        starttls=bool(options.get("starttls", False)),
        pool_size=int(options.get("pool_size", 4)),
        max_idle_s=float(options.get("max_idle_s", 30.0)),
    )
    return SmtpProvider(
        name,
        config,
        sender=str(options.get("sender") or defaults.get("sender", "")),
        links=defaults.get("email_links"),
        dkim=defaults.get("dkim"),
        track=bool(defaults.get("email_tracking", False)),
    )
