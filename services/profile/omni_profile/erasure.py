"""Erasure: when identity forgets a person, everything profile holds of them is deleted and that is
announced.

The person's events, traits and their history, consents and their history, segment memberships, cart,
computed traits and the stored answers of SetTraits and SetConsent that show them go, for the person and
every id that had been merged into it. Each id keeps a tombstone
row (erased_at, which omni_kit.lineage writes after this hook) and nothing else, so a later event naming one
of them is refused instead of bringing the person back. Applying the same erasure twice deletes nothing the
second time.
"""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession

from omni_kit.bus import Outbox
from omni_kit.idempotency import forget_answers
from omni_kit.lineage import Erasure
from omni_profile import events, repository

log = logging.getLogger(__name__)


class Eraser:
    """Deletes forgotten persons' profiles."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

    async def erase(self, session: AsyncSession, erasure: Erasure) -> None:
        """Delete everything of a person and of the ids merged into it (those the event named, and those
        leading to them here: omni_kit.lineage gives them all); announce profile.person_erased."""
        person_id, ids = erasure.person_id, list(erasure.person_ids)
        await repository.lock_profiles(session, ids)
        erased_events = await repository.delete_events(session, ids)
        await repository.delete_traits(session, ids)
        await repository.delete_trait_changes(session, ids)
        await repository.delete_consents(session, ids)
        await repository.delete_memberships(session, ids)
        await repository.clear_states(session, ids)
        await forget_answers(session, ids)
        log.info("erased person %s (%d ids, %d events)", person_id, len(ids), erased_events)
        await events.stage_person_erased(
            session, self._outbox, person_id, [i for i in ids if i != person_id], erased_events
        )
