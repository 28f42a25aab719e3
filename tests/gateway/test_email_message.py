"""Building the email: headers, plain and multipart bodies, bad addresses."""

from __future__ import annotations

import uuid

import pytest

from omni_gateway.domain import PermanentFailure
from omni_gateway.email_message import build_email, message_id_header
from omni_gateway.rendering import Rendered

MESSAGE_ID = uuid.UUID("0193a0b4-5f6e-7c3d-9a1b-2c3d4e5f6a7b")


def test_plain_text_email_has_the_headers_and_one_text_part() -> None:
    email = build_email(
        message_id=MESSAGE_ID,
        sender="Shop <shop@example.com>",
        recipient="ada@example.com",
        rendered=Rendered(subject="Your cart", text="Hello Ada\n", html=""),
    )
    assert email["From"] == "Shop <shop@example.com>"
    assert email["To"] == "ada@example.com"
    assert email["Subject"] == "Your cart"
    assert email["Message-ID"] == f"<{MESSAGE_ID}@example.com>"
    assert email["X-Omni-Message-Id"] == str(MESSAGE_ID)
    assert email["Date"]
    assert email.get_content_type() == "text/plain"
    assert email.get_content() == "Hello Ada\n"


def test_html_makes_a_multipart_alternative_with_text_first() -> None:
    email = build_email(
        message_id=MESSAGE_ID,
        sender="omni@localhost",
        recipient="ada@example.com",
        rendered=Rendered(subject="Cart", text="plain", html="<p>rich</p>"),
    )
    assert email.get_content_type() == "multipart/alternative"
    parts = list(email.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert parts[1].get_content().strip() == "<p>rich</p>"


def test_non_ascii_subject_and_body_survive() -> None:
    email = build_email(
        message_id=MESSAGE_ID,
        sender="omni@localhost",
        recipient="zoe@example.com",
        rendered=Rendered(subject="Grüße, Zoë", text="Dein Warenkorb: Käse", html=""),
    )
    assert email["Subject"] == "Grüße, Zoë"
    assert "Käse" in email.get_content()


def test_message_id_is_the_same_for_every_attempt() -> None:
    assert message_id_header(MESSAGE_ID, "a@b.example") == message_id_header(MESSAGE_ID, "a@b.example")
    assert message_id_header(MESSAGE_ID, "omni") == f"<{MESSAGE_ID}@localhost>"


@pytest.mark.parametrize(
    "recipient", ["", "not-an-address", "a@example.com, b@example.com", "a@b\r\nBcc: c@d"]
)
def test_a_bad_recipient_is_a_permanent_failure(recipient: str) -> None:
    with pytest.raises(PermanentFailure, match="invalid email address"):
        build_email(
            message_id=MESSAGE_ID,
            sender="omni@localhost",
            recipient=recipient,
            rendered=Rendered(subject="s", text="t", html=""),
        )
