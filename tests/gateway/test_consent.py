"""The consent rule on its own: which answers let a marketing or a transactional message out on a channel."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from omni_gateway.consent import Consent, ConsentState, refusal
from omni_gateway.domain import Channel, Purpose

EMAIL, SMS = Channel.EMAIL, Channel.SMS
MARKETING, TRANSACTIONAL = Purpose.MARKETING, Purpose.TRANSACTIONAL
GRANTED, DENIED, REVOKED = ConsentState.GRANTED, ConsentState.DENIED, ConsentState.REVOKED


def _consent(
    state: ConsentState,
    *,
    purpose: Purpose = MARKETING,
    channel: Channel = EMAIL,
    allowed: bool | None = None,
    pending: bool = False,
    at: int | None = None,
) -> Consent:
    return Consent(
        channel=channel,
        purpose=purpose,
        state=state,
        contact_allowed=(state == GRANTED and not pending) if allowed is None else allowed,
        pending_confirmation=pending,
        updated_at=None if at is None else datetime(2026, 1, at, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    ("consents", "expected"),
    [
        ([], "no marketing consent for email"),
        ([_consent(GRANTED)], None),
        ([_consent(DENIED)], "no marketing consent for email: denied"),
        ([_consent(REVOKED)], "no marketing consent for email: revoked"),
        (
            [_consent(GRANTED, pending=True)],
            "no marketing consent for email: awaiting double opt-in confirmation",
        ),
        (
            [_consent(GRANTED, allowed=False)],
            "no marketing consent for email: granted but not allowing contact",
        ),
        ([_consent(GRANTED, channel=SMS)], "no marketing consent for email"),
        ([_consent(GRANTED, purpose=TRANSACTIONAL)], "no marketing consent for email"),
        ([_consent(GRANTED, at=1), _consent(REVOKED, at=2)], "no marketing consent for email: revoked"),
        ([_consent(REVOKED, at=2), _consent(GRANTED, at=3)], None),
    ],
    ids=[
        "none",
        "granted",
        "denied",
        "revoked",
        "pending-double-opt-in",
        "granted-not-allowed",
        "other-channel-only",
        "transactional-only",
        "latest-revoked",
        "latest-granted",
    ],
)
def test_marketing_needs_consent_that_allows_contact(consents: list[Consent], expected: str | None) -> None:
    assert refusal(MARKETING, EMAIL, consents) == expected


@pytest.mark.parametrize(
    ("consents", "expected"),
    [
        ([], None),
        ([_consent(DENIED), _consent(REVOKED, channel=SMS)], None),
        ([_consent(GRANTED, purpose=TRANSACTIONAL)], None),
        ([_consent(GRANTED, purpose=TRANSACTIONAL, pending=True)], None),
        ([_consent(DENIED, purpose=TRANSACTIONAL)], "no transactional consent for email: denied"),
        ([_consent(REVOKED, purpose=TRANSACTIONAL)], "no transactional consent for email: revoked"),
        ([_consent(REVOKED, purpose=TRANSACTIONAL, channel=SMS)], None),
    ],
    ids=[
        "none",
        "marketing-refused",
        "granted",
        "pending",
        "denied",
        "revoked",
        "revoked-on-another-channel",
    ],
)
def test_transactional_goes_out_unless_refused_for_the_channel(
    consents: list[Consent], expected: str | None
) -> None:
    assert refusal(TRANSACTIONAL, EMAIL, consents) == expected
