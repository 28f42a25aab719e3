"""Handing an email to the SMTP server (aiosmtplib), with its failures sorted into transient and permanent."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from email.message import EmailMessage

import aiosmtplib
from opentelemetry import trace

from omni_gateway.domain import PermanentFailure, TransientFailure

tracer = trace.get_tracer("omni_gateway.smtp")


@dataclass(frozen=True)
class SmtpConfig:
    """Where and how to submit mail."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    timeout_s: float = 10.0
    starttls: bool = False


class Mailer:
    """Submits emails to one SMTP server, a connection per email."""

    def __init__(self, config: SmtpConfig) -> None:
        self._config = config

    async def send(self, email: EmailMessage, *, message_id: uuid.UUID) -> None:
        """Submit one email, in a span "smtp send"; raise TransientFailure or PermanentFailure if refused."""
        config = self._config
        with tracer.start_as_current_span(
            "smtp send",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "omni.message_id": str(message_id),
                "server.address": config.host,
                "server.port": config.port,
            },
        ) as span:
            try:
                await aiosmtplib.send(
                    email,
                    hostname=config.host,
                    port=config.port,
                    username=config.username,
                    password=config.password,
                    timeout=config.timeout_s,
                    start_tls=config.starttls,
                )
            except aiosmtplib.SMTPException as error:
                failure = classify(error)
                span.record_exception(error)
                span.set_status(trace.Status(trace.StatusCode.ERROR, str(failure)))
                raise failure from error


def classify(error: aiosmtplib.SMTPException) -> TransientFailure | PermanentFailure:
    """Sort an SMTP error: 5xx answers about the message or its recipients are final, the rest may pass later.

    Authentication and TLS problems count as transient: they are the operator's to fix, and the message
    should go out once they are fixed rather than be failed.
    """
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in error.recipients]
        detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in error.recipients)
        if codes and all(code >= 500 for code in codes):
            return PermanentFailure(f"smtp: recipient refused: {detail}")
        return TransientFailure(f"smtp: recipient deferred: {detail}")
    if isinstance(error, aiosmtplib.SMTPAuthenticationError):
        return TransientFailure(f"smtp: authentication failed: {error.code} {error.message}")
    if isinstance(error, aiosmtplib.SMTPConnectError | aiosmtplib.SMTPServerDisconnected):
        return TransientFailure(f"smtp: cannot reach the server: {error}")
    if isinstance(error, aiosmtplib.SMTPTimeoutError):
        return TransientFailure(f"smtp: timed out: {error}")
    if isinstance(error, aiosmtplib.SMTPResponseException):
        if error.code >= 500:
            return PermanentFailure(f"smtp: refused: {error.code} {error.message}")
        return TransientFailure(f"smtp: deferred: {error.code} {error.message}")
    return TransientFailure(f"smtp: {error}")
