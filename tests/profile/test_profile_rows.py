"""Profile rows read without locks and locked to write (repository.lock_as_read): the lock says which rows
were written since they were read, with their state, and which persons were merged away or erased."""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from omni.identity.v1 import events_pb2 as identity_events
from omni_kit.bus import make_envelope
from omni_kit.lineage import Lineage
from omni_profile import repository
from omni_profile.models import PROFILE_LINEAGE
from omni_profile.repository import ProfileUpdate

from .support import Services, event, track


async def _version(services: Services, person: uuid.UUID) -> int | None:
    async with AsyncSession(services.database) as session:
        whereabouts = await repository.where_persons_are(session, [person])
        state = whereabouts.states.get(person)
        return None if state is None else state.version


async def _merge(session: AsyncSession, survivor: uuid.UUID, merged: uuid.UUID) -> None:
    """Merge as omni_kit.lineage records it on the profile rows (without moving anything)."""
    payload = identity_events.PersonsMergedEvent(
        survivor_person_id=str(survivor), merged_person_ids=[str(merged)]
    )
    await Lineage(PROFILE_LINEAGE)(
        session, make_envelope(payload, event_type="identity.persons_merged", producer="identity")
    )


async def test_a_row_unchanged_since_it_was_read_is_locked_without_its_state(services: Services) -> None:
    person = uuid.UUID((await track(services, event("app_opened"))).person_id)
    version = await _version(services, person)
    assert version is not None
    async with AsyncSession(services.database) as session, session.begin():
        locked = await repository.lock_as_read(session, {person: version})
    assert locked.changed == {} and locked.moved == set()


async def test_a_row_written_while_the_lock_waits_comes_back_with_its_new_state(services: Services) -> None:
    person = uuid.UUID((await track(services, event("app_opened"))).person_id)
    version = await _version(services, person)
    assert version is not None
    async with AsyncSession(services.database) as writer, AsyncSession(services.database) as reader:
        await writer.begin()
        await repository.lock_as_read(writer, {person: version})
        await repository.update_profiles(writer, [ProfileUpdate(person, added_events=2)])
        await reader.begin()
        waiting = asyncio.create_task(repository.lock_as_read(reader, {person: version}))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # held by the writer's lock
        await writer.commit()
        locked = await waiting
        await reader.rollback()
    assert set(locked.changed) == {person}
    state = locked.changed[person]
    assert state.event_count == 3
    assert state.version is not None and state.version != version


async def test_a_person_read_without_a_row_is_stale_only_once_its_row_holds_something(
    services: Services,
) -> None:
    fresh, filled = uuid.uuid4(), uuid.uuid4()
    async with AsyncSession(services.database) as session, session.begin():
        await repository.lock_as_read(session, {filled: None})
        await repository.update_profiles(session, [ProfileUpdate(filled, added_events=1)])
    async with AsyncSession(services.database) as session, session.begin():
        locked = await repository.lock_as_read(session, {fresh: None, filled: None})
    assert set(locked.changed) == {filled}
    assert locked.changed[filled].event_count == 1
    # The row of the person read without one now exists, empty.
    assert await services.scalar("SELECT event_count FROM profiles WHERE person_id = :p", p=fresh) == 0


async def test_persons_merged_away_or_erased_since_they_were_read_are_named(services: Services) -> None:
    merged, erased, survivor = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with AsyncSession(services.database) as session, session.begin():
        await repository.lock_as_read(session, {merged: None, erased: None, survivor: None})
        await _merge(session, survivor, merged)
        await Lineage(PROFILE_LINEAGE).forget(session, erased, [erased])
    async with AsyncSession(services.database) as session, session.begin():
        locked = await repository.lock_as_read(session, {merged: None, erased: None, survivor: None})
        whereabouts = await repository.where_persons_are(session, [merged, erased, survivor])
    assert locked.moved == {merged, erased}
    assert whereabouts.leads_to[merged] == (survivor, False)
    assert whereabouts.leads_to[erased] == (erased, True)
    assert set(whereabouts.states) == {survivor}


async def test_a_person_merged_into_one_without_a_row_leads_there_with_no_state_read(
    services: Services,
) -> None:
    merged, survivor = uuid.uuid4(), uuid.uuid4()
    async with AsyncSession(services.database) as session, session.begin():
        await repository.lock_as_read(session, {merged: None})
        await _merge(session, survivor, merged)
    async with AsyncSession(services.database) as session:
        whereabouts = await repository.where_persons_are(session, [merged])
    assert whereabouts.leads_to == {merged: (survivor, False)}
    assert whereabouts.states == {}
