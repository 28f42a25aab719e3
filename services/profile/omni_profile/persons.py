"""Where a person's writes land: the profile rows are locked, and ids merged away lead to their survivor."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy.ext.asyncio import AsyncSession

from omni_kit.errors import FailedPrecondition
from omni_profile import repository
from omni_profile.domain import PERSON_ERASED
from omni_profile.repository import ProfileState

# Merges flatten chains as they happen, so one hop is normal; the bound only guards against a cycle.
_MAX_HOPS = 16


class MergeCycle(RuntimeError):
    """Profile rows point at each other through merged_into, which merges never produce."""


async def lock_states(
    session: AsyncSession, person_ids: Iterable[uuid.UUID]
) -> tuple[dict[uuid.UUID, uuid.UUID], dict[uuid.UUID, ProfileState]]:
    """Lock the profiles of these persons (creating rows as needed); map each id to the live person.

    Returns the mapping and the locked state of every live person it leads to. A person merged into another
    maps to the survivor, whose row is locked too, so a merge cannot move the person's data while the
    caller writes to it.
    """
    wanted = set(person_ids)
    current = {pid: pid for pid in wanted}
    states: dict[uuid.UUID, ProfileState] = {}
    redirects: dict[uuid.UUID, uuid.UUID] = {}
    pending = wanted
    for _ in range(_MAX_HOPS):
        locked = await repository.lock_profiles(session, pending)
        states.update(locked)
        redirects.update({pid: s.merged_into for pid, s in locked.items() if s.merged_into is not None})
        for original, target in current.items():
            for _ in range(_MAX_HOPS):
                if target not in redirects:
                    break
                target = redirects[target]
            current[original] = target
        pending = {target for target in current.values() if target not in states}
        if not pending:
            return current, {pid: states[pid] for pid in set(current.values())}
    raise MergeCycle(f"merged_into does not end within {_MAX_HOPS} hops for {sorted(map(str, wanted))}")


async def lock_current(session: AsyncSession, person_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
    """Lock the profiles of these persons (creating rows as needed) and map each id to the live person."""
    current, _ = await lock_states(session, person_ids)
    return current


async def lock_live(session: AsyncSession, person_id: uuid.UUID) -> uuid.UUID:
    """Lock the profile of a person (following merges) for a write; FailedPrecondition PERSON_ERASED if the
    person was erased."""
    current, states = await lock_states(session, [person_id])
    live = current[person_id]
    if states[live].erased:
        raise person_erased(person_id)
    return live


def person_erased(person_id: uuid.UUID) -> FailedPrecondition:
    """What a write naming an erased person answers, as TrackEvent does: erasure is for good, so sending it
    again cannot succeed."""
    return FailedPrecondition(
        message=f"person {person_id} was erased: nothing more is recorded for it",
        reason=PERSON_ERASED,
        metadata={"person_id": str(person_id), "field": "person_id"},
    )


async def find_current(session: AsyncSession, person_id: uuid.UUID) -> tuple[uuid.UUID, int] | None:
    """The live person behind an id, with its event count, without locking; None if profile has no row
    for it or the person was erased."""
    for _ in range(_MAX_HOPS):
        state = await repository.profile_state(session, person_id)
        if state is None:
            return None
        event_count, merged_into, erased = state
        if erased:
            return None
        if merged_into is None:
            return person_id, event_count
        person_id = merged_into
    raise MergeCycle(f"merged_into does not end within {_MAX_HOPS} hops from {person_id}")
