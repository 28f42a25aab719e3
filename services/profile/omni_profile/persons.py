"""Where a person's writes land: the profile rows are locked, and ids merged away lead to their survivor."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy.ext.asyncio import AsyncSession

from omni_profile import repository

# Merges flatten chains as they happen, so one hop is normal; the bound only guards against a cycle.
_MAX_HOPS = 16


class MergeCycle(RuntimeError):
    """Profile rows point at each other through merged_into, which merges never produce."""


async def lock_current(session: AsyncSession, person_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
    """Lock the profiles of these persons (creating rows as needed) and map each id to the live person.

    A person merged into another maps to the survivor, whose row is locked too, so a merge cannot move
    the person's data while the caller writes to it.
    """
    wanted = set(person_ids)
    current = {pid: pid for pid in wanted}
    pending = wanted
    for _ in range(_MAX_HOPS):
        if not pending:
            return current
        merged_into = await repository.lock_profiles(session, pending)
        redirects = {pid: target for pid, target in merged_into.items() if target is not None}
        for original, now in current.items():
            if now in redirects:
                current[original] = redirects[now]
        pending = set(redirects.values())
    raise MergeCycle(f"merged_into does not end within {_MAX_HOPS} hops for {sorted(map(str, wanted))}")


async def find_current(session: AsyncSession, person_id: uuid.UUID) -> tuple[uuid.UUID, int] | None:
    """The live person behind an id, with its event count, without locking; None if profile has no row."""
    for _ in range(_MAX_HOPS):
        state = await repository.profile_state(session, person_id)
        if state is None:
            return None
        event_count, merged_into = state
        if merged_into is None:
            return person_id, event_count
        person_id = merged_into
    raise MergeCycle(f"merged_into does not end within {_MAX_HOPS} hops from {person_id}")
