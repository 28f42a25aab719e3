"""StreamTrackEvents over gRPC with the real identity service: counts, bad events by position, duplicates."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

from omni.profile.v1 import profile_pb2

from .support import Services, event, ident, track, unique


async def _stream(
    services: Services, chunks: Sequence[Sequence[profile_pb2.Event]]
) -> profile_pb2.StreamTrackEventsResponse:
    async def requests() -> AsyncIterator[profile_pb2.StreamTrackEventsRequest]:
        for chunk in chunks:
            yield profile_pb2.StreamTrackEventsRequest(events=chunk)

    return await services.profile.StreamTrackEvents(requests())


async def _stored(services: Services, ids: Sequence[str]) -> int:
    return int(await services.scalar("SELECT count(*) FROM events WHERE id = ANY(:ids)", ids=list(ids)))


async def test_a_long_stream_is_recorded_across_transactions(services: Services) -> None:
    customers = [ident("pos_customer_id", unique("pos-")) for _ in range(5)]
    events = [event("order_completed", identifiers=[customers[i % 5]]) for i in range(1203)]
    # One message larger than a transaction, then a trickle of small ones.
    chunks = [events[:1100], *(events[i : i + 3] for i in range(1100, 1203, 3))]
    response = await _stream(services, chunks)
    assert (response.accepted, response.duplicates, response.rejected) == (1203, 0, 0)
    assert list(response.errors) == []
    assert await _stored(services, [e.id for e in events]) == 1203


async def test_bad_events_are_reported_by_stream_position_and_the_others_kept(services: Services) -> None:
    person = ident("anonymous_id", unique("anon-"))
    events = [event(identifiers=[person]) for _ in range(12)]
    events[3] = event(id_="", identifiers=[person])
    events[7] = event(identifiers=[person], occurred_at=datetime.now(UTC) + timedelta(days=3))
    events[10] = event(identifiers=[ident("email", "null")])  # identity refuses it
    before = await services.counts()
    response = await _stream(services, [events[:5], events[5:9], [], events[9:]])
    assert (response.accepted, response.duplicates, response.rejected) == (9, 0, 3)
    assert [e.position for e in response.errors] == [3, 7, 10]
    assert [e.event_id for e in response.errors] == ["", events[7].id, events[10].id]
    assert [[v.field for v in e.field_violations] for e in response.errors] == [
        ["id"],
        ["occurred_at"],
        ["identifiers[0].value"],
    ]
    assert "future" in response.errors[1].field_violations[0].description
    kept = [e.id for i, e in enumerate(events) if i not in (3, 7, 10)]
    assert await _stored(services, kept) == 9
    assert await _stored(services, [events[7].id, events[10].id]) == 0
    assert (await services.counts())["events"] - before["events"] == 9


async def test_ids_seen_before_or_earlier_in_the_stream_are_duplicates(services: Services) -> None:
    person = ident("anonymous_id", unique("anon-"))
    earlier = event(identifiers=[person])
    await track(services, earlier)
    fresh = event(identifiers=[person])
    response = await _stream(services, [[earlier, fresh], [fresh]])
    assert (response.accepted, response.duplicates, response.rejected) == (1, 2, 0)
    again = await _stream(services, [[fresh, earlier]])
    assert (again.accepted, again.duplicates) == (0, 2)


async def test_an_empty_stream_records_nothing(services: Services) -> None:
    response = await _stream(services, [])
    assert (response.accepted, response.duplicates, response.rejected) == (0, 0, 0)


async def test_events_are_recorded_while_the_stream_is_still_open(services: Services) -> None:
    person = ident("anonymous_id", unique("anon-"))
    first, second = [event(identifiers=[person]) for _ in range(3)], [event(identifiers=[person])]

    async def requests() -> AsyncIterator[profile_pb2.StreamTrackEventsRequest]:
        yield profile_pb2.StreamTrackEventsRequest(events=first)
        # The stream stays open until the first chunk is stored: it is not held back for the rest.
        for _ in range(500):
            if await _stored(services, [e.id for e in first]) == 3:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the first chunk was not recorded while the stream was open")
        yield profile_pb2.StreamTrackEventsRequest(events=second)

    response = await services.profile.StreamTrackEvents(requests())
    assert response.accepted == 4
