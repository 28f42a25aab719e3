"""Events that name their person: the person must exist, by the rule SetTraits and SetConsent follow (profile
holds a record of them, else identity knows them), so a made-up id starts no profile identity never heard of."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from omni.common.v1 import common_pb2
from omni.identity.v1 import identity_pb2
from omni.profile.v1 import profile_pb2
from omni_kit.errors import status_details
from omni_kit.ids import new_id_str

from .support import Services, event, ident, struct, track, unique


async def _identity_person(services: Services) -> str:
    """A person identity created (a call centre's lookup, say) that profile has not heard of yet."""
    response = await services.identity.ResolvePerson(
        identity_pb2.ResolvePersonRequest(
            identifiers=[ident("email", f"{unique('caller-')}@example.com")], source="call_center"
        )
    )
    return response.resolution.person_id


async def test_an_event_naming_an_unknown_person_is_refused_like_traits_and_consent(
    services: Services,
) -> None:
    stranger = new_id_str()
    before = await services.counts()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await track(services, event("page_viewed", person_id=stranger))
    details = status_details(refused.value)
    assert details.code == grpc.StatusCode.NOT_FOUND
    assert details.error_info is not None
    assert details.error_info.reason == "PERSON_NOT_FOUND"
    assert dict(details.error_info.metadata) == {"field": "event.person_id", "person_id": stranger}
    for call in (
        services.profile.SetTraits(
            profile_pb2.SetTraitsRequest(person_id=stranger, traits=struct({"tier": "gold"}))
        ),
        services.profile.SetConsent(
            profile_pb2.SetConsentRequest(
                person_id=stranger,
                consent=profile_pb2.Consent(
                    channel=common_pb2.CHANNEL_EMAIL, state=profile_pb2.CONSENT_STATE_GRANTED
                ),
            )
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as also:
            await call
        assert status_details(also.value).code == grpc.StatusCode.NOT_FOUND
        assert status_details(also.value).error_info.reason == "PERSON_NOT_FOUND"  # type: ignore[union-attr]
    assert await services.counts() == before
    assert (
        await services.scalar("SELECT count(*) FROM profiles WHERE person_id = CAST(:p AS uuid)", p=stranger)
        == 0
    )


async def test_a_batch_and_a_stream_refuse_the_unknown_persons_events_alone(services: Services) -> None:
    stranger, known = new_id_str(), (await track(services, event("page_viewed"))).person_id
    batch = [event("page_viewed", person_id=stranger), event("page_viewed", person_id=known), event()]
    answer = await services.profile.BatchTrackEvents(profile_pb2.BatchTrackEventsRequest(events=batch))
    assert [(r.status, r.reason) for r in answer.results] == [
        (profile_pb2.TRACK_STATUS_REJECTED, "PERSON_NOT_FOUND"),
        (profile_pb2.TRACK_STATUS_RECORDED, ""),
        (profile_pb2.TRACK_STATUS_RECORDED, ""),
    ]
    assert [v.field for v in answer.results[0].field_violations] == ["person_id"]

    async def requests() -> AsyncIterator[profile_pb2.StreamTrackEventsRequest]:
        yield profile_pb2.StreamTrackEventsRequest(events=[event(person_id=known), event(person_id=stranger)])

    summary = await services.profile.StreamTrackEvents(requests())
    assert (summary.accepted, summary.rejected) == (1, 1)
    assert [(e.position, e.reason) for e in summary.errors] == [(1, "PERSON_NOT_FOUND")]
    assert (
        await services.scalar("SELECT count(*) FROM profiles WHERE person_id = CAST(:p AS uuid)", p=stranger)
        == 0
    )


async def test_a_person_identity_knows_is_tracked_before_profile_saw_them(services: Services) -> None:
    person = await _identity_person(services)
    answer = await track(services, event("call_answered", person_id=person))
    assert (answer.status, answer.person_id) == (profile_pb2.TRACK_STATUS_RECORDED, person)


async def test_a_person_identity_erased_is_refused_as_erased(services: Services) -> None:
    person = await _identity_person(services)
    await services.identity.ForgetPerson(
        identity_pb2.ForgetPersonRequest(
            request_id=unique("forget-"), person_id=person, requested_by="dpo", reason="GDPR art. 17"
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await track(services, event("call_answered", person_id=person))
    details = status_details(refused.value)
    assert (details.code, details.error_info.reason) == (  # type: ignore[union-attr]
        grpc.StatusCode.FAILED_PRECONDITION,
        "PERSON_ERASED",
    )
