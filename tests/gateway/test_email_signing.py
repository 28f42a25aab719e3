"""The marketing email as it reaches an SMTP server: DKIM verified by dkimpy's own verifier over the bytes the
server received, covering the RFC 8058 headers; tracked links and the pixel; transactional emails unmarked."""

from __future__ import annotations

import uuid
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import cast

import aiosmtplib
import dkim
import pytest

from omni_gateway.domain import Purpose
from omni_gateway.email_links import LinkKind
from omni_gateway.email_message import build_email
from omni_gateway.rendering import Rendered
from omni_kit.embedded import SmtpSink

from .email_support import DOMAIN, DkimKey, dkim_key, email_links

PERSON = uuid.UUID("0193a0b4-0000-7000-8000-00000000000a")

HTML = """<!doctype html>
<html><body>
<p>Grüße, <a href="https://shop.example/offers?a=1&amp;b=2" class="cta">your offer</a></p>
<p><a href="mailto:help@shop.example">help</a> <a href="#top">top</a>
<a data-omni-no-track href="https://shop.example/plain">plain</a></p>
</body></html>
"""


@pytest.fixture(scope="module")
def key() -> DkimKey:
    return dkim_key()


async def _received(sink: SmtpSink, email: EmailMessage, *, sender: str | None = None) -> bytes:
    """Send through aiosmtplib to the sink and return the bytes the server got (its envelope lines dropped)."""
    await aiosmtplib.send(email, hostname=sink.host, port=sink.port, sender=sender)
    marker = f"X-Omni-Message-Id: {email['X-Omni-Message-Id']}\r\n".encode()
    await sink.wait_for(lambda m: m["X-Omni-Message-Id"] == email["X-Omni-Message-Id"])
    raw = next(raw for path in sink.message_paths() if marker in (raw := path.read_bytes()))
    # The sink writes the envelope as two headers in front of what it received.
    return b"".join(raw.split(b"\r\n", 2)[2:])


def _marketing(key: DkimKey, message_id: uuid.UUID, *, track: bool = True) -> EmailMessage:
    return build_email(
        message_id=message_id,
        sender=f"Shop Ünïcode <news@{DOMAIN}>",
        recipient="ada@example.com",
        rendered=Rendered(
            subject="Ihr Angebot: Käse", text="Grüße\nhttps://shop.example/offers\n", html=HTML
        ),
        person_id=PERSON,
        purpose=Purpose.MARKETING,
        links=email_links(),
        track=track,
        dkim=key.signer,
    )


async def test_dkim_signature_over_the_received_bytes_verifies_and_covers_list_unsubscribe(
    smtp_sink: SmtpSink, key: DkimKey
) -> None:
    message_id = uuid.uuid4()
    raw = await _received(smtp_sink, _marketing(key, message_id))

    assert raw.startswith(b"DKIM-Signature: ")
    assert dkim.verify(raw, dnsfunc=key.dnsfunc())
    parsed = cast(EmailMessage, message_from_bytes(raw, policy=policy.default))
    fields = dkim.util.parse_tag_value(parsed["DKIM-Signature"].encode().replace(b"\r\n", b""))
    signed = {h.strip().lower() for h in fields[b"h"].split(b":")}
    assert {b"from", b"to", b"subject", b"date", b"message-id"} <= signed
    assert {b"list-unsubscribe", b"list-unsubscribe-post", b"mime-version", b"content-type"} <= signed
    assert fields[b"d"] == DOMAIN.encode() and fields[b"c"] == b"relaxed/relaxed"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # A changed List-Unsubscribe (someone pointing it elsewhere) breaks the signature.
    tampered = raw.replace(b"<mailto:unsubscribe@", b"<mailto:attacker@")
    assert tampered != raw
    assert not dkim.verify(tampered, dnsfunc=key.dnsfunc())


async def test_a_signed_email_verifies_when_the_server_has_no_8bitmime(
    smtp_sink: SmtpSink, key: DkimKey
) -> None:
    """aiosmtplib flattens for 7bit then: the non-ASCII body is quoted-printable already, nothing changes."""
    email = _marketing(key, uuid.uuid4())
    seven = aiosmtplib.email.flatten_message(email, cte_type="7bit")
    eight = aiosmtplib.email.flatten_message(email, cte_type="8bit")
    assert seven == eight
    assert dkim.verify(seven, dnsfunc=key.dnsfunc())


def test_list_unsubscribe_names_the_one_click_url_with_a_signed_token_then_the_mailto(key: DkimKey) -> None:
    message_id = uuid.uuid4()
    links = email_links()
    email = _marketing(key, message_id)
    value = str(email["List-Unsubscribe"])
    https, mailto = (part.strip().strip("<>") for part in value.split(","))
    assert https.startswith("https://mail.shop.example/u/")
    assert mailto == "mailto:unsubscribe@shop.example?subject=unsubscribe"
    claims = links.verify(LinkKind.UNSUBSCRIBE, https.rpartition("/")[2])
    assert (claims.message_id, claims.person_id, claims.purpose) == (message_id, PERSON, Purpose.MARKETING)
    assert claims.expires_at > claims.issued_at


def test_links_in_the_html_go_through_the_click_redirect_and_the_pixel_is_added(key: DkimKey) -> None:
    links = email_links()
    email = _marketing(key, uuid.uuid4())
    html = next(p for p in email.iter_parts() if p.get_content_type() == "text/html").get_content()
    assert 'class="cta"' in html
    href = html.split('<a href="', 1)[1].split('"', 1)[0]
    assert href.startswith("https://mail.shop.example/c/")
    claims = links.verify(LinkKind.CLICK, href.rpartition("/")[2])
    assert claims.url == "https://shop.example/offers?a=1&b=2"
    # Untouched: mailto, anchors, links marked not to be tracked; and everything around the links.
    assert 'href="mailto:help@shop.example"' in html and 'href="#top"' in html
    assert 'href="https://shop.example/plain"' in html
    assert html.startswith("<!doctype html>\n<html><body>\n<p>Grüße, ")
    pixel_at, body_end = html.index('<img src="https://mail.shop.example/o/'), html.index("</body>")
    assert pixel_at < body_end
    # The plain text part is left as it is.
    assert "https://shop.example/offers" in email.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def test_a_transactional_email_has_no_list_unsubscribe_and_no_tracking(key: DkimKey) -> None:
    email = build_email(
        message_id=uuid.uuid4(),
        sender=f"news@{DOMAIN}",
        recipient="ada@example.com",
        rendered=Rendered(subject="Your receipt", text="Thanks", html=HTML),
        person_id=PERSON,
        purpose=Purpose.TRANSACTIONAL,
        links=email_links(),
        dkim=key.signer,
    )
    assert email["List-Unsubscribe"] is None and email["List-Unsubscribe-Post"] is None
    assert "/c/" not in email.as_string() and "/o/" not in email.as_string()
    raw = email.as_bytes(policy=policy.SMTP)
    assert dkim.verify(raw, dnsfunc=key.dnsfunc())
    # The absent List-Unsubscribe is signed too: adding one later breaks the signature.
    added = b"List-Unsubscribe: <https://attacker.example/u/x>\r\n" + raw
    assert not dkim.verify(added, dnsfunc=key.dnsfunc())


def test_the_return_path_names_the_message_whatever_the_case_and_refuses_forgeries() -> None:
    links = email_links()
    message_id = uuid.uuid4()
    address = links.return_path(message_id)
    local = address.partition("@")[0]
    assert local.startswith("bounces+") and len(local) <= 64
    assert links.message_of_return_path(address) == message_id
    assert links.message_of_return_path(address.upper()) == message_id
    other = uuid.uuid4()
    forged = address.replace(message_id.hex, other.hex)
    assert links.message_of_return_path(forged) is None
    assert links.message_of_return_path(f"bounces+{other.hex}@{DOMAIN}") is None
    assert email_links(secrets=("another",)).message_of_return_path(address) is None
    # After a rotation (the old secret kept to verify) bounces of emails sent before are still recognised.
    assert (
        email_links(secrets=("test-secret-of-the-links", "new")).message_of_return_path(address) == message_id
    )


def test_build_email_without_the_new_arguments_is_as_before() -> None:
    email = build_email(
        message_id=uuid.uuid4(),
        sender="omni@localhost",
        recipient="ada@example.com",
        rendered=Rendered(subject="s", text="t", html="<a href='https://x.example/'>x</a>"),
    )
    assert email["List-Unsubscribe"] is None and email["DKIM-Signature"] is None
    assert "https://x.example/" in email.as_string()


def test_a_non_ascii_from_address_signs_as_the_ascii_return_path_sends_it(key: DkimKey) -> None:
    """With the VERP return path as envelope sender and an ASCII recipient, aiosmtplib flattens without
    SMTPUTF8 even when the From address is not ASCII: the signature is made over those bytes."""
    email = build_email(
        message_id=uuid.uuid4(),
        sender="Zoë <zoe@shöp.example>",
        recipient="ada@example.com",
        rendered=Rendered(subject="Grüße", text="Käse", html=""),
        person_id=PERSON,
        purpose=Purpose.MARKETING,
        links=email_links(),
        dkim=key.signer,
    )
    assert dkim.verify(aiosmtplib.email.flatten_message(email, utf8=False), dnsfunc=key.dnsfunc())
    # The domain of an internationalised sender is written in its IDNA form where it must be ASCII.
    assert email["Message-ID"].endswith("@xn--shp-tna.example>")
    assert email_links().return_path(uuid.uuid4()).isascii()
