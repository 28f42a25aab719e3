"""The email settings as the gateway's Settings take them, and the HTML link rewriting on its own."""

from __future__ import annotations

import uuid
from pathlib import Path

import dkim
import pytest
from pydantic import ValidationError

import omni_gateway.main as gateway_main
from omni_gateway.domain import Purpose
from omni_gateway.email_links import LinkKind, TokenInvalid, track_html
from omni_gateway.email_settings import EmailSettings

from .email_support import DOMAIN, SELECTOR, dkim_key, email_links

Settings = gateway_main.Settings
"""The gateway's settings, the email settings among them."""


def test_the_settings_come_from_omni_gateway_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key = dkim_key(1024)
    (tmp_path / "dkim.pem").write_bytes(key.private_pem)
    for name, value in {
        "OMNI_GATEWAY_EMAIL_PUBLIC_URL": "https://mail.shop.example",
        "OMNI_GATEWAY_EMAIL_TOKEN_SECRET": "s3cret",
        "OMNI_GATEWAY_DKIM_DOMAIN": DOMAIN,
        "OMNI_GATEWAY_DKIM_SELECTOR": SELECTOR,
        "OMNI_GATEWAY_DKIM_PRIVATE_KEY_FILE": str(tmp_path / "dkim.pem"),
        "OMNI_GATEWAY_SMTP_FROM": "Shop <news@shop.example>",
        "OMNI_GATEWAY_DATABASE_URL": "postgresql+asyncpg://omni@127.0.0.1/unused",
        "OMNI_GATEWAY_NATS_URL": "nats://127.0.0.1:4222",
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.email_http_port == 8089 and settings.bounce_smtp_port == 2526
    links = settings.email_links(settings.smtp_from)
    assert links.bounce_domain == DOMAIN
    assert links.unsubscribe_url(links.claims(uuid.uuid4(), uuid.uuid4(), Purpose.MARKETING)).startswith(
        "https://mail.shop.example/u/"
    )
    signer = settings.dkim_signer()
    assert signer is not None
    raw = b"From: news@shop.example\r\nTo: a@example.com\r\nSubject: x\r\n\r\nbody\r\n"
    assert dkim.verify(signer.signature(raw) + raw, dnsfunc=key.dnsfunc())
    # The same secret in another process verifies the same tokens (replicas share links).
    again = Settings().email_links(settings.smtp_from)
    token = links.issue(LinkKind.OPEN, links.claims(uuid.uuid4(), uuid.uuid4(), Purpose.MARKETING))
    assert again.verify(LinkKind.OPEN, token)


def test_links_of_emails_sent_before_a_secret_rotation_keep_working() -> None:
    before = email_links(secrets=("old",))
    token = before.issue(LinkKind.UNSUBSCRIBE, before.claims(uuid.uuid4(), uuid.uuid4(), Purpose.MARKETING))
    after = email_links(secrets=("old", "new"))
    assert after.verify(LinkKind.UNSUBSCRIBE, token)
    fresh = after.issue(LinkKind.UNSUBSCRIBE, after.claims(uuid.uuid4(), uuid.uuid4(), Purpose.MARKETING))
    with pytest.raises(TokenInvalid):
        before.verify(LinkKind.UNSUBSCRIBE, fresh)  # the new secret signs


def test_dkim_settings_come_all_together_or_not_at_all() -> None:
    with pytest.raises(ValidationError, match="DKIM needs"):
        EmailSettings(dkim_domain=DOMAIN)
    assert EmailSettings().dkim_signer() is None
    with pytest.raises(ValidationError):
        EmailSettings(email_public_url="javascript:alert(1)")


def test_without_a_secret_each_process_has_its_own() -> None:
    a, b = EmailSettings().email_links("omni@localhost"), EmailSettings().email_links("omni@localhost")
    token = a.issue(LinkKind.OPEN, a.claims(uuid.uuid4(), uuid.uuid4(), Purpose.MARKETING))
    assert a.verify(LinkKind.OPEN, token)
    with pytest.raises(Exception, match="does not match"):
        b.verify(LinkKind.OPEN, token)


def test_track_html_without_a_body_tag_appends_the_pixel_and_keeps_odd_markup() -> None:
    links = email_links()
    claims = links.claims(uuid.uuid4(), uuid.uuid4(), Purpose.MARKETING)
    html = (
        "<P>Hi <A HREF='https://shop.example/a?x=1&amp;y=2' TITLE=\"x\">one</A>\n"
        '<a\n  href="https://shop.example/b">two</a> <a href="tel:+4912345">call</a>'
        f' <a href="{links.unsubscribe_url(claims)}">unsubscribe</a> <!-- <a href="https://x.example/"> -->'
    )
    tracked = track_html(html, links=links, claims=claims)
    hrefs = [part.split('"', 1)[0] for part in tracked.split('href="')[1:]]
    clicks = [links.verify(LinkKind.CLICK, h.rpartition("/")[2]).url for h in hrefs if "/c/" in h]
    assert clicks == ["https://shop.example/a?x=1&y=2", "https://shop.example/b"]
    assert 'title="x"' in tracked and "tel:+4912345" in tracked
    assert links.unsubscribe_url(claims) in tracked  # not sent through the redirect
    assert '<!-- <a href="https://x.example/"> -->' in tracked  # comments are not links
    assert tracked.rstrip().endswith("/>") and "/o/" in tracked.rsplit("<img", 1)[1]
