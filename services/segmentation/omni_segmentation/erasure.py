"""Forgetting persons: everything segmentation holds about them goes, without announcing exits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from omni_kit import contact
from omni_kit.idempotency import forget_answers
from omni_segmentation.repository import Repository


class PersonEraser:
    """Applies identity.person_forgotten (and profile.person_erased) to the read model; omni_kit.lineage keeps
    the tombstones."""

    def __init__(self, repository: Repository) -> None:
        self._repository = repository

    async def erase(self, session: AsyncSession, person_ids: Sequence[uuid.UUID]) -> None:
        """Delete the persons' facts, event occurrences, last-seen times, next checks and memberships, and the
        stored answers that show them (none do yet: segments name no person). No exit events are published:
        the person no longer exists anywhere, so there is nobody to leave a segment. Unknown persons and
        repeated erasures change nothing."""
        ids = list(dict.fromkeys(person_ids))
        if not ids:
            return
        # Same locks as event handling and merges, so a concurrent evaluation cannot write the person back.
        await self._repository.lock_persons_by_key(session, ids)
        await self._repository.erase_persons(session, ids)
        await forget_answers(session, ids)
        await contact.forget(session, ids)
