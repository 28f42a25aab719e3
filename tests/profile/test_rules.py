"""Pure rules: page tokens, trait precedence, and how traits and consent combine when persons merge."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omni_profile import paging
from omni_profile.domain import Consent, Trait
from omni_profile.merge import merge_consents
from omni_profile.precedence import SourcePolicy

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
        base64.urlsafe_b64encode(
            json.dumps({"k": "profile.timeline", "v": 1, "p": "person-1", "t": "x", "i": "e"}).encode()
        ).decode(),
        base64.urlsafe_b64encode(
            json.dumps({"k": "profile.timeline", "v": 2, "p": "person-1", "t": 1, "i": "e"}).encode()
        ).decode(),
        base64.urlsafe_b64encode(
            json.dumps({"k": "profile.timeline", "v": 1, "p": "person-1", "t": 10**20, "i": "e"}).encode()
        ).decode(),
    ],
)
def test_a_malformed_page_token_is_refused(token: str) -> None:
    with pytest.raises(paging.BadPageToken):
        paging.decode("person-1", token)


def test_a_page_token_of_another_list_is_refused() -> None:
    token = paging.encode_name("computed_traits", "lifetime_value")
    with pytest.raises(paging.BadPageToken):
        paging.decode("person-1", token)


def test_a_page_token_of_another_person_is_refused() -> None:
    token = paging.encode("person-1", paging.TimelinePosition(T0, "evt-1"))
    with pytest.raises(paging.BadPageToken, match="another person"):
        paging.decode("person-2", token)


POLICY = SourcePolicy()


def test_merged_traits_take_the_highest_source_then_the_survivors_then_the_newest() -> None:
    survivor = {"name": Trait("name", "Ada", "web", T0), "tier": Trait("tier", "silver", "api", T0)}
    older = {
        "name": Trait("name", "Ada Lovelace", "crm", T0 - timedelta(days=9)),
        "city": Trait("city", "London", "app", T0),
        "tier": Trait("tier", "gold", "api", T0 + timedelta(days=1)),
    }
    newer = {"city": Trait("city", "Oslo", "app", T0 + timedelta(days=1))}
    merged = POLICY.merge(survivor, [older, newer])
    assert {name: trait.value for name, trait in merged.items()} == {
        "name": "Ada Lovelace",  # crm outranks web, however old
        "tier": "silver",  # same source: the survivor's own value
        "city": "Oslo",  # same source among the merged: the newest
    }


def test_a_lower_source_does_not_overwrite_a_higher_one_until_it_is_stale() -> None:
    crm = Trait("email", "ada@example.com", "crm", T0)
    assert POLICY.may_overwrite(crm, "crm", T0)
    assert not POLICY.may_overwrite(crm, "web", T0 + timedelta(days=30))
    assert POLICY.may_overwrite(crm, "web", T0 + timedelta(days=400))
    web = Trait("email", "ada@example.com", "web", T0)
    assert POLICY.may_overwrite(web, "call_center", T0)
    assert not POLICY.may_overwrite(web, "some_import", T0), "unlisted sources rank last"


def test_at_the_same_rank_the_newer_value_wins_whichever_arrives_last() -> None:
    web = Trait("plan", "gold", "web", T0)
    assert POLICY.may_overwrite(web, "web", T0 + timedelta(minutes=1))
    assert POLICY.may_overwrite(web, "web", T0), "a write at the same time replaces, as before"
    assert not POLICY.may_overwrite(web, "web", T0 - timedelta(minutes=1)), "a late, older write loses"
    assert not POLICY.may_overwrite(web, "some_import", T0 + timedelta(days=30))


def test_a_higher_source_older_than_the_value_by_more_than_the_staleness_does_not_overwrite_it() -> None:
    web = Trait("city", "Oslo", "web", T0)
    assert POLICY.may_overwrite(web, "crm", T0 - timedelta(days=300))
    assert not POLICY.may_overwrite(web, "crm", T0 - timedelta(days=400))


_SOURCES = st.sampled_from(["crm", "call_center", "app", "web", "api", "pos"])
_DAYS = st.integers(min_value=-800, max_value=800)


@given(first=st.tuples(_SOURCES, _DAYS), second=st.tuples(_SOURCES, _DAYS))
def test_two_writes_of_a_trait_end_the_same_in_either_order(
    first: tuple[str, int], second: tuple[str, int]
) -> None:
    writes = [
        Trait("plan", "first", first[0], T0 + timedelta(days=first[1])),
        Trait("plan", "second", second[0], T0 + timedelta(days=second[1], seconds=1)),
    ]

    def applied(order: list[Trait]) -> Trait:
        value = order[0]
        for write in order[1:]:
            if POLICY.may_overwrite(value, write.source, write.updated_at):
                value = write
        return value

    assert applied(writes) == applied(writes[::-1])


def test_merged_consent_takes_the_latest_answer_per_channel_and_purpose() -> None:
    survivor = [
        Consent("email", "granted", "web", T0),
        Consent("sms", "granted", "web", T0 + timedelta(days=5)),
        Consent("email", "granted", "web", T0, purpose="transactional"),
    ]
    merged = [
        [Consent("email", "revoked", "app", T0 + timedelta(days=1)), Consent("sms", "denied", "app", T0)]
    ]
    result = merge_consents(survivor, merged)
    assert result[("email", "marketing")].state == "revoked"
    assert result[("sms", "marketing")].state == "granted"
    assert result[("email", "transactional")].state == "granted"
