"""Consent per channel and purpose over gRPC: double opt-in for email, the history, the announcements."""

from __future__ import annotations

import grpc
import pytest

from omni.common.v1 import common_pb2
from omni.profile.v1 import events_pb2, profile_pb2
from omni_kit.bus import unpack
from omni_kit.errors import status_details

from .support import Services, event, get_profile, track

EMAIL, SMS = common_pb2.CHANNEL_EMAIL, common_pb2.CHANNEL_SMS
GRANTED, REVOKED = profile_pb2.CONSENT_STATE_GRANTED, profile_pb2.CONSENT_STATE_REVOKED
MARKETING, TRANSACTIONAL = profile_pb2.CONSENT_PURPOSE_MARKETING, profile_pb2.CONSENT_PURPOSE_TRANSACTIONAL
PENDING = profile_pb2.DOUBLE_OPT_IN_STATE_PENDING_CONFIRMATION
CONFIRMED = profile_pb2.DOUBLE_OPT_IN_STATE_CONFIRMED


async def _set(services: Services, person: str, **fields: object) -> profile_pb2.Consent:
    response = await services.profile.SetConsent(
        profile_pb2.SetConsentRequest(person_id=person, consent=profile_pb2.Consent(**fields))  # type: ignore[arg-type]
    )
    return response.consent


def _consents(profile: profile_pb2.Profile) -> set[tuple[int, int, int, int, bool]]:
    return {(c.channel, c.purpose, c.state, c.double_opt_in, c.contact_allowed) for c in profile.consents}


async def test_consent_is_per_channel_and_purpose(services: Services) -> None:
    person = (await track(services, event())).person_id
    await _set(services, person, channel=EMAIL, state=GRANTED, purpose=TRANSACTIONAL)
    await _set(services, person, channel=EMAIL, state=REVOKED, source="unsubscribe_link")
    await _set(services, person, channel=SMS, state=GRANTED, purpose=MARKETING)
    assert _consents(await get_profile(services, person)) == {
        (EMAIL, TRANSACTIONAL, GRANTED, 0, True),
        (EMAIL, MARKETING, REVOKED, 0, False),  # no purpose given: marketing
        (SMS, MARKETING, GRANTED, 0, True),
    }
    announced = await services.events.wait_for(
        lambda e: e.type == "profile.consent_changed" and e.person_id == person, count=3
    )
    purposes = [unpack(e, events_pb2.ConsentChangedEvent).consent.purpose for e in announced]
    assert purposes == [TRANSACTIONAL, MARKETING, MARKETING]


async def test_email_double_opt_in_waits_for_confirmation(services: Services) -> None:
    person = (await track(services, event())).person_id
    pending = await _set(
        services, person, channel=EMAIL, state=GRANTED, double_opt_in=PENDING, source="newsletter"
    )
    assert (pending.state, pending.double_opt_in, pending.contact_allowed) == (GRANTED, PENDING, False)
    confirmed = await _set(
        services, person, channel=EMAIL, state=GRANTED, double_opt_in=CONFIRMED, source="link"
    )
    assert (confirmed.double_opt_in, confirmed.contact_allowed) == (CONFIRMED, True)
    again = await _set(services, person, channel=EMAIL, state=GRANTED, double_opt_in=CONFIRMED, source="link")
    assert again.update_time == confirmed.update_time, "confirming twice changes nothing"
    assert _consents(await get_profile(services, person)) == {(EMAIL, MARKETING, GRANTED, CONFIRMED, True)}
    history = await services.profile.ListConsentHistory(
        profile_pb2.ListConsentHistoryRequest(person_id=person)
    )
    assert [(c.double_opt_in, c.source) for c in history.consents] == [
        (CONFIRMED, "link"),
        (PENDING, "newsletter"),
    ]


async def test_confirming_without_a_pending_grant_is_refused(services: Services) -> None:
    person = (await track(services, event())).person_id
    before = await services.counts()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _set(services, person, channel=EMAIL, state=GRANTED, double_opt_in=CONFIRMED)
    details = status_details(raised.value)
    assert details.code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.error_info is not None and details.error_info.reason == "NO_PENDING_CONFIRMATION"
    assert await services.counts() == before


async def test_the_consent_history_pages_backwards(services: Services) -> None:
    person = (await track(services, event())).person_id
    states = [GRANTED, REVOKED, GRANTED, REVOKED, GRANTED]
    for state in states:
        await _set(services, person, channel=SMS, state=state)
    request = profile_pb2.ListConsentHistoryRequest(person_id=person, page_size=2)
    seen: list[int] = []
    while True:
        page = await services.profile.ListConsentHistory(request)
        seen += [c.state for c in page.consents]
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert seen == list(reversed(states))
