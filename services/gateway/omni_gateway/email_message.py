"""Building the email of a message: From, To, Subject, Message-ID, plain text and optional HTML."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr

from omni_gateway.domain import PermanentFailure
from omni_gateway.rendering import Rendered


def message_id_header(message_id: uuid.UUID, sender: str) -> str:
    """The Message-ID of a message: the same for every attempt, so a receiver can drop a repeat."""
    _, at, domain = parseaddr(sender)[1].rpartition("@")
    return f"<{message_id}@{domain if at and domain else 'localhost'}>"


def build_email(
    *,
    message_id: uuid.UUID,
    sender: str,
    recipient: str,
    rendered: Rendered,
    now: datetime | None = None,
) -> EmailMessage:
    """The email for one message; multipart/alternative (text, then HTML) when there is an HTML body.

    The sender may carry a display name ("Shop <shop@example.com>"). A recipient or sender that is not one
    valid address is a permanent failure.
    """
    email = EmailMessage()
    try:
        display_name, sender_address = parseaddr(sender)
        email["From"] = _address(sender_address, display_name)
        email["To"] = _address(recipient)
    except (ValueError, IndexError, HeaderParseError) as error:
        raise PermanentFailure(f"invalid email address: {error}") from error
    email["Subject"] = rendered.subject
    email["Date"] = format_datetime(now or datetime.now(UTC))
    email["Message-ID"] = message_id_header(message_id, sender)
    email["X-Omni-Message-Id"] = str(message_id)
    email.set_content(rendered.text)
    if rendered.html:
        email.add_alternative(rendered.html, subtype="html")
    return email


def _address(text: str, display_name: str = "") -> Address:
    # Address(addr_spec=...) parses and refuses what is not one address, such as "a@b, c@d" or CR/LF.
    if any(c in text for c in "\r\n"):
        raise ValueError(f"{text!r} contains a line break")
    return Address(display_name=display_name, addr_spec=text.strip())
