"""The email as the SMTP provider sends it (`wire_email`): written directly as bytes for the common email, the
same bytes the email package writes (compared here, boundaries aside, since each email draws its own), and
signed over exactly those bytes."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from omni_gateway.dkim_signing import DkimSigner
from omni_gateway.domain import Purpose
from omni_gateway.email_links import EmailLinks, LinkKind
from omni_gateway.email_message import build_email, smtp_policy, wire_email
from omni_gateway.rendering import Rendered

NOW = datetime(2026, 12, 8, 9, 30, tzinfo=UTC)
LINKS = EmailLinks(
    secrets=["s"], public_url="https://mail.shop.example", bounce_domain="shop.example", ttl_s=86400,
    clock=lambda: 1_800_000_000,
)  # fmt: skip
LONG_HTML = (
    "<html><body><p>Hello <a href='https://shop.example/a?x=1&y=2'>there</a></p>"
    + "<p>More of the same, and a <a href='https://shop.example/b'>link</a>.</p>" * 8
    + "</body></html>"
)
CASES = {
    "marketing, tracked, long HTML lines": ("Shop <news@shop.example>", "Your cart, Ann", "Hi Ann\n", LONG_HTML),
    "text only": ("news@shop.example", "Order 17 shipped", "Your order shipped.\nThanks!", ""),
    "text not ASCII": ("Shop <news@shop.example>", "Hello", "Grüße aus Köln\n" * 3, "<p>Grüße</p>"),
    "long text lines": ("Shop <news@shop.example>", "Hi", "word " * 100, ""),
    "lone CR and blank lines": ("Shop <news@shop.example>", "S", "a\r\n\r\nb\rc\n\n", "<p>a</p>\n\n"),
}  # fmt: skip


def _normalised(data: bytes) -> bytes:
    return re.sub(rb"=_omni_[0-9a-f]{32}", b"=_omni_B", data)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("purpose", [Purpose.MARKETING, Purpose.TRANSACTIONAL])
def test_the_direct_bytes_are_the_email_package_s(case: str, purpose: Purpose) -> None:
    sender, subject, text, html = CASES[case]
    arguments = dict(
        message_id=uuid.uuid4(),
        sender=sender,
        recipient="ann.smith+shop@mail.example.com",
        rendered=Rendered(subject=subject, text=text, html=html),
        now=NOW,
        person_id=uuid.uuid4(),
        purpose=purpose,
        links=LINKS,
        track=True,
    )
    envelope = LINKS.return_path(arguments["message_id"])  # type: ignore[arg-type]
    email = build_email(**arguments)  # type: ignore[arg-type]
    expected = email.as_bytes(policy=smtp_policy(email, envelope))
    wire = wire_email(envelope_sender=envelope, **arguments)  # type: ignore[arg-type]
    assert _normalised(wire.data) == _normalised(expected)
    assert (wire.recipient, wire.smtputf8) == ("ann.smith+shop@mail.example.com", False)
    assert wire.message_id == str(email["Message-ID"])


@pytest.mark.parametrize(
    ("sender", "recipient", "subject"),
    [
        ('"Smith, Ann" <news@shop.example>', "a@b.example", "Hi"),  # a display name to quote
        ("Shop <news@shop.example>", "a@bücher.example", "Hi"),  # not ASCII: SMTPUTF8
        ("Shop <news@shop.example>", "a@b.example", ""),  # no subject
        ("Shop <news@shop.example>", "a@b.example", "Grüße"),  # an encoded word
        ("Shop <news@shop.example>", "a@b.example", "word " * 30),  # folded
    ],
)
def test_other_emails_are_built_by_the_email_package(sender: str, recipient: str, subject: str) -> None:
    arguments = dict(
        message_id=uuid.uuid4(), sender=sender, recipient=recipient,
        rendered=Rendered(subject=subject, text="x", html=""), now=NOW,
    )  # fmt: skip
    email = build_email(**arguments)  # type: ignore[arg-type]
    wire = wire_email(**arguments)  # type: ignore[arg-type]
    assert wire.data == email.as_bytes(policy=smtp_policy(email))
    assert wire.smtputf8 == (not recipient.isascii())


def test_the_signature_covers_the_bytes_sent() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signer = DkimSigner(domain="shop.example", selector="s1", private_key_pem=pem)
    wire = wire_email(
        message_id=uuid.uuid4(),
        sender="Shop <news@shop.example>",
        recipient="a@b.example",
        rendered=Rendered(subject="Your cart", text="Hi\n", html=LONG_HTML),
        person_id=uuid.uuid4(),
        purpose=Purpose.MARKETING,
        links=LINKS,
        track=True,
        dkim=signer,
    )
    assert wire.data.startswith(b"DKIM-Signature: ")

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"s1._domainkey.shop.example."
        import base64

        return b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)

    assert dkim.verify(wire.data, dnsfunc=dns)


@pytest.mark.parametrize(
    "url", ["", "https://shop.example/a", "https://shop.example/" + "x" * 400, "https://é.example/ü"]
)
def test_link_tokens_are_itsdangerous_s_own(url: str) -> None:
    links = EmailLinks(
        secrets=["old", "new"], public_url="https://m.example", bounce_domain="m.example", ttl_s=60
    )
    claims = links.claims(uuid.uuid4(), uuid.uuid4(), Purpose.MARKETING, url=url)
    for kind in LinkKind:
        assert links.issue(kind, claims) == links._serializers[kind].dumps(claims.to_wire())
        assert links.verify(kind, links.issue(kind, claims)) == claims
    if url:
        assert links.click_urls(claims, [url, url + "?b"]) == [
            links.click_url(claims, url),
            links.click_url(claims, url + "?b"),
        ]


PLAIN_HTMLS = [
    LONG_HTML,
    "<!doctype html><html><body><A HREF='https://shop.example/a?x=1&amp;y=2' TITLE=\"x\">one</A>\n"
    '<a\n  href="https://shop.example/b" data-omni-no-track>two</a> <a href="tel:+4912345">call</a>'
    '<a href=https://shop.example/c/>three</a><a href="https://shop.example/d"/><abbr>x</abbr></BODY></html>',
    "no tags at all, a < b and a<b",
    "<p>x<a then</p> <a href='https://shop.example/e' href='https://other.example/'>dup</a></body> </body>",
    '<a href="https://mail.shop.example/u/token">unsubscribe</a><a href="https://shop.example/é">é</a>',
]


@pytest.mark.parametrize("html", PLAIN_HTMLS)
def test_links_found_tag_by_tag_are_those_htmlparser_finds_in_the_whole_document(html: str) -> None:
    from omni_gateway.email_links import _scan

    # With a comment at the end the document is fed to HTMLParser whole (the positions before it are the same).
    assert _scan(html, LINKS.public_url) == _scan(html + "<!---->", LINKS.public_url)
