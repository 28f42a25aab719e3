"""Building the email of a message: From, To, Subject, Message-ID, plain text and optional HTML; for marketing
the one-click List-Unsubscribe headers (RFC 8058), tracked links and the open pixel; a DKIM signature.

The email is built so that its bytes are the same however an SMTP client flattens it (aiosmtplib: policy SMTP,
7bit or 8bit by the server's 8BITMIME): text that is not ASCII is quoted-printable, and the headers too long to
fold without changing them (List-Unsubscribe, DKIM-Signature) are written verbatim. The DKIM signature is made
over those bytes, so it verifies at the receiver.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email import contentmanager
from email import policy as email_policy
from email.errors import HeaderParseError
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import Policy
from email.utils import format_datetime, parseaddr

from omni_gateway.dkim_signing import DkimSigner
from omni_gateway.domain import PermanentFailure, Purpose
from omni_gateway.email_links import EmailLinks, track_html
from omni_gateway.rendering import Rendered

ONE_CLICK = "List-Unsubscribe=One-Click"

# The body encoding `set_content` uses (7bit, else quoted-printable or base64 as it judges), called as it is
# so that the bytes written directly are the email package's; private, so not in the type stubs.
_encode_text: Callable[[str, str, str | None, Policy], tuple[str, str]] = contentmanager._encode_text  # type: ignore[attr-defined]


class _HeaderClasses(HeaderRegistry):
    """The email package's header registry, keeping the header class it makes for each name: the registry
    makes a new class every time a header is set, a good part of building an email."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        made = self._made.get(name.lower())
        if made is None:
            made = self._made[name.lower()] = super().__getitem__(name)
        return made


POLICY = email_policy.default.clone(header_factory=_HeaderClasses())
"""The policy of the emails built here: the default one, with the header classes kept."""


def message_id_header(message_id: uuid.UUID, sender: str) -> str:
    """The Message-ID of a message: the same for every attempt, so a receiver can drop a repeat."""
    return f"<{message_id}@{ascii_domain(sender)}>"


def from_address(sender: str) -> str:
    """The address of a sender that may carry a display name ("Shop <shop@example.com>")."""
    return parseaddr(sender)[1]


def ascii_domain(address: str) -> str:
    """The domain of an address in ASCII (an internationalised domain in its IDNA form); "localhost" when
    there is none or it cannot be written so."""
    _, at, domain = parseaddr(address)[1].rpartition("@")
    if not at or not domain:
        return "localhost"
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return "localhost"


def build_email(
    *,
    message_id: uuid.UUID,
    sender: str,
    recipient: str,
    rendered: Rendered,
    now: datetime | None = None,
    person_id: uuid.UUID | None = None,
    purpose: Purpose | None = None,
    links: EmailLinks | None = None,
    track: bool = False,
    dkim: DkimSigner | None = None,
) -> EmailMessage:
    """The email for one message; multipart/alternative (text, then HTML) when there is an HTML body.

    The sender may carry a display name ("Shop <shop@example.com>"). A recipient or sender that is not one
    valid address is a permanent failure.

    With `links` and the `person_id`: a marketing email (`purpose` MARKETING) carries `List-Unsubscribe`
    (the one-click URL, and the mailto if configured) and `List-Unsubscribe-Post: List-Unsubscribe=One-Click`;
    with `track` too, its HTML links go through the click redirect and the open pixel is added. With `dkim`
    the email is signed last, over everything above. The envelope sender (VERP) is `links.return_path(...)`,
    given to the SMTP client, not written into the email.
    """
    email = EmailMessage(policy=POLICY)
    try:
        display_name, sender_address = parseaddr(sender)
        email["From"] = _address(sender_address, display_name)
        email["To"] = _address(recipient)
    except (ValueError, IndexError, HeaderParseError) as error:
        raise PermanentFailure(f"invalid email address: {error}") from error
    email["Subject"] = rendered.subject
    # Headers made here are known to be well-formed: written as they are, not parsed again.
    email.set_raw("Date", _Verbatim("Date", format_datetime(now or datetime.now(UTC))))
    email.set_raw("Message-ID", _Verbatim("Message-ID", message_id_header(message_id, sender)))
    email.set_raw("X-Omni-Message-Id", _Verbatim("X-Omni-Message-Id", str(message_id)))
    html = rendered.html
    if links is not None and person_id is not None:
        claims = links.claims(message_id, person_id, purpose or Purpose.MARKETING)
        if (purpose or Purpose.MARKETING) is Purpose.MARKETING:
            email.set_raw("List-Unsubscribe", _Verbatim("List-Unsubscribe", links.list_unsubscribe(claims)))
            email.set_raw("List-Unsubscribe-Post", _Verbatim("List-Unsubscribe-Post", ONE_CLICK))
        if track and html:
            html = track_html(html, links=links, claims=claims)
    email.set_content(rendered.text, cte=_cte(rendered.text))
    if html:
        email.add_alternative(html, subtype="html", cte=_cte(html))
        email.set_boundary(_boundary(rendered.text, html))
    if dkim is not None:
        sign(email, dkim, envelope_sender=links.return_path(message_id) if links is not None else None)
    return email


@dataclass(frozen=True)
class WireEmail:
    """An email as it goes on the wire: its bytes (CRLF line ends, signed when DKIM is on), flattened once."""

    data: bytes
    recipient: str
    """The address it goes to (the To address)."""
    message_id: str
    """Its Message-ID header."""
    smtputf8: bool
    """Whether an envelope address or a header is not ASCII (the server must offer SMTPUTF8)."""


def wire_email(
    *,
    message_id: uuid.UUID,
    sender: str,
    recipient: str,
    rendered: Rendered,
    envelope_sender: str | None = None,
    now: datetime | None = None,
    person_id: uuid.UUID | None = None,
    purpose: Purpose | None = None,
    links: EmailLinks | None = None,
    track: bool = False,
    dkim: DkimSigner | None = None,
) -> WireEmail:
    """The email of `build_email` (same arguments) as an SMTP client sends it (from `envelope_sender`, else
    from its From), flattened once, with the DKIM-Signature over exactly those bytes put first: the signed
    bytes are the sent bytes.

    The common email (ASCII addresses without a display name to quote, a short ASCII subject) is written
    directly as bytes, the same bytes the email package would write (`tests/gateway/test_email_wire.py`
    compares them), without building an EmailMessage: parsing its headers again, `set_content` and the
    generator were half of an email's CPU. Any other email is built by `build_email` and flattened.
    """
    data = _direct(
        message_id=message_id,
        sender=sender,
        recipient=recipient,
        rendered=rendered,
        now=now,
        person_id=person_id,
        purpose=purpose,
        links=links,
        track=track,
    )
    smtputf8 = False
    if data is None:
        email = build_email(
            message_id=message_id,
            sender=sender,
            recipient=recipient,
            rendered=rendered,
            now=now,
            person_id=person_id,
            purpose=purpose,
            links=links,
            track=track,
        )
        policy = smtp_policy(email, envelope_sender)
        smtputf8 = policy is email_policy.SMTPUTF8
        data = email.as_bytes(policy=policy)
        recipient = email["To"].addresses[0].addr_spec
    if dkim is not None:
        data = dkim.signature(data) + data
    return WireEmail(
        data=data,
        recipient=recipient.strip(),
        message_id=message_id_header(message_id, sender),
        smtputf8=smtputf8,
    )


# What the direct path takes: what the email package writes as it is, unquoted, unencoded, unfolded.
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})+")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9]+(?: [A-Za-z0-9]+)*")
_PLAIN_SUBJECT = re.compile(r"[!-~]+(?: [!-~]+)*")
_MAX_LINE = 78
_CRLF = "\r\n"


def _from_line(sender: str) -> str | None:
    name, address = parseaddr(sender)
    if not _PLAIN_ADDRESS.fullmatch(address) or (name and not _PLAIN_NAME.fullmatch(name)):
        return None
    line = f"From: {name} <{address}>" if name else f"From: {address}"
    return line if len(line) <= _MAX_LINE else None


def _direct(
    *,
    message_id: uuid.UUID,
    sender: str,
    recipient: str,
    rendered: Rendered,
    now: datetime | None,
    person_id: uuid.UUID | None,
    purpose: Purpose | None,
    links: EmailLinks | None,
    track: bool,
) -> bytes | None:
    """The email's bytes written directly, or None when it is not the common kind (see wire_email)."""
    from_line = _from_line(sender)
    subject = rendered.subject
    if (
        from_line is None
        or not _PLAIN_ADDRESS.fullmatch(recipient)
        or len(subject) > _MAX_LINE - len("Subject: ")
        or not _PLAIN_SUBJECT.fullmatch(subject)
        or "=?" in subject
    ):
        return None
    headers = [
        from_line,
        f"To: {recipient}",
        f"Subject: {subject}",
        f"Date: {format_datetime(now or datetime.now(UTC))}",
        f"Message-ID: {message_id_header(message_id, sender)}",
        f"X-Omni-Message-Id: {message_id}",
    ]
    html = rendered.html
    if links is not None and person_id is not None:
        claims = links.claims(message_id, person_id, purpose or Purpose.MARKETING)
        if (purpose or Purpose.MARKETING) is Purpose.MARKETING:
            headers.append(f"List-Unsubscribe: {links.list_unsubscribe(claims)}")
            headers.append(f"List-Unsubscribe-Post: {ONE_CLICK}")
        if track and html:
            html = track_html(html, links=links, claims=claims)
    text_cte, text = _encode_text(rendered.text, "utf-8", _cte(rendered.text), POLICY)
    text_headers = ['Content-Type: text/plain; charset="utf-8"', f"Content-Transfer-Encoding: {text_cte}"]
    if not html:
        lines = [*headers, *text_headers, "MIME-Version: 1.0", "", text]
    else:
        html_cte, html_body = _encode_text(html, "utf-8", _cte(html), POLICY)
        boundary = _boundary(rendered.text, html)
        lines = [
            *headers,
            "MIME-Version: 1.0",
            "Content-Type: multipart/alternative;",
            f' boundary="{boundary}"',
            "",
            f"--{boundary}",
            *text_headers,
            "",
            text,
            f"--{boundary}",
            'Content-Type: text/html; charset="utf-8"',
            f"Content-Transfer-Encoding: {html_cte}",
            "MIME-Version: 1.0",
            "",
            html_body,
            f"--{boundary}--",
            "",
        ]
    # The encoded bodies end with a line break and use "\n": every line end becomes CRLF, as the generator
    # writes them with the SMTP policy.
    return "\n".join(lines).replace("\r\n", "\n").replace("\n", _CRLF).encode("ascii")


def sign(email: EmailMessage, dkim: DkimSigner, *, envelope_sender: str | None = None) -> None:
    """Add a DKIM-Signature, first of the headers, over the email as an SMTP client will send it (from
    `envelope_sender`, else from the From address)."""
    signature = dkim.signature(email.as_bytes(policy=smtp_policy(email, envelope_sender)))
    name, _, value = signature.decode("ascii").partition(":")
    headers = list(email.raw_items())
    for header in {header for header, _ in headers}:
        del email[header]
    email.set_raw(name, _Verbatim(name, value.strip()))
    for header, header_value in headers:
        email.set_raw(header, header_value)


def smtp_policy(email: EmailMessage, envelope_sender: str | None = None) -> Policy:
    """The policy aiosmtplib flattens the email with: SMTPUTF8 when an envelope address is not ASCII (the
    envelope sender, else From's, and the recipients), else SMTP."""
    fields = ("To",) if envelope_sender is not None else ("From", "To")
    addresses = (envelope_sender or "") + "".join(
        address.addr_spec for field in fields for address in getattr(email[field], "addresses", ())
    )
    return email_policy.SMTP if addresses.isascii() else email_policy.SMTPUTF8


class _Verbatim(str):
    """A header value written as given, its lines joined by the policy's line end: the email package would
    otherwise refold a long URL or a signature into encoded words."""

    name: str

    def __new__(cls, name: str, value: str) -> _Verbatim:
        header = super().__new__(cls, value)
        header.name = name
        return header

    def fold(self, *, policy: Policy) -> str:
        return f"{self.name}: " + policy.linesep.join(self.splitlines()) + policy.linesep


def _boundary(*parts: str) -> str:
    # Chosen here rather than by the generator, which compiles a regular expression for every email to check
    # its random boundary against the body; 128 random bits, checked with a plain search.
    while True:
        boundary = f"=_omni_{secrets.token_hex(16)}"
        if not any(boundary in part for part in parts):
            return boundary


def _cte(text: str) -> str | None:
    # Not ASCII: quoted-printable, so the bytes are the same for a 7bit and an 8bit server (DKIM's body hash).
    return None if text.isascii() else "quoted-printable"


def _address(text: str, display_name: str = "") -> Address:
    # Address(addr_spec=...) parses and refuses what is not one address, such as "a@b, c@d" or CR/LF.
    if any(c in text for c in "\r\n"):
        raise ValueError(f"{text!r} contains a line break")
    return Address(display_name=display_name, addr_spec=text.strip())
