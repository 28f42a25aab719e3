"""The graph's storage as the matcher uses it: the identity graph's own repositories, bound to the
matcher's transaction, so that locks, reads and writes are the ones resolves and operators use."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from omni_identity.changes import GraphChanges
from omni_identity.matching.graph import PersonState
from omni_identity.normalise import IdentifierKey
from omni_identity.operator_repository import OperatorRepository, PersonRow
from omni_identity.repository import IdentityRepository, identifier_lock_key
from omni_identity.rules import Tally
from omni_kit.bus import OutboxRows


def _state(row: PersonRow) -> PersonState:
    return PersonState(row.id, row.merged_into, row.forgotten_at is not None)


class GraphRepository:
    """Implements matching.graph.GraphStore on the identity graph's tables."""

    def __init__(self, session: AsyncSession) -> None:
        self._graph = IdentityRepository(session)
        self._operators = OperatorRepository(session)

    async def lock_identifiers(self, keys: Sequence[IdentifierKey]) -> None:
        """Take the identifiers' advisory locks (ascending) until the transaction ends."""
        await self._operators.lock_identifiers(identifier_lock_key(key) for key in keys)

    async def holders(self, keys: Sequence[IdentifierKey]) -> dict[IdentifierKey, uuid.UUID]:
        """The person holding each known identifier."""
        return await self._graph.holders(keys)

    async def tombstoned(self, hashes: Iterable[bytes]) -> set[bytes]:
        """Which of these tombstone hashes are tombstones."""
        return await self._graph.tombstoned(hashes)

    async def lock_persons(self, person_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, PersonState]:
        """Row-lock the persons in id order; return them as they are now."""
        rows = await self._operators.lock_persons(person_ids)
        return {person_id: _state(row) for person_id, row in rows.items()}

    async def chain(self, person_id: uuid.UUID) -> list[PersonState]:
        """The person and the persons it was merged into, up to the live (or forgotten) one."""
        return [_state(row) for row in await self._operators.chain(person_id)]

    async def tallies(
        self, person_ids: Iterable[uuid.UUID], windows: Mapping[str, datetime | None]
    ) -> dict[uuid.UUID, Tally]:
        """Each person's counts of watched identifier types."""
        return await self._graph.tallies(person_ids, windows)

    async def apply(self, changes: GraphChanges, events: OutboxRows) -> None:
        """Write the changes and their outbox rows in one statement (as a resolve does)."""
        await self._graph.apply(changes, events)

    async def tree(self, person_id: uuid.UUID) -> list[uuid.UUID]:
        """The live person an id leads to and every person merged into it (empty if the id is unknown)."""
        person = await self._graph.person(person_id)
        return [] if person is None else [person.id, *person.merged_person_ids]
