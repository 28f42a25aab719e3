"""Channel choice: the first of a journey's channels with consent GRANTED, never one without."""

from __future__ import annotations

from omni.common.v1 import common_pb2 as c
from omni.profile.v1 import profile_pb2 as p
from omni_decisioning.channel_choice import choose_channel


def test_the_first_granted_channel_in_the_journeys_order_wins() -> None:
    consents = {c.CHANNEL_EMAIL: p.CONSENT_STATE_GRANTED, c.CHANNEL_SMS: p.CONSENT_STATE_GRANTED}
    assert choose_channel([c.CHANNEL_SMS, c.CHANNEL_EMAIL], consents) == c.CHANNEL_SMS
    assert choose_channel([c.CHANNEL_EMAIL, c.CHANNEL_SMS], consents) == c.CHANNEL_EMAIL


def test_channels_without_a_grant_are_skipped() -> None:
    consents = {
        c.CHANNEL_PUSH: p.CONSENT_STATE_DENIED,
        c.CHANNEL_SMS: p.CONSENT_STATE_REVOKED,
        c.CHANNEL_EMAIL: p.CONSENT_STATE_GRANTED,
    }
    assert choose_channel([c.CHANNEL_PUSH, c.CHANNEL_SMS, c.CHANNEL_EMAIL], consents) == c.CHANNEL_EMAIL


def test_unknown_and_unspecified_consent_is_no_consent() -> None:
    consents = {c.CHANNEL_SMS: p.CONSENT_STATE_UNSPECIFIED}
    assert choose_channel([c.CHANNEL_EMAIL, c.CHANNEL_SMS], consents) is None


def test_no_channel_when_nothing_is_granted_or_nothing_is_known() -> None:
    assert choose_channel([c.CHANNEL_EMAIL], {c.CHANNEL_EMAIL: p.CONSENT_STATE_DENIED}) is None
    assert choose_channel([c.CHANNEL_EMAIL], {}) is None
    assert choose_channel([], {c.CHANNEL_EMAIL: p.CONSENT_STATE_GRANTED}) is None


def test_a_grant_on_a_channel_the_journey_does_not_use_does_not_count() -> None:
    assert choose_channel([c.CHANNEL_EMAIL], {c.CHANNEL_SMS: p.CONSENT_STATE_GRANTED}) is None
