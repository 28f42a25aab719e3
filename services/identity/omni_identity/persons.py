"""The identity graph's use cases: resolve identifier sets to persons, show a person, its identifiers,
lineage and refused links, look one up.

Each function runs inside the caller's transaction, given the storage and the event sink bound to it.
A resolve that changes the graph locks every identifier of the identifier sets that may change it before
reading who holds them, so concurrent resolves of the same identifiers queue up and the second sees what the
first did (see repository.py for the lock order); sets already known whole to one person are answered from an
unlocked read.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Protocol

from omni_identity.batch_ids import batch_ids
from omni_identity.changes import GraphChanges, GraphEvent, Held, RefusedLink, Resolution, ResolveRequest
from omni_identity.erasure import TombstonePolicy, Tombstones
from omni_identity.merge import MergeRecord
from omni_identity.normalise import IdentifierKey
from omni_identity.reads import IdentifierRecord, PersonRecord
from omni_identity.repository import IdentityRepository
from omni_identity.resolution import MissingTallies, Resolver, changes_anything
from omni_identity.rules import Rules, Tally
from omni_kit.bus import OutboxRows
from omni_kit.errors import NotFound
from omni_kit.ids import new_id


class EventSink(Protocol):
    """Where the events of a change go, in the change's transaction."""

    async def publish(self, events: Sequence[GraphEvent]) -> None:
        """Stage the events."""

    def rows(
        self, events: Sequence[GraphEvent], *, occurred_at: datetime, new_id: Callable[[], uuid.UUID]
    ) -> OutboxRows:
        """The events as outbox rows, for storage to write with the change itself."""


def _interleave(
    requests: Sequence[ResolveRequest],
    settled: Sequence[bool],
    holders: Mapping[IdentifierKey, uuid.UUID],
    resolutions: Sequence[Resolution],
) -> list[Resolution]:
    """Answers in request order: the planned resolutions, and for the settled requests the person read,
    or the survivor it was merged into by an earlier request of the batch (as resolving them one by one
    would answer)."""
    planned = iter(resolutions)
    survivors: dict[uuid.UUID, uuid.UUID] = {}
    answers = []
    for request, known in zip(requests, settled, strict=True):
        if known:
            person_id = holders[request.identifiers[0]]
            while person_id in survivors:
                person_id = survivors[person_id]
            answers.append(Resolution(person_id=person_id))
            continue
        resolution = next(planned)
        if resolution.person_id is not None:
            for merged in resolution.merged_person_ids:
                if merged != resolution.person_id:
                    survivors[merged] = resolution.person_id
        answers.append(resolution)
    return answers


def _needs_tallies(
    requests: Sequence[ResolveRequest], locked: Mapping[IdentifierKey, Held], watched: Collection[str]
) -> bool:
    """True when a request, as it stands, adds a counted value to a stored person or joins stored persons:
    the rules then read those persons' counts."""
    for request in requests:
        holders = set()
        adds_watched = False
        for key in request.identifiers:
            held = locked.get(key)
            if held is not None:
                holders.add(held.person_id)
            elif key.type in watched:
                adds_watched = True
        if len(holders) > 1 or (holders and adds_watched):
            return True
    return False


def person_forgotten(person_id: uuid.UUID) -> NotFound:
    """The error for reading a person that was erased."""
    return NotFound(
        message=f"person {person_id} was forgotten",
        reason="PERSON_FORGOTTEN",
        metadata={"person_id": str(person_id)},
    )


class Persons:
    """Resolves, shows and looks up persons."""

    def __init__(
        self,
        rules: Rules,
        tombstones: Tombstones,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        id_factory: Callable[[], uuid.UUID] = new_id,
    ) -> None:
        self._rules = rules
        self._tombstones = tombstones
        self._clock = clock
        self._new_id = id_factory

    async def resolve(
        self, repository: IdentityRepository, events: EventSink, requests: Sequence[ResolveRequest]
    ) -> list[Resolution]:
        """Resolve the requests in order, write the changes and stage their events; return one per request.

        Raises ConcurrentMerge (from storage) when a person it meant to extend was merged away meanwhile;
        the caller runs the transaction again.
        """
        keys = sorted({key for request in requests for key in request.identifiers})
        # Most identifier sets on the ingest path are already known and change nothing: answer those from
        # one unlocked read, which was true at the instant it was made. Only the others are locked and
        # planned, so a batch of a thousand known customers and a few new ones locks the few.
        holders = await repository.holders(keys)
        settled = [not changes_anything(holders, (request,)) for request in requests]
        if all(settled):
            return [Resolution(person_id=holders[request.identifiers[0]]) for request in requests]
        pending = [request for request, known in zip(requests, settled, strict=True) if not known]
        if len(pending) == len(requests):
            return await self._resolve_changing(repository, events, pending, keys, holders)
        pending_keys = sorted({key for request in pending for key in request.identifiers})
        resolutions = await self._resolve_changing(
            repository,
            events,
            pending,
            pending_keys,
            {key: holders[key] for key in pending_keys if key in holders},
        )
        return _interleave(requests, settled, holders, resolutions)

    async def _resolve_changing(
        self,
        repository: IdentityRepository,
        events: EventSink,
        requests: Sequence[ResolveRequest],
        keys: Sequence[IdentifierKey],
        holders: dict[IdentifierKey, uuid.UUID],
    ) -> list[Resolution]:
        """Lock the identifiers of requests that may change the graph, plan them in order and write."""
        hashes = self._tombstones.hashes(key for key in keys if key not in holders)
        locked, tombstoned = await repository.lock_holders(keys, hashes)
        vanished = self._tombstones.hashes(key for key in holders if key not in locked)
        if vanished:  # forgotten since the unlocked read: were they tombstoned?
            hashes.update(vanished)
            tombstoned |= await repository.tombstoned(vanished)
        ignored: set[IdentifierKey] = set()
        if self._tombstones.policy is TombstonePolicy.DROP:
            ignored = {hashes[h] for h in tombstoned} - set(locked)
        now = self._clock()

        def plan(tallies: dict[uuid.UUID, Tally] | None) -> GraphChanges:
            return Resolver(
                locked,
                now=now,
                new_id=batch_ids(self._new_id),
                rules=self._rules,
                tallies=tallies,
                ignored=ignored,
            ).resolve_all(requests)

        persons = {held.person_id for held in locked.values()}
        if _needs_tallies(requests, locked, self._rules.watched):
            # Read before planning, not after a plan that stopped for want of them: a big batch nearly always
            # has such a request, and its locks are held while the batch is planned.
            changes = plan(await repository.tallies(persons, self._rules.windows(now)))
        else:
            try:
                changes = plan(None)
            except MissingTallies:
                # Only batches that add counted values to stored persons, or merge them, pay this read; an
                # earlier request of the batch can lead a later one to a stored person.
                changes = plan(await repository.tallies(persons, self._rules.windows(now)))
        if changes.changed:
            # The events go in the statement that writes the change: one round trip for both.
            staged = events.rows(changes.events, occurred_at=now, new_id=batch_ids(self._new_id))
            await repository.apply(changes, staged)
        return changes.resolutions

    async def get(self, repository: IdentityRepository, person_id: uuid.UUID) -> PersonRecord:
        """The live person an id leads to (a merged id leads to its survivor); NotFound when unknown or
        forgotten (reason PERSON_FORGOTTEN)."""
        record = await repository.person(person_id)
        if record is None:
            raise NotFound(
                message=f"person {person_id} not found",
                reason="PERSON_NOT_FOUND",
                metadata={"person_id": str(person_id)},
            )
        if record.forgotten_at is not None:
            raise person_forgotten(person_id)
        return record

    async def lookup(self, repository: IdentityRepository, key: IdentifierKey) -> PersonRecord:
        """The person holding a normalised identifier; NotFound when no one does."""
        record = await repository.person_holding(key)
        if record is None:
            # The type only: the value is personal data, not for error reports and logs.
            raise NotFound(
                message=f"no person holds this {key.type}",
                reason="IDENTIFIER_NOT_FOUND",
                metadata={"identifier_type": key.type},
            )
        return record

    async def lineage(
        self, repository: IdentityRepository, person_id: uuid.UUID, *, after: uuid.UUID | None, limit: int
    ) -> tuple[PersonRecord, list[MergeRecord]]:
        """The live person an id leads to and up to limit merges of its lineage after a merge id, oldest first."""
        record = await self.get(repository, person_id)
        merges = await repository.merges_into(
            [record.id, *record.merged_person_ids], after=after, limit=limit
        )
        return record, merges

    async def identifiers(
        self, repository: IdentityRepository, person_id: uuid.UUID, *, after: uuid.UUID | None, limit: int
    ) -> list[IdentifierRecord]:
        """Up to limit identifiers of the live person an id leads to, in attach order, after an identifier id."""
        record = await self.get(repository, person_id)
        return await repository.identifiers_of(record.id, after=after, limit=limit)

    async def refused_links(
        self, repository: IdentityRepository, person_id: uuid.UUID, *, after: uuid.UUID | None, limit: int
    ) -> list[RefusedLink]:
        """Up to limit refused links involving the live person an id leads to or a person merged into it."""
        record = await self.get(repository, person_id)
        return await repository.refused_links_of(
            [record.id, *record.merged_person_ids], after=after, limit=limit
        )
