"""The identity graph's use cases: resolve identifier sets to persons, show a person, look one up.

Each function runs inside the caller's transaction, given the storage and the event sink bound to it.
Resolving locks every identifier of the whole batch before reading anything, so concurrent resolves of the
same identifiers queue up and the second sees what the first did (see repository.py for the lock order).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from omni_identity.normalise import IdentifierKey
from omni_identity.repository import IdentityRepository
from omni_identity.resolution import GraphEvent, Resolution, Resolver, ResolveRequest
from omni_kit.errors import NotFound
from omni_kit.ids import new_id


class EventSink(Protocol):
    """Where the events of a change go, in the change's transaction."""

    async def publish(self, events: Sequence[GraphEvent]) -> None:
        """Stage the events."""


@dataclass(frozen=True)
class PersonView:
    """A live person with its identifiers and the persons merged into it."""

    id: uuid.UUID
    created_at: datetime
    identifiers: list[IdentifierKey] = field(default_factory=list)
    merged_person_ids: list[uuid.UUID] = field(default_factory=list)


class Persons:
    """Resolves, shows and looks up persons."""

    def __init__(
        self,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        id_factory: Callable[[], uuid.UUID] = new_id,
    ) -> None:
        self._clock = clock
        self._new_id = id_factory

    async def resolve(
        self, repository: IdentityRepository, events: EventSink, requests: Sequence[ResolveRequest]
    ) -> list[Resolution]:
        """Resolve the requests in order, write the changes and stage their events; return one per request."""
        keys = sorted({key for request in requests for key in request.identifiers})
        await repository.lock_identifiers(keys)
        holders = await repository.lock_holders(keys)
        changes = Resolver(holders, now=self._clock(), new_id=self._new_id).resolve_all(requests)
        if changes.changed:
            await repository.apply(changes)
            await events.publish(changes.events)
        return changes.resolutions

    async def get(self, repository: IdentityRepository, person_id: uuid.UUID) -> PersonView:
        """The live person an id leads to (a merged id leads to its survivor); NotFound when unknown."""
        row = await repository.live_person(person_id)
        if row is None:
            raise NotFound(message=f"person {person_id} not found", reason="PERSON_NOT_FOUND")
        return PersonView(
            id=row.id,
            created_at=row.created_at,
            identifiers=await repository.identifiers_of(row.id),
            merged_person_ids=await repository.merged_person_ids(row.id),
        )

    async def lookup(self, repository: IdentityRepository, key: IdentifierKey) -> PersonView:
        """The person holding a normalised identifier; NotFound when no one does."""
        person_id = await repository.holder(key)
        if person_id is None:
            raise NotFound(message=f"no person holds this {key.type}", reason="IDENTIFIER_NOT_FOUND")
        return await self.get(repository, person_id)
