"""Channel choice: the first of a journey's channels profile's verdict allows marketing on, never another."""

from __future__ import annotations

import uuid

from omni.common.v1 import common_pb2 as c
from omni_decisioning.channel_choice import choose_channel
from omni_kit.contact import PersonVerdicts, Purpose, Reason, Verdict

MARKETING, TRANSACTIONAL = Purpose.MARKETING, Purpose.TRANSACTIONAL


def _verdicts(*verdicts: Verdict) -> PersonVerdicts:
    return PersonVerdicts(uuid.uuid4(), 1, {(v.channel, v.purpose): v for v in verdicts})


def _allowed(channel: int, purpose: Purpose = MARKETING) -> Verdict:
    return Verdict(channel, purpose, True, Reason.CONSENT_GRANTED)


def _refused(channel: int, reason: Reason) -> Verdict:
    return Verdict(channel, MARKETING, False, reason)


def test_the_first_allowed_channel_in_the_journeys_order_wins() -> None:
    verdicts = _verdicts(_allowed(c.CHANNEL_EMAIL), _allowed(c.CHANNEL_SMS))
    assert choose_channel([c.CHANNEL_SMS, c.CHANNEL_EMAIL], verdicts) == c.CHANNEL_SMS
    assert choose_channel([c.CHANNEL_EMAIL, c.CHANNEL_SMS], verdicts) == c.CHANNEL_EMAIL


def test_refused_channels_are_skipped() -> None:
    verdicts = _verdicts(
        _refused(c.CHANNEL_PUSH, Reason.DENIED),
        _refused(c.CHANNEL_SMS, Reason.AWAITING_CONFIRMATION),
        _allowed(c.CHANNEL_EMAIL),
    )
    assert choose_channel([c.CHANNEL_PUSH, c.CHANNEL_SMS, c.CHANNEL_EMAIL], verdicts) == c.CHANNEL_EMAIL


def test_a_transactional_verdict_does_not_let_a_journey_send() -> None:
    verdicts = _verdicts(Verdict(c.CHANNEL_EMAIL, TRANSACTIONAL, True, Reason.NOT_REFUSED))
    assert choose_channel([c.CHANNEL_EMAIL], verdicts) is None


def test_no_channel_when_nothing_is_allowed_or_nothing_is_known() -> None:
    assert choose_channel([c.CHANNEL_EMAIL], _verdicts(_refused(c.CHANNEL_EMAIL, Reason.REVOKED))) is None
    assert choose_channel([c.CHANNEL_EMAIL], PersonVerdicts(uuid.uuid4())) is None
    assert choose_channel([], _verdicts(_allowed(c.CHANNEL_EMAIL))) is None


def test_an_allowed_channel_the_journey_does_not_use_does_not_count() -> None:
    assert choose_channel([c.CHANNEL_EMAIL], _verdicts(_allowed(c.CHANNEL_SMS))) is None
