"""Pure rules: page tokens and how traits and consent combine when persons merge."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from omni_profile import paging
from omni_profile.domain import Consent, Trait
from omni_profile.merge import merge_consents, merge_traits

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_page_token_round_trips_its_position() -> None:
    position = paging.TimelinePosition(datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC), "evt-1")
    token = paging.encode("person-1", position)
    assert paging.decode("person-1", token) == position


def test_a_page_token_is_opaque_text() -> None:
    token = paging.encode("person-1", paging.TimelinePosition(T0, "evt-1"))
    assert "evt-1" not in token
    assert token.isascii()


@pytest.mark.parametrize(
    "token",
    [
        "not base64 at all!",
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        base64.urlsafe_b64encode(json.dumps({"v": 1, "p": "person-1", "t": "x", "i": "e"}).encode()).decode(),
        base64.urlsafe_b64encode(json.dumps({"v": 2, "p": "person-1", "t": 1, "i": "e"}).encode()).decode(),
        base64.urlsafe_b64encode(
            json.dumps({"v": 1, "p": "person-1", "t": 10**20, "i": "e"}).encode()
        ).decode(),
    ],
)
def test_a_malformed_page_token_is_refused(token: str) -> None:
    with pytest.raises(paging.BadPageToken):
        paging.decode("person-1", token)


def test_a_page_token_of_another_person_is_refused() -> None:
    token = paging.encode("person-1", paging.TimelinePosition(T0, "evt-1"))
    with pytest.raises(paging.BadPageToken, match="another person"):
        paging.decode("person-2", token)


def test_merged_traits_keep_the_survivors_values_and_take_the_newest_of_the_rest() -> None:
    survivor = {"name": Trait("name", "Ada", "crm", T0)}
    older = {
        "name": Trait("name", "A.", "app", T0 + timedelta(days=9)),
        "tier": Trait("tier", "gold", "crm", T0),
    }
    newer = {
        "tier": Trait("tier", "platinum", "crm", T0 + timedelta(days=1)),
        "city": Trait("city", "Oslo", "app", T0),
    }
    merged = merge_traits(survivor, [older, newer])
    assert {name: trait.value for name, trait in merged.items()} == {
        "name": "Ada",
        "tier": "platinum",
        "city": "Oslo",
    }


def test_merged_consent_takes_the_latest_answer_per_channel() -> None:
    survivor = [
        Consent("email", "granted", "web", T0),
        Consent("sms", "granted", "web", T0 + timedelta(days=5)),
    ]
    merged = [
        [Consent("email", "revoked", "app", T0 + timedelta(days=1)), Consent("sms", "denied", "app", T0)]
    ]
    result = merge_consents(survivor, merged)
    assert result["email"].state == "revoked"
    assert result["sms"].state == "granted"
