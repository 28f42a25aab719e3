"""Resolving identifier sets to persons, as a pure computation over the part of the graph they touch.

The caller loads who currently holds each identifier of the batch (under locks, see persons.py), then
``Resolver`` works through the requests in order on that in-memory copy: a later request sees what the
earlier ones did. What it decided comes back as ``GraphChanges``, which storage writes in a few bulk
statements, and the events to publish with them.

For one request:
- no identifier is known: a new person holds them all (person created);
- the known identifiers belong to one person: the unknown ones are added to it;
- they belong to several persons: those merge into the oldest (merge.py), then the unknown ones are added.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from omni_identity.merge import MergeRecord, choose_survivor, final_survivor
from omni_identity.normalise import IdentifierKey


@dataclass(frozen=True)
class ResolveRequest:
    """Normalised, de-duplicated identifiers seen together, and where they were seen."""

    identifiers: tuple[IdentifierKey, ...]
    source: str = ""

    def __post_init__(self) -> None:
        if not self.identifiers:
            raise ValueError("a resolve request needs at least one identifier")


@dataclass
class Resolution:
    """What one request resolved to, at the moment it was resolved."""

    person_id: uuid.UUID
    created: bool = False
    merged_person_ids: list[uuid.UUID] = field(default_factory=list)
    added_identifiers: list[IdentifierKey] = field(default_factory=list)


@dataclass(frozen=True)
class PersonCreated:
    """A person was created holding these identifiers."""

    person_id: uuid.UUID
    identifiers: tuple[IdentifierKey, ...]
    source: str


@dataclass(frozen=True)
class PersonsMerged:
    """Persons were merged into a survivor because these identifiers were seen together."""

    survivor_id: uuid.UUID
    merged_ids: tuple[uuid.UUID, ...]
    cause_identifiers: tuple[IdentifierKey, ...]
    source: str


GraphEvent = PersonCreated | PersonsMerged


@dataclass(frozen=True)
class NewIdentifier:
    """An identifier to store, with the person that holds it once the whole batch is applied."""

    key: IdentifierKey
    person_id: uuid.UUID
    source: str


@dataclass
class GraphChanges:
    """Everything a batch of resolves changes, ready to be written in bulk."""

    now: datetime
    resolutions: list[Resolution] = field(default_factory=list)
    created_person_ids: list[uuid.UUID] = field(default_factory=list)
    new_identifiers: list[NewIdentifier] = field(default_factory=list)
    merged_into: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)
    """Each person merged by the batch → the person it was merged into (its immediate survivor)."""
    moved_identifiers: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)
    """Each person that existed before the batch and was merged → the live person its identifiers go to."""
    merges: list[MergeRecord] = field(default_factory=list)
    events: list[GraphEvent] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """True when the batch writes anything."""
        return bool(self.created_person_ids or self.new_identifiers or self.merged_into)


class Resolver:
    """Resolves requests in order against a working copy of the identifiers' current holders."""

    def __init__(
        self,
        holders: Mapping[IdentifierKey, uuid.UUID],
        *,
        now: datetime,
        new_id: Callable[[], uuid.UUID],
    ) -> None:
        """holders: the live person holding each already-known identifier the batch mentions."""
        self._holder: dict[IdentifierKey, uuid.UUID] = dict(holders)
        self._held: defaultdict[uuid.UUID, set[IdentifierKey]] = defaultdict(set)
        for key, person_id in self._holder.items():
            self._held[person_id].add(key)
        self._existing = set(self._held)
        self._new_id = new_id
        self._new_sources: dict[IdentifierKey, str] = {}
        self.changes = GraphChanges(now=now)

    def resolve_all(self, requests: Iterable[ResolveRequest]) -> GraphChanges:
        """Resolve every request in order and return the accumulated changes."""
        for request in requests:
            self.resolve(request)
        return self.finish()

    def resolve(self, request: ResolveRequest) -> Resolution:
        """Resolve one request on the working copy."""
        holders = {self._holder[key] for key in request.identifiers if key in self._holder}
        if not holders:
            return self._create(request)
        decision = choose_survivor(holders)
        resolution = Resolution(person_id=decision.survivor_id)
        if decision.merged_ids:
            self._merge(decision.survivor_id, decision.merged_ids, request)
            resolution.merged_person_ids = list(decision.merged_ids)
        resolution.added_identifiers = self._attach(decision.survivor_id, request)
        self.changes.resolutions.append(resolution)
        return resolution

    def finish(self) -> GraphChanges:
        """Settle who finally holds every new identifier and where merged persons' identifiers go."""
        changes = self.changes
        changes.new_identifiers = [
            NewIdentifier(key, self._holder[key], source) for key, source in self._new_sources.items()
        ]
        changes.moved_identifiers = {
            person_id: final_survivor(person_id, changes.merged_into)
            for person_id in changes.merged_into
            if person_id in self._existing
        }
        return changes

    def _create(self, request: ResolveRequest) -> Resolution:
        person_id = self._new_id()
        self.changes.created_person_ids.append(person_id)
        added = self._attach(person_id, request)
        self.changes.events.append(PersonCreated(person_id, tuple(request.identifiers), request.source))
        resolution = Resolution(person_id=person_id, created=True, added_identifiers=added)
        self.changes.resolutions.append(resolution)
        return resolution

    def _attach(self, person_id: uuid.UUID, request: ResolveRequest) -> list[IdentifierKey]:
        added = []
        for key in request.identifiers:
            if key in self._holder:
                continue
            self._holder[key] = person_id
            self._held[person_id].add(key)
            self._new_sources[key] = request.source
            added.append(key)
        return added

    def _merge(
        self, survivor_id: uuid.UUID, merged_ids: Sequence[uuid.UUID], request: ResolveRequest
    ) -> None:
        held = self._held[survivor_id]
        for merged_id in merged_ids:
            self.changes.merged_into[merged_id] = survivor_id
            for key in self._held.pop(merged_id, set()):
                self._holder[key] = survivor_id
                held.add(key)
            self.changes.merges.append(
                MergeRecord(
                    id=self._new_id(),
                    survivor_id=survivor_id,
                    merged_id=merged_id,
                    cause_identifiers=tuple(request.identifiers),
                    source=request.source,
                    merged_at=self.changes.now,
                )
            )
        self.changes.events.append(
            PersonsMerged(survivor_id, tuple(merged_ids), tuple(request.identifiers), request.source)
        )


def changes_anything(holders: Mapping[IdentifierKey, uuid.UUID], requests: Iterable[ResolveRequest]) -> bool:
    """True when resolving the requests would write: an identifier is unknown, or a request links persons.

    The same answer as ``Resolver(...).resolve_all(requests).changed``, without planning anything.
    """
    for request in requests:
        holder = None
        for key in request.identifiers:
            person_id = holders.get(key)
            if person_id is None or (holder is not None and person_id != holder):
                return True
            holder = person_id
    return False


def dedupe(identifiers: Iterable[IdentifierKey]) -> tuple[IdentifierKey, ...]:
    """The identifiers without repeats, in first-seen order."""
    return tuple(dict.fromkeys(identifiers))
