"""An erased customer who comes back: their identifiers are tombstones in identity, and an event carrying only
those is refused alone (reason PERSON_ERASED) on every transport, while the events beside it are recorded."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from omni.common.v1 import common_pb2
from omni.identity.v1 import identity_pb2
from omni.profile.v1 import profile_pb2
from omni_kit.errors import status_details

from .conftest import WRITE_KEY
from .support import Services, event, ident, struct, track, unique


async def _erased_customer(services: Services) -> tuple[common_pb2.Identifier, str]:
    """A customer who shopped with a loyalty card and a user id, then was erased in identity and in profile:
    (their card, user id)."""
    card, user, _ = await _erased_person(services)
    return card, user


async def _erased_person(services: Services) -> tuple[common_pb2.Identifier, str, str]:
    """As _erased_customer, with the erased person's id."""
    card, user = ident("loyalty_card", unique("card-")), unique("customer-")
    first = await track(services, event("order_completed", identifiers=[card, ident("user_id", user)]))
    await services.identity.ForgetPerson(
        identity_pb2.ForgetPersonRequest(
            request_id=unique("forget-"), person_id=first.person_id, requested_by="dpo", reason="GDPR art. 17"
        )
    )
    await services.events.wait_for(
        lambda e: e.type == "profile.person_erased" and e.person_id == first.person_id
    )
    return card, user, first.person_id


async def _stored(services: Services, *ids: str) -> set[str]:
    rows = await services.scalar("SELECT array_agg(id) FROM events WHERE id = ANY(:ids)", ids=list(ids))
    return set(rows or ())


async def test_track_event_refuses_an_erased_customers_event_with_the_reason(tracked: Services) -> None:
    card, _ = await _erased_customer(tracked)
    before = await tracked.counts()
    message = event("store_visit", identifiers=[card], channel=common_pb2.CHANNEL_STORE)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await track(tracked, message)
    details = status_details(refused.value)
    assert details.code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.error_info is not None
    assert details.error_info.reason == "PERSON_ERASED"
    assert details.error_info.metadata["field"] == "event.identifiers"
    assert "erased" in details.message
    after = await tracked.counts()
    assert (after["events"], after["profiles"]) == (before["events"], before["profiles"])


async def test_a_batch_refuses_the_erased_customers_event_alone(tracked: Services) -> None:
    card, _ = await _erased_customer(tracked)
    batch = [event("page_viewed"), event("store_visit", identifiers=[card]), event("page_viewed")]
    response = await tracked.profile.BatchTrackEvents(profile_pb2.BatchTrackEventsRequest(events=batch))
    assert [r.status for r in response.results] == [
        profile_pb2.TRACK_STATUS_RECORDED,
        profile_pb2.TRACK_STATUS_REJECTED,
        profile_pb2.TRACK_STATUS_RECORDED,
    ]
    assert [r.reason for r in response.results] == ["", "PERSON_ERASED", ""]
    assert [v.field for v in response.results[1].field_violations] == ["identifiers"]
    assert response.results[1].person_id == ""
    assert (response.recorded_count, response.rejected_count) == (2, 1)
    assert await _stored(tracked, *(e.id for e in batch)) == {batch[0].id, batch[2].id}


async def test_a_stream_reports_the_erased_customers_event_and_keeps_the_rest(tracked: Services) -> None:
    card, _ = await _erased_customer(tracked)
    events = [event("page_viewed"), event("page_viewed"), event("store_visit", identifiers=[card])]

    async def requests() -> AsyncIterator[profile_pb2.StreamTrackEventsRequest]:
        yield profile_pb2.StreamTrackEventsRequest(events=events[:2])
        yield profile_pb2.StreamTrackEventsRequest(events=events[2:])

    response = await tracked.profile.StreamTrackEvents(requests())
    assert (response.accepted, response.duplicates, response.rejected) == (2, 0, 1)
    [error] = response.errors
    assert (error.position, error.event_id, error.reason) == (2, events[2].id, "PERSON_ERASED")
    assert [v.field for v in error.field_violations] == ["identifiers"]
    assert await _stored(tracked, *(e.id for e in events)) == {events[0].id, events[1].id}


async def test_http_track_answers_a_client_error_for_an_erased_customer(tracked: Services) -> None:
    _, user = await _erased_customer(tracked)
    message_id = unique("m-")
    status, answer = await tracked.post(
        "/v1/track", {"userId": user, "event": "Store Visit", "messageId": message_id}, WRITE_KEY
    )
    # A 4xx: analytics libraries retry 5xx, and retrying cannot bring an erased customer back.
    assert status == 400, answer
    [error] = answer["errors"]
    assert (error["messageId"], error["reason"]) == (message_id, "PERSON_ERASED")
    assert [f["field"] for f in error["fields"]] == ["userId"]
    assert await _stored(tracked, message_id) == set()


async def test_http_batch_records_the_others_and_lists_the_erased_customers_message(
    tracked: Services,
) -> None:
    _, user = await _erased_customer(tracked)
    ids = [unique("m-") for _ in range(3)]
    batch = [
        {"type": "track", "event": "Page Viewed", "messageId": ids[0], "anonymousId": unique("a-")},
        {"type": "track", "event": "Store Visit", "messageId": ids[1], "userId": user},
        {"type": "track", "event": "Page Viewed", "messageId": ids[2], "anonymousId": unique("a-")},
    ]
    status, answer = await tracked.post("/v1/batch", {"batch": batch}, WRITE_KEY)
    assert status == 200, answer
    assert (answer["accepted"], answer["rejected"]) == (2, 1)
    [error] = answer["errors"]
    assert (error["index"], error["messageId"], error["reason"]) == (1, ids[1], "PERSON_ERASED")
    assert await _stored(tracked, *ids) == {ids[0], ids[2]}


async def test_an_erased_identifier_beside_a_live_one_records_the_event_for_the_live_person(
    tracked: Services,
) -> None:
    # Identity ignores the tombstoned identifier and resolves the others (its "drop" policy).
    card, _ = await _erased_customer(tracked)
    cookie = ident("anonymous_id", unique("anon-"))
    recorded = await track(tracked, event("page_viewed", identifiers=[card, cookie]))
    assert recorded.status == profile_pb2.TRACK_STATUS_RECORDED
    assert recorded.person_id


async def test_every_write_naming_an_erased_person_answers_person_erased(tracked: Services) -> None:
    """TrackEvent, SetTraits and SetConsent naming an erased person's id answer alike: FAILED_PRECONDITION,
    reason PERSON_ERASED (erasure is for good, so sending it again cannot succeed), the person and the field
    named; and nothing is written."""
    _, _, person = await _erased_person(tracked)
    before = await tracked.counts()
    calls = {
        "event.person_id": lambda: track(tracked, event("page_viewed", person_id=person, identifiers=[])),
        "person_id": lambda: tracked.profile.SetTraits(
            profile_pb2.SetTraitsRequest(person_id=person, traits=struct({"tier": "gold"}), source="crm")
        ),
    }
    consent = profile_pb2.Consent(
        channel=common_pb2.CHANNEL_EMAIL,
        purpose=profile_pb2.CONSENT_PURPOSE_MARKETING,
        state=profile_pb2.CONSENT_STATE_GRANTED,
    )
    answers = {}
    for field, call in calls.items():
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call()
        answers[field] = status_details(refused.value)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await tracked.profile.SetConsent(profile_pb2.SetConsentRequest(person_id=person, consent=consent))
    answers["consent"] = status_details(refused.value)
    for name, details in answers.items():
        assert details.code == grpc.StatusCode.FAILED_PRECONDITION, (name, details)
        assert details.error_info is not None and details.error_info.reason == "PERSON_ERASED", name
        assert "erased" in details.message, name
    metadata = {
        name: dict(details.error_info.metadata) for name, details in answers.items() if details.error_info
    }
    assert metadata["person_id"] == metadata["consent"] == {"field": "person_id", "person_id": person}
    assert metadata["event.person_id"]["field"] == "event.person_id"
    assert await tracked.counts() == before
