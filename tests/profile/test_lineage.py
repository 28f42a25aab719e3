"""Identity's unmerges and erasures, from the real identity service, applied to profiles; and segment
memberships fed by segmentation's announcements."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from omni.common.v1 import common_pb2
from omni.identity.v1 import identity_pb2
from omni.profile.v1 import events_pb2, profile_pb2
from omni.segmentation.v1 import events_pb2 as segmentation_events
from omni_kit.bus import make_envelope, subject_for, unpack
from omni_kit.errors import status_details
from omni_profile import repository

from .support import Services, event, get_profile, ident, item, struct, track, unique


async def _eventually(check: Callable[[], Awaitable[bool]], within_s: float = 10.0) -> None:
    async with asyncio.timeout(within_s):
        while True:
            if await check():
                return
            await asyncio.sleep(0.05)


async def _merged_pair(services: Services) -> tuple[str, str, str, str]:
    """Two persons (web cookie, app device) merged by a login; returns survivor, merged, cookie, device."""
    cookie, device = unique("cookie-"), unique("device-")
    web = (await track(services, event("page_viewed", identifiers=[ident("anonymous_id", cookie)]))).person_id
    await track(
        services,
        event("cart_item_added", identifiers=[ident("anonymous_id", cookie)], cart_item=item("sku-web", 1)),
    )
    app = (
        await track(
            services,
            event("app_opened", identifiers=[ident("device_id", device)], channel=common_pb2.CHANNEL_APP),
        )
    ).person_id
    await track(
        services,
        event(
            "order_completed",
            identifiers=[ident("device_id", device)],
            channel=common_pb2.CHANNEL_APP,
            properties={"revenue": 30, "currency": "EUR"},
        ),
    )
    login = await track(
        services,
        event("logged_in", identifiers=[ident("device_id", device), ident("anonymous_id", cookie)]),
    )
    survivor = login.person_id
    merged = app if survivor == web else web
    await services.events.wait_for(
        lambda e: (
            e.type == "profile.profile_changed"
            and list(unpack(e, events_pb2.ProfileChangedEvent).merged_person_ids) == [merged]
        )
    )
    return survivor, merged, cookie, device


async def test_a_merge_combines_computed_traits(services: Services) -> None:
    survivor, _, _, _ = await _merged_pair(services)
    profile = await get_profile(services, survivor, recent=50)
    assert profile.event_count == 5
    assert profile.computed_traits["orders_online"] == 1
    assert profile.computed_traits["lifetime_value"]["amount_minor"] == 3000


async def test_an_unmerge_moves_the_restored_persons_events_back(services: Services) -> None:
    survivor, merged, cookie, device = await _merged_pair(services)
    unmerged = await services.identity.UnmergePerson(
        identity_pb2.UnmergePersonRequest(request_id=unique("unmerge-"), person_id=merged, reason="test")
    )
    restored = unmerged.restored_person.id
    assert restored == merged
    moved = {(i.type, i.value) for i in unmerged.moved_identifiers}

    async def split() -> bool:
        try:
            return (await get_profile(services, restored)).person_id == restored
        except grpc.aio.AioRpcError:
            return False

    await _eventually(split)
    mine, theirs = await get_profile(services, restored, 50), await get_profile(services, survivor, 50)
    for profile in (mine, theirs):
        assert profile.event_count == len(profile.recent_events)
    assert mine.event_count + theirs.event_count == 5
    restored_ids = {(i.type, i.value) for e in mine.recent_events for i in e.identifiers}
    assert restored_ids & moved, "the restored person's events carry the identifiers moved back"
    for e in theirs.recent_events:
        assert not {(i.type, i.value.lower()) for i in e.identifiers} & moved
    # Each side's cart and computed traits are computed from its own events again.
    app_side, web_side = (mine, theirs) if ("device_id", device) in moved else (theirs, mine)
    assert app_side.computed_traits["orders_online"] == 1
    assert "orders_online" not in web_side.computed_traits
    assert [i.product_id for i in web_side.cart.items] == ["sku-web"]
    assert cookie


async def test_an_erasure_deletes_everything_and_is_announced(services: Services) -> None:
    survivor, merged, _, _ = await _merged_pair(services)
    await services.profile.SetTraits(
        profile_pb2.SetTraitsRequest(person_id=survivor, traits=struct({"first_name": "Ada"}))
    )
    await services.profile.SetConsent(
        profile_pb2.SetConsentRequest(
            person_id=survivor,
            consent=profile_pb2.Consent(
                channel=common_pb2.CHANNEL_EMAIL, state=profile_pb2.CONSENT_STATE_GRANTED
            ),
        )
    )
    await services.identity.ForgetPerson(
        identity_pb2.ForgetPersonRequest(
            request_id=unique("forget-"), person_id=survivor, requested_by="test", reason="GDPR art. 17"
        )
    )
    [erased] = await services.events.wait_for(
        lambda e: e.type == "profile.person_erased" and e.person_id == survivor
    )
    payload = unpack(erased, events_pb2.PersonErasedEvent)
    assert payload.erased_event_count == 5
    assert list(payload.merged_person_ids) == [merged]
    for table in ("events", "traits", "trait_changes", "consents", "consent_history", "segment_memberships"):
        left = await services.scalar(
            f"SELECT count(*) FROM {table} WHERE person_id IN (CAST(:a AS uuid), CAST(:b AS uuid))",
            a=survivor,
            b=merged,
        )
        assert left == 0, table
    # What stays of each is a tombstone row: no cart, no computed state, no count.
    async with services.database.connect() as connection:
        rows = (
            await connection.execute(
                sa.text(
                    "SELECT cart, cart_as_of, computed, event_count, erased_at FROM profiles"
                    " WHERE person_id IN (CAST(:a AS uuid), CAST(:b AS uuid))"
                ),
                {"a": survivor, "b": merged},
            )
        ).all()
    assert len(rows) == 2
    assert all(
        (r.cart, r.cart_as_of, r.computed, r.event_count) == ({}, None, {}, 0) and r.erased_at is not None
        for r in rows
    )
    for person in (survivor, merged):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await get_profile(services, person)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    # A late event naming the person cannot bring them back.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await track(services, event(person_id=survivor))
    details = status_details(refused.value)
    assert details.code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.error_info is not None
    assert (details.error_info.reason, details.error_info.metadata["field"]) == (
        "PERSON_ERASED",
        "event.person_id",
    )
    batch = await services.profile.BatchTrackEvents(
        profile_pb2.BatchTrackEventsRequest(events=[event(person_id=merged), event()])
    )
    assert [r.status for r in batch.results] == [
        profile_pb2.TRACK_STATUS_REJECTED,
        profile_pb2.TRACK_STATUS_RECORDED,
    ]


async def _announce_segment(
    services: Services, person: str, segment: str, *, entered: bool, at: datetime
) -> None:
    payload = (
        segmentation_events.PersonEnteredSegmentEvent(
            person_id=person, segment_id=segment, segment_name=f"{segment}!"
        )
        if entered
        else segmentation_events.PersonExitedSegmentEvent(
            person_id=person, segment_id=segment, segment_name=segment
        )
    )
    event_type = "segmentation.person_entered_segment" if entered else "segmentation.person_exited_segment"
    envelope = make_envelope(
        payload, event_type=event_type, producer="segmentation", person_id=person, occurred_at=at
    )
    await services.js.publish(
        subject_for(event_type, services.namespace),
        envelope.SerializeToString(),
        headers={"Nats-Msg-Id": envelope.id},
    )


async def test_segment_memberships_follow_enter_and_exit_in_event_time(services: Services) -> None:
    person = (await track(services, event())).person_id
    now = datetime.now(UTC)
    await _announce_segment(services, person, "vip", entered=True, at=now)
    await _announce_segment(services, person, "cart_abandoners", entered=True, at=now)

    async def segments() -> list[str]:
        return [s.segment_id for s in (await get_profile(services, person)).segments]

    async def both() -> bool:
        return await segments() == ["cart_abandoners", "vip"]

    await _eventually(both)
    profile = await get_profile(services, person)
    assert [s.segment_name for s in profile.segments] == ["cart_abandoners!", "vip!"]
    # An exit announced before the entry (older) is ignored; a newer one applies.
    await _announce_segment(services, person, "vip", entered=False, at=now - timedelta(minutes=1))
    await _announce_segment(services, person, "cart_abandoners", entered=False, at=now + timedelta(seconds=1))

    async def only_vip() -> bool:
        return await segments() == ["vip"]

    await _eventually(only_vip)


def _reads_before_the_merge(monkeypatch: pytest.MonkeyPatch, *, stale_reads: int) -> Callable[[], int]:
    """Make the first `stale_reads` reads of where persons are answer as if no merge had been committed
    (every person leads to itself, nothing read of its row); returns how many reads were made so far."""
    real = repository.where_persons_are
    calls = 0

    async def stale(session: Any, person_ids: Any) -> repository.Whereabouts:
        nonlocal calls
        calls += 1
        found = await real(session, person_ids)
        if calls <= stale_reads:
            return repository.Whereabouts({pid: (pid, False) for pid in found.leads_to}, {})
        return found

    monkeypatch.setattr(repository, "where_persons_are", stale)
    return lambda: calls


async def test_a_merge_between_resolving_and_locking_is_caught_and_the_batch_recorded_again(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    survivor, merged, _, _ = await _merged_pair(services)
    reads = _reads_before_the_merge(monkeypatch, stale_reads=1)
    late = await track(services, event("email_opened", person_id=merged, channel=common_pb2.CHANNEL_EMAIL))
    assert reads() == 2
    assert late.person_id == survivor
    stored = await services.scalar(
        "SELECT person_id FROM events WHERE source = 'api' AND type = 'email_opened' "
        "AND person_id IN (CAST(:a AS uuid), CAST(:b AS uuid))",
        a=survivor,
        b=merged,
    )
    assert str(stored) == survivor
    assert (await get_profile(services, survivor)).event_count == 6


async def test_a_batch_that_keeps_finding_its_persons_moved_is_aborted_with_nothing_written(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    survivor, merged, _, _ = await _merged_pair(services)
    reads = _reads_before_the_merge(monkeypatch, stale_reads=1_000)
    before = await services.counts()
    message = event("email_opened", person_id=merged, channel=common_pb2.CHANNEL_EMAIL)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await track(services, message)
    assert refused.value.code() == grpc.StatusCode.ABORTED
    assert "send it again" in (refused.value.details() or "")
    assert reads() == 5
    assert await services.counts() == before
    monkeypatch.undo()
    assert (await track(services, message)).person_id == survivor
