"""What profile tells identity about the events it resolves: the merges an event causes name that event."""

from __future__ import annotations

from omni.identity.v1 import identity_pb2
from omni.profile.v1 import profile_pb2

from .support import Services, event, ident, track, unique


async def test_a_merge_caused_by_a_tracked_event_names_it_in_identity_lineage(services: Services) -> None:
    cookie, device = unique("cookie-"), unique("device-")
    web = await track(services, event(identifiers=[ident("anonymous_id", cookie)]))
    await track(services, event(identifiers=[ident("device_id", device)]))
    login = event("logged_in", identifiers=[ident("anonymous_id", cookie), ident("device_id", device)])
    login.source = "web_sdk"
    await track(services, login)

    response = await services.identity.ListPersonMerges(
        identity_pb2.ListPersonMergesRequest(person_id=web.person_id)
    )
    [merge] = response.merges
    assert merge.reference == f"web_sdk/{login.id}"


async def test_an_event_id_with_control_characters_is_rejected_and_nothing_written(
    services: Services,
) -> None:
    before = await services.counts()
    good = event()
    response = await services.profile.BatchTrackEvents(
        profile_pb2.BatchTrackEventsRequest(events=[event(id_="evt-\x00-1"), good])
    )
    bad, ok = response.results
    assert bad.status == profile_pb2.TRACK_STATUS_REJECTED
    assert [(v.field, v.description) for v in bad.field_violations] == [("id", "holds control characters")]
    assert ok.status == profile_pb2.TRACK_STATUS_RECORDED
    after = await services.counts()
    assert after["events"] == before["events"] + 1
