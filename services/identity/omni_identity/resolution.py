"""Resolving identifier sets to persons, as a pure computation over the part of the graph they touch.

The caller loads who currently holds each identifier of the batch (under locks, see persons.py) and how
many values of each watched type those persons hold, then ``Resolver`` works through the requests in
order on that in-memory copy: a later request sees what the earlier ones did. What it decided comes back
as ``GraphChanges``, which storage writes in a few bulk statements, and the events to publish with them.

For one request:
- identifiers of forgotten persons are ignored when the tombstone policy says so (erasure.py);
- the rules (rules.py) may set identifiers aside, one at a time, until the rest may be joined;
- no remaining identifier is known: a new person holds them all (person created);
- the known identifiers belong to one person: the unknown ones are added to it;
- they belong to several persons: those merge into the oldest (merge.py), then the unknown ones are added.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from omni_identity.changes import (
    Attachment,
    GraphChanges,
    Held,
    NewIdentifier,
    PersonCreated,
    PersonsMerged,
    Refusal,
    RefusedLink,
    Resolution,
    ResolveRequest,
)
from omni_identity.merge import MergeRecord, choose_survivor, final_survivor
from omni_identity.normalise import IdentifierKey
from omni_identity.rules import Rules, Tally


class MissingTallies(Exception):
    """The rules need the counts of a person stored before the batch, and the counts were not loaded."""


class _Tallies(dict[uuid.UUID, Tally]):
    """The counts the rules read: those loaded, and those of persons made in the batch. Without loaded
    counts, asking for a stored person's raises MissingTallies, so a batch that never needs them (new
    persons only) is planned without reading them."""

    def __init__(self, loaded: Mapping[uuid.UUID, Tally] | None, stored: Collection[uuid.UUID]) -> None:
        super().__init__(
            (person_id, {name: list(counts) for name, counts in tally.items()})
            for person_id, tally in (loaded or {}).items()
        )
        self._missing = frozenset() if loaded is not None else frozenset(stored)

    def get(self, person_id: uuid.UUID, default: Any = None) -> Any:  # type: ignore[override]
        """A person's counts; raises MissingTallies for a stored person whose counts were not loaded."""
        if person_id in self:
            return self[person_id]
        if person_id in self._missing:
            raise MissingTallies(str(person_id))
        return default

    def of(self, person_id: uuid.UUID) -> Tally:
        """A person's counts, to be changed."""
        tally = self.get(person_id)
        if tally is None:
            tally = self[person_id] = {}
        return tally


class Resolver:
    """Resolves requests in order against a working copy of the identifiers' current holders."""

    def __init__(
        self,
        holders: Mapping[IdentifierKey, Held],
        *,
        now: datetime,
        new_id: Callable[[], uuid.UUID],
        rules: Rules | None = None,
        tallies: Mapping[uuid.UUID, Tally] | None = None,
        ignored: Collection[IdentifierKey] = (),
    ) -> None:
        """holders: the live person holding each already-known identifier the batch mentions, and its id;
        tallies: the watched-type counts of those persons (None: not loaded; MissingTallies is raised if the
        rules need them); ignored: identifiers of forgotten persons to drop.
        """
        self._holder: dict[IdentifierKey, uuid.UUID] = {key: held.person_id for key, held in holders.items()}
        self._ids: dict[IdentifierKey, uuid.UUID] = {key: held.identifier_id for key, held in holders.items()}
        self._held: defaultdict[uuid.UUID, set[IdentifierKey]] = defaultdict(set)
        for key, person_id in self._holder.items():
            self._held[person_id].add(key)
        self._existing = set(self._held)
        self._rules = rules
        self._tally = _Tallies(tallies, self._existing)
        self._ignored = frozenset(ignored)
        self._new_id = new_id
        self._new: dict[
            IdentifierKey, tuple[uuid.UUID, str, uuid.UUID, tuple[uuid.UUID, ...], Attachment]
        ] = {}
        self._refused: dict[tuple[str, str, uuid.UUID, str, str], RefusedLink] = {}
        self.changes = GraphChanges(now=now)

    def resolve_all(self, requests: Iterable[ResolveRequest]) -> GraphChanges:
        """Resolve every request in order and return the accumulated changes."""
        for request in requests:
            self.resolve(request)
        return self.finish()

    def resolve(self, request: ResolveRequest) -> Resolution:
        """Resolve one request on the working copy."""
        identifiers = list(request.identifiers)
        ignored: list[IdentifierKey] = []
        if self._ignored:
            ignored = [key for key in identifiers if key in self._ignored]
            identifiers = [key for key in identifiers if key not in self._ignored]
            if not identifiers:
                resolution = Resolution(person_id=None, ignored_identifiers=ignored)
                self.changes.resolutions.append(resolution)
                return resolution
        refusals: list[Refusal] = []
        if self._rules is not None:
            while (refusal := self._rules.refusal(identifiers, self._holder, self._tally)) is not None:
                refusals.append(refusal)
                identifiers.remove(refusal.key)
        kept = ResolveRequest(tuple(identifiers), request.source)
        holders = {self._holder[key] for key in identifiers if key in self._holder}
        if not holders:
            resolution = self._create(kept)
        else:
            decision = choose_survivor(holders)
            resolution = Resolution(person_id=decision.survivor_id)
            if decision.merged_ids:
                held_by = {key: self._holder[key] for key in identifiers if key in self._holder}
                self._merge(decision.survivor_id, decision.merged_ids, held_by, request)
                resolution.merged_person_ids = list(decision.merged_ids)
            resolution.added_identifiers = self._attach(decision.survivor_id, kept, Attachment.MATCHED)
        resolution.ignored_identifiers = ignored
        assert resolution.person_id is not None
        resolution.refused_links = [
            self._record(refusal, resolution.person_id, request.source) for refusal in refusals
        ]
        self.changes.resolutions.append(resolution)
        return resolution

    def finish(self) -> GraphChanges:
        """Settle who finally holds every new identifier and where merged persons' identifiers go."""
        changes = self.changes
        changes.new_identifiers = [
            NewIdentifier(key, self._holder[key], source, id_, attached_to, via, attachment)
            for key, (id_, source, attached_to, via, attachment) in self._new.items()
        ]
        changes.moved_identifiers = {
            person_id: final_survivor(person_id, changes.merged_into)
            for person_id in changes.merged_into
            if person_id in self._existing
        }
        changes.refused_links = list(self._refused.values())
        return changes

    def _create(self, request: ResolveRequest) -> Resolution:
        person_id = self._new_id()
        self.changes.created_person_ids.append(person_id)
        added = self._attach(person_id, request, Attachment.NEW_PERSON)
        self.changes.events.append(PersonCreated(person_id, tuple(request.identifiers), request.source))
        return Resolution(person_id=person_id, created=True, added_identifiers=added)

    def _attach(
        self, person_id: uuid.UUID, request: ResolveRequest, attachment: Attachment
    ) -> list[IdentifierKey]:
        via = tuple(self._ids[key] for key in request.identifiers if key in self._ids)
        watched = self._rules.watched if self._rules is not None else frozenset()
        added = []
        for key in request.identifiers:
            if key in self._holder:
                continue
            identifier_id = self._new_id()
            self._holder[key] = person_id
            self._held[person_id].add(key)
            self._new[key] = (identifier_id, request.source, person_id, via, attachment)
            added.append(key)
            if key.type in watched:
                counts = self._tally.of(person_id).setdefault(key.type, [0, 0])
                counts[0] += 1
                counts[1] += 1
        # Identifiers added by this request are stored; later requests may find the person through them.
        for key in added:
            self._ids[key] = self._new[key][0]
        return added

    def _merge(
        self,
        survivor_id: uuid.UUID,
        merged_ids: Sequence[uuid.UUID],
        held_by: Mapping[IdentifierKey, uuid.UUID],
        request: ResolveRequest,
    ) -> None:
        """Merge persons the request linked; held_by: who held each of its identifiers before it.

        A merge's cause is the identifiers that linked its two persons (those the request found them by), not
        the new ones the request brought along.
        """
        held = self._held[survivor_id]
        for merged_id in merged_ids:
            self.changes.merged_into[merged_id] = survivor_id
            for key in self._held.pop(merged_id, set()):
                self._holder[key] = survivor_id
                held.add(key)
            if self._rules is not None:
                survivor_tally = self._tally.of(survivor_id)
                for name, counts in self._tally.of(merged_id).items():
                    total = survivor_tally.setdefault(name, [0, 0])
                    total[0] += counts[0]
                    total[1] += counts[1]
                del self._tally[merged_id]
            self.changes.merges.append(
                MergeRecord(
                    id=self._new_id(),
                    survivor_id=survivor_id,
                    merged_id=merged_id,
                    cause_identifiers=tuple(
                        key for key, holder in held_by.items() if holder in (survivor_id, merged_id)
                    ),
                    source=request.source,
                    merged_at=self.changes.now,
                    reference=request.reference,
                )
            )
        self.changes.events.append(
            PersonsMerged(
                survivor_id, tuple(merged_ids), tuple(held_by), request.source, reference=request.reference
            )
        )

    def _record(self, refusal: Refusal, resolved_to: uuid.UUID, source: str) -> RefusedLink:
        now = self.changes.now
        involved = {*refusal.person_ids, resolved_to}
        if refusal.holder_id is not None:
            involved.add(refusal.holder_id)
        link = RefusedLink(
            id=self._new_id(),
            key=refusal.key,
            holder_id=refusal.holder_id,
            person_ids=tuple(sorted(involved)),
            resolved_person_id=resolved_to,
            rule=refusal.rule,
            rule_type=refusal.rule_type,
            description=refusal.description,
            source=source,
            refused_at=now,
            last_refused_at=now,
        )
        earlier = self._refused.get(link.dedupe_key)
        if earlier is None:
            self._refused[link.dedupe_key] = link
            return link
        earlier.count += 1
        earlier.person_ids = link.person_ids
        return earlier


def changes_anything(holders: Mapping[IdentifierKey, uuid.UUID], requests: Iterable[ResolveRequest]) -> bool:
    """True when resolving the requests could write: an identifier is unknown, or a request links persons.

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
