"""An unmerge gives the restored person back every event a merge took from it, whatever the event carried
(tracked by person id, recorded from a gateway outcome), the events that named it while it was merged, and
the events identity resolved to the survivor after the merge that carry an identifier moved back; the
restored person's profile_changed lists them."""

from __future__ import annotations

from collections.abc import Callable

from omni.common.v1 import common_pb2
from omni.events.v1 import envelope_pb2
from omni.gateway.v1 import events_pb2 as gateway_events
from omni.gateway.v1 import gateway_pb2
from omni.identity.v1 import identity_pb2
from omni.profile.v1 import events_pb2, profile_pb2
from omni_kit.bus import unpack
from omni_profile.events import MOVED_EVENT_IDS_PER_CHANGE

from .support import (
    Services,
    event,
    gateway_message,
    get_profile,
    ident,
    publish_outcome,
    track,
    tracked_with_id,
    unique,
)


def _email() -> common_pb2.Identifier:
    return ident("email", unique("customer.") + "@example.com")


async def _customer(services: Services, email: common_pb2.Identifier) -> tuple[str, str]:
    """A customer seen once by email: (person id, event id)."""
    seen = event("page_viewed", identifiers=[email])
    return (await track(services, seen)).person_id, seen.id


async def _merge(services: Services, survivor: str, merged: str) -> None:
    """An operator merges two persons; returns once profile has applied it."""
    await services.identity.MergePersons(
        identity_pb2.MergePersonsRequest(
            request_id=unique("merge-"), survivor_person_id=survivor, merged_person_id=merged, reason="test"
        )
    )
    await services.events.wait_for(
        lambda e: (
            e.type == "profile.profile_changed"
            and list(unpack(e, events_pb2.ProfileChangedEvent).merged_person_ids) == [merged]
        )
    )


def _changes_of(person: str) -> Callable[[envelope_pb2.Envelope], bool]:
    return lambda e: e.type == "profile.profile_changed" and e.person_id == person


async def _unmerge(services: Services, restored: str) -> list[events_pb2.ProfileChangedEvent]:
    """An operator splits a person back out; returns the restored person's changes announced by it (profile
    announces the restored person last)."""
    before = {e.id for e in services.events.matching(_changes_of(restored))}
    await services.identity.UnmergePerson(
        identity_pb2.UnmergePersonRequest(request_id=unique("unmerge-"), person_id=restored, reason="test")
    )
    await services.events.wait_for(lambda e: _changes_of(restored)(e) and e.id not in before)
    return [
        unpack(e, events_pb2.ProfileChangedEvent)
        for e in services.events.matching(_changes_of(restored))
        if e.id not in before
    ]


async def _event_ids(services: Services, person: str) -> set[str]:
    response = await services.profile.ListTimeline(
        profile_pb2.ListTimelineRequest(person_id=person, page_size=1000)
    )
    assert not response.next_page_token
    return {e.id for e in response.events}


async def test_an_unmerge_gives_back_what_the_merge_took_and_lists_it(services: Services) -> None:
    bea_email, ana_email = _email(), _email()
    bea, bea_seen = await _customer(services, bea_email)
    # Bea's store visit, recorded by person id (no identifiers), and an email gateway sent her.
    visit = event("store_visited", person_id=bea, channel=common_pb2.CHANNEL_STORE)
    await track(services, visit)
    sent = gateway_message(bea, gateway_pb2.MESSAGE_STATUS_SENT)
    await publish_outcome(
        services, gateway_events.MessageSentEvent(message=sent), "gateway.message_sent", bea
    )
    await services.events.wait_for(tracked_with_id(f"gateway:{sent.id}"))
    ana, ana_seen = await _customer(services, ana_email)

    await _merge(services, ana, bea)
    # After the merge identity resolves Bea's email to Ana: her order lands on Ana, as Ana's own visit.
    order = event("order_completed", identifiers=[bea_email], properties={"revenue": 42, "currency": "EUR"})
    assert (await track(services, order)).person_id == ana
    ana_later = event("app_opened", identifiers=[ana_email], channel=common_pb2.CHANNEL_APP)
    assert (await track(services, ana_later)).person_id == ana
    assert await _event_ids(services, ana) == {
        bea_seen,
        visit.id,
        f"gateway:{sent.id}",
        order.id,
        ana_seen,
        ana_later.id,
    }

    [change] = await _unmerge(services, bea)

    bea_events = {bea_seen, visit.id, f"gateway:{sent.id}", order.id}
    assert await _event_ids(services, bea) == bea_events
    assert await _event_ids(services, ana) == {ana_seen, ana_later.id}
    assert sorted(change.moved_event_ids) == sorted(bea_events)
    assert change.moved_from_person_id == ana
    assert "events" in change.changed
    # The survivor's change lists nothing: events moved away from it.
    ana_changes = [
        unpack(e, events_pb2.ProfileChangedEvent)
        for e in services.events.matching(_changes_of(ana))
        if "events" in unpack(e, events_pb2.ProfileChangedEvent).changed
    ]
    assert not ana_changes[-1].moved_event_ids
    mine, theirs = await get_profile(services, bea), await get_profile(services, ana)
    assert (mine.event_count, theirs.event_count) == (4, 2)
    assert mine.computed_traits["lifetime_value"]["amount_minor"] == 4200
    assert "lifetime_value" not in theirs.computed_traits

    # Merged and split again: the second merge took the same events from Bea, and they go back again.
    await services.identity.MergePersons(
        identity_pb2.MergePersonsRequest(
            request_id=unique("merge-"), survivor_person_id=ana, merged_person_id=bea, reason="test"
        )
    )
    await services.events.wait_for(
        lambda e: (
            _changes_of(ana)(e) and list(unpack(e, events_pb2.ProfileChangedEvent).merged_person_ids) == [bea]
        ),
        count=2,
    )
    [again] = await _unmerge(services, bea)
    assert sorted(again.moved_event_ids) == sorted(bea_events)


async def test_an_event_naming_the_merged_person_after_the_merge_goes_back_to_it(services: Services) -> None:
    bea, bea_seen = await _customer(services, _email())
    ana, ana_seen = await _customer(services, _email())
    await _merge(services, ana, bea)
    # The store's system still knows Bea by her id: the visit lands on Ana while they are one.
    visit = event("store_visited", person_id=bea, channel=common_pb2.CHANNEL_STORE)
    assert (await track(services, visit)).person_id == ana

    [change] = await _unmerge(services, bea)

    assert set(change.moved_event_ids) == {bea_seen, visit.id}
    assert await _event_ids(services, bea) == {bea_seen, visit.id}
    assert await _event_ids(services, ana) == {ana_seen}


async def test_events_keep_the_person_a_chain_of_merges_took_them_from(services: Services) -> None:
    cleo, cleo_seen = await _customer(services, _email())
    bea, bea_seen = await _customer(services, _email())
    ana, ana_seen = await _customer(services, _email())
    cleo_visit = event("store_visited", person_id=cleo, channel=common_pb2.CHANNEL_STORE)
    await track(services, cleo_visit)
    await _merge(services, bea, cleo)
    await _merge(services, ana, bea)

    # Bea comes back with Cleo, who had been merged into her: Cleo's events come back too.
    [change] = await _unmerge(services, bea)
    assert set(change.moved_event_ids) == {bea_seen, cleo_seen, cleo_visit.id}
    assert await _event_ids(services, ana) == {ana_seen}
    # Then Cleo is split from Bea: her visit, tracked by person id, came from her and goes back to her.
    [change] = await _unmerge(services, cleo)
    assert set(change.moved_event_ids) == {cleo_seen, cleo_visit.id}
    assert change.moved_from_person_id == bea
    assert await _event_ids(services, cleo) == {cleo_seen, cleo_visit.id}
    assert await _event_ids(services, bea) == {bea_seen}


async def test_a_large_move_is_listed_over_several_changes(services: Services) -> None:
    bea, bea_seen = await _customer(services, _email())
    ana, _ = await _customer(services, _email())
    visits = [event("page_viewed", person_id=bea) for _ in range(MOVED_EVENT_IDS_PER_CHANGE + 10)]
    for start in range(0, len(visits), 1000):
        await services.profile.BatchTrackEvents(
            profile_pb2.BatchTrackEventsRequest(events=visits[start : start + 1000])
        )
    await _merge(services, ana, bea)

    await _unmerge(services, bea)
    listing = await services.events.wait_for(
        lambda e: _changes_of(bea)(e) and bool(unpack(e, events_pb2.ProfileChangedEvent).moved_event_ids),
        count=2,
    )
    changes = [unpack(e, events_pb2.ProfileChangedEvent) for e in listing]
    assert [len(c.moved_event_ids) for c in changes] == [MOVED_EVENT_IDS_PER_CHANGE, 11]
    assert {i for c in changes for i in c.moved_event_ids} == {bea_seen, *(v.id for v in visits)}
    assert [list(c.changed) for c in changes][1] == ["events"]
    assert {c.moved_from_person_id for c in changes} == {ana}
    assert (await get_profile(services, bea)).event_count == len(visits) + 1
