"""Checks of consent, read and computed-trait requests: each kind of bad input names its field."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from omni.common.v1 import common_pb2
from omni.profile.v1 import profile_pb2
from omni_kit.errors import InvalidArgument
from omni_profile import request_validation as checks

PERSON = "0190f5a4-7c1e-7000-8000-000000000001"


def _fields(check: Callable[[], object]) -> set[str]:
    with pytest.raises(InvalidArgument) as raised:
        check()
    return {v.field for v in raised.value.violations}


def test_set_consent_needs_person_channel_and_state() -> None:
    assert _fields(lambda: checks.validate_set_consent(profile_pb2.SetConsentRequest(person_id=PERSON))) == {
        "consent"
    }
    empty = profile_pb2.SetConsentRequest(person_id="nope", consent=profile_pb2.Consent())
    assert _fields(lambda: checks.validate_set_consent(empty)) == {
        "person_id",
        "consent.channel",
        "consent.state",
    }


def _consent(**fields: object) -> profile_pb2.SetConsentRequest:
    base: dict[str, object] = {
        "channel": common_pb2.CHANNEL_EMAIL,
        "state": profile_pb2.CONSENT_STATE_GRANTED,
    }
    return profile_pb2.SetConsentRequest(person_id=PERSON, consent=profile_pb2.Consent(**(base | fields)))


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (_consent(purpose=42), "consent.purpose"),
        (_consent(double_opt_in=9), "consent.double_opt_in"),
        (
            _consent(channel=common_pb2.CHANNEL_SMS, double_opt_in=profile_pb2.DOUBLE_OPT_IN_STATE_CONFIRMED),
            "consent.double_opt_in",
        ),
        (
            _consent(
                state=profile_pb2.CONSENT_STATE_DENIED,
                double_opt_in=profile_pb2.DOUBLE_OPT_IN_STATE_PENDING_CONFIRMATION,
            ),
            "consent.double_opt_in",
        ),
    ],
)
def test_consent_purpose_and_double_opt_in_are_checked(
    request_: profile_pb2.SetConsentRequest, field: str
) -> None:
    assert _fields(lambda: checks.validate_set_consent(request_)) == {field}


def test_a_double_opt_in_email_grant_passes() -> None:
    checks.validate_set_consent(
        _consent(
            purpose=profile_pb2.CONSENT_PURPOSE_MARKETING,
            double_opt_in=profile_pb2.DOUBLE_OPT_IN_STATE_PENDING_CONFIRMATION,
        )
    )


def test_reads_need_a_person_and_no_negative_sizes() -> None:
    get = profile_pb2.GetProfileRequest(person_id="", recent_event_count=-1)
    assert _fields(lambda: checks.validate_get_profile(get)) == {"person_id", "recent_event_count"}
    page = profile_pb2.ListTimelineRequest(person_id="x", page_size=-1)
    assert _fields(lambda: checks.validate_list_timeline(page)) == {"person_id", "page_size"}
    history = profile_pb2.ListTraitHistoryRequest(person_id=PERSON, page_size=-1, trait_name="x" * 200)
    assert _fields(lambda: checks.validate_list_trait_history(history)) == {"page_size", "trait_name"}
    consents = profile_pb2.ListConsentHistoryRequest(person_id="x")
    assert _fields(lambda: checks.validate_list_consent_history(consents)) == {"person_id"}
    traits = profile_pb2.ListComputedTraitsRequest(page_size=-3)
    assert _fields(lambda: checks.validate_list_computed_traits(traits)) == {"page_size"}


K = profile_pb2


def _definition(**fields: object) -> profile_pb2.CreateComputedTraitRequest:
    base: dict[str, object] = {
        "name": "orders_7d",
        "kind": K.COMPUTED_TRAIT_KIND_COUNT,
        "event_type": "order_completed",
    }
    return profile_pb2.CreateComputedTraitRequest(computed_trait=profile_pb2.ComputedTrait(**(base | fields)))


GOOD_DEFINITIONS = [
    _definition(window_days=7),
    _definition(kind=K.COMPUTED_TRAIT_KIND_SUM, property="revenue", channels=[common_pb2.CHANNEL_WEB]),
    _definition(kind=K.COMPUTED_TRAIT_KIND_LAST_OCCURRENCE, event_type="logged_in", per_channel=True),
    _definition(kind=K.COMPUTED_TRAIT_KIND_MOST_FREQUENT_VALUE, event_type="", property="category"),
    _definition(kind=K.COMPUTED_TRAIT_KIND_MOST_FREQUENT_CHANNEL, event_type=""),
    _definition(kind=K.COMPUTED_TRAIT_KIND_LIFETIME_VALUE, currency_code="EUR"),
]


@pytest.mark.parametrize("request_", GOOD_DEFINITIONS)
def test_good_definitions_pass(request_: profile_pb2.CreateComputedTraitRequest) -> None:
    checks.validate_create_computed_trait(request_)


BAD_DEFINITIONS = {
    "no definition": (profile_pb2.CreateComputedTraitRequest(), "computed_trait"),
    "no name": (_definition(name=""), "computed_trait.name"),
    "name not snake case": (_definition(name="Orders7d"), "computed_trait.name"),
    "no kind": (_definition(kind=0), "computed_trait.kind"),
    "unknown kind": (_definition(kind=99), "computed_trait.kind"),
    "bad event type": (_definition(event_type="Order Completed"), "computed_trait.event_type"),
    "sum of every event": (
        _definition(kind=K.COMPUTED_TRAIT_KIND_SUM, event_type="", property="x"),
        "computed_trait.event_type",
    ),
    "sum without property": (_definition(kind=K.COMPUTED_TRAIT_KIND_SUM), "computed_trait.property"),
    "count with property": (_definition(property="x"), "computed_trait.property"),
    "unspecified channel": (_definition(channels=[0]), "computed_trait.channels[0]"),
    "window too long": (_definition(window_days=4000), "computed_trait.window_days"),
    "window on last occurrence": (
        _definition(kind=K.COMPUTED_TRAIT_KIND_LAST_OCCURRENCE, window_days=3),
        "computed_trait.window_days",
    ),
    "per channel with window": (_definition(per_channel=True, window_days=3), "computed_trait.per_channel"),
    "per channel most frequent": (
        _definition(kind=K.COMPUTED_TRAIT_KIND_MOST_FREQUENT_CHANNEL, per_channel=True),
        "computed_trait.per_channel",
    ),
    "lifetime value without currency": (
        _definition(kind=K.COMPUTED_TRAIT_KIND_LIFETIME_VALUE),
        "computed_trait.currency_code",
    ),
    "currency on a count": (_definition(currency_code="EUR"), "computed_trait.currency_code"),
    "malformed currency": (
        _definition(kind=K.COMPUTED_TRAIT_KIND_LIFETIME_VALUE, currency_code="eur"),
        "computed_trait.currency_code",
    ),
    "unknown channel": (_definition(channels=[common_pb2.CHANNEL_WEB, 42]), "computed_trait.channels[1]"),
    "long property": (
        _definition(kind=K.COMPUTED_TRAIT_KIND_SUM, property="p" * 129),
        "computed_trait.property",
    ),
    "long description": (_definition(description="d" * 501), "computed_trait.description"),
    # PostgreSQL cannot store a NUL: it reached the database and answered INTERNAL.
    "NUL in the description": (_definition(description="for\x00people"), "computed_trait.description"),
}


@pytest.mark.parametrize("case", BAD_DEFINITIONS)
def test_bad_definitions_name_their_field(case: str) -> None:
    request_, field = BAD_DEFINITIONS[case]
    with pytest.raises(InvalidArgument) as raised:
        checks.validate_create_computed_trait(request_)
    assert [v.field for v in raised.value.violations] == [field]  # once, though a rule and code both look


def test_a_description_keeps_tabs_and_line_breaks() -> None:
    checks.validate_create_computed_trait(_definition(description="Orders\tin the last\r\nweek"))
