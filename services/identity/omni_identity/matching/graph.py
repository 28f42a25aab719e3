"""Filing the matcher's decisions in the identity graph: the persons it creates and the identifiers of the
records it files.

A record filed as NEW_PERSON creates a person of the graph (same id space as ResolvePerson's, announced by
identity.person_created); a record filed under a person (LINKED, or a settled review) gives that person the
record's identifiers nobody holds yet. Identifiers go through the graph's own rules: normalisation and
blocked values when the request is read (messages.py), then the limits here. A limit that refuses one sets
it aside and records a refused link, as a resolve does; the match itself succeeds. The trust rule is not
applied: it keeps a low-trust identifier from joining two persons, and the matcher joins no persons (the
link is its name and address evidence, not the identifier). Identifiers another person holds stay with it.

Locks, in the order every writer of the graph takes them (repository.py): the identifiers' advisory locks,
then the rows of the persons involved; the matcher takes its blocking keys' locks before both.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from omni_identity.batch_ids import batch_ids
from omni_identity.changes import (
    Attachment,
    GraphChanges,
    NewIdentifier,
    PersonCreated,
    RefusalRule,
    RefusedLink,
)
from omni_identity.erasure import TombstonePolicy, Tombstones
from omni_identity.normalise import IdentifierKey
from omni_identity.persons import EventSink
from omni_identity.repository import ConcurrentMerge
from omni_identity.rules import Rules, Tally
from omni_kit.bus import OutboxRows

# The side of a limit check made of the identifiers to attach, as if it were a person of its own.
_NEW_SIDE = uuid.UUID(int=0)


def identifier_key(identifier: str) -> IdentifierKey:
    """A record's "type:value" identifier as the graph's key (types never hold a colon)."""
    type_name, value = identifier.split(":", 1)
    return IdentifierKey(type_name, value)


def identifier_string(key: IdentifierKey) -> str:
    """The graph's key as a record's "type:value" identifier."""
    return f"{key.type}:{key.value}"


@dataclass(frozen=True)
class Filing:
    """One record filed under a person: the identifiers it brings, and how the person came to it."""

    person_id: uuid.UUID
    """The live person the record is filed under."""
    filed_under: uuid.UUID
    """The person it was filed under (a merged person's id leads to person_id); attached_to of its identifiers."""
    created: bool
    """True when the filing creates the person."""
    identifiers: tuple[IdentifierKey, ...]
    source: str


@dataclass(frozen=True)
class GraphView:
    """What the graph says about a batch's identifiers, read under their locks."""

    keys: tuple[IdentifierKey, ...]
    holders: dict[IdentifierKey, uuid.UUID]
    """The live person holding each known identifier."""
    ignored: frozenset[IdentifierKey]
    """Identifiers of forgotten persons that the tombstone policy says to ignore."""


@dataclass(frozen=True)
class PersonState:
    """A person's row as locked or read: whether it is live, and where a merged one leads."""

    id: uuid.UUID
    merged_into: uuid.UUID | None
    forgotten: bool

    @property
    def live(self) -> bool:
        """Not merged into anyone and not forgotten."""
        return self.merged_into is None and not self.forgotten


class GraphStore(Protocol):
    """What filing needs from the graph's storage, bound to the caller's transaction."""

    async def lock_identifiers(self, keys: Sequence[IdentifierKey]) -> None:
        """Take the identifiers' advisory locks until the transaction ends."""

    async def holders(self, keys: Sequence[IdentifierKey]) -> dict[IdentifierKey, uuid.UUID]:
        """The person holding each known identifier."""

    async def tombstoned(self, hashes: Iterable[bytes]) -> set[bytes]:
        """Which of these tombstone hashes are tombstones."""

    async def lock_persons(self, person_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, PersonState]:
        """Row-lock the persons (in id order) until the transaction ends; return them as they are now."""

    async def chain(self, person_id: uuid.UUID) -> list[PersonState]:
        """The person and the persons it was merged into, up to the live (or forgotten) one; [] if unknown."""

    async def tallies(
        self, person_ids: Iterable[uuid.UUID], windows: Mapping[str, datetime | None]
    ) -> dict[uuid.UUID, Tally]:
        """Each person's counts of watched identifier types: [attached within the window, all]."""

    async def apply(self, changes: GraphChanges, events: OutboxRows) -> None:
        """Write new persons, identifiers and refused links, with the outbox rows of their events."""


class GraphFiling:
    """Reads the graph for a batch of records and files their decisions in it."""

    def __init__(self, rules: Rules, tombstones: Tombstones, *, new_id: Callable[[], uuid.UUID]) -> None:
        self._rules = rules
        self._tombstones = tombstones
        self._new_id = new_id

    async def read(self, store: GraphStore, identifiers: Iterable[str]) -> GraphView:
        """Lock the identifiers and read who holds them and which unknown ones are tombstoned."""
        keys = tuple(sorted({identifier_key(i) for i in identifiers}))
        if not keys:
            return GraphView((), {}, frozenset())
        await store.lock_identifiers(keys)
        holders = await store.holders(keys)
        ignored: frozenset[IdentifierKey] = frozenset()
        if self._tombstones.policy is TombstonePolicy.DROP:
            hashes = self._tombstones.hashes(key for key in keys if key not in holders)
            if hashes:
                ignored = frozenset(hashes[h] for h in await store.tombstoned(hashes))
        return GraphView(keys, holders, ignored)

    async def confirm(self, store: GraphStore, view: GraphView, person_ids: Iterable[uuid.UUID]) -> None:
        """Row-lock the persons the filing changes and the identifiers' holders; raise ConcurrentMerge if one
        of them was merged or forgotten, or the holders changed, since they were read (run again)."""
        wanted = {*person_ids, *view.holders.values()}
        if not wanted:
            return
        rows = await store.lock_persons(wanted)
        if any(person_id not in rows or not rows[person_id].live for person_id in wanted):
            raise ConcurrentMerge(f"one of {sorted(wanted)} was merged or forgotten meanwhile")
        if view.keys and await store.holders(view.keys) != view.holders:
            raise ConcurrentMerge("the record's identifiers changed hands meanwhile")

    async def plan(
        self, store: GraphStore, view: GraphView, filings: Sequence[Filing], now: datetime
    ) -> GraphChanges:
        """The graph changes of filing the records in order: persons created, identifiers attached (each
        filing sees what the earlier ones attached), refusals of the limits."""
        changes = GraphChanges(now=now)
        holder = dict(view.holders)
        created = {f.person_id for f in filings if f.created}
        stored = {
            f.person_id
            for f in filings
            if not f.created and any(self._attachable(key, holder, view) for key in f.identifiers)
        }
        tallies: dict[uuid.UUID, Tally] = {}
        if stored and self._rules.watched:
            tallies = await store.tallies(stored, self._rules.windows(now))
        refused: dict[tuple[str, str, uuid.UUID, str, str], RefusedLink] = {}
        new_id = batch_ids(self._new_id)
        for filing in filings:
            if filing.created and filing.person_id in created:
                changes.created_person_ids.append(filing.person_id)
                created.discard(filing.person_id)
            pending = [
                key for key in dict.fromkeys(filing.identifiers) if self._attachable(key, holder, view)
            ]
            tally = tallies.setdefault(filing.person_id, {})
            attached = self._within_limits(pending, tally, filing, now, new_id, refused)
            for key in attached:
                holder[key] = filing.person_id
                changes.new_identifiers.append(
                    NewIdentifier(
                        key,
                        filing.person_id,
                        filing.source,
                        new_id(),
                        filing.filed_under,
                        (),
                        Attachment.NEW_PERSON if filing.created else Attachment.RECORD_MATCH,
                    )
                )
                if key.type in self._rules.watched:
                    counts = tally.setdefault(key.type, [0, 0])
                    counts[0] += 1
                    counts[1] += 1
            if filing.created:
                changes.events.append(PersonCreated(filing.person_id, tuple(attached), filing.source))
        changes.refused_links = list(refused.values())
        return changes

    async def write(self, store: GraphStore, events: EventSink, changes: GraphChanges) -> None:
        """Write the changes and stage their events (identity.person_created for each person created)."""
        if not changes.changed:
            return
        rows = events.rows(changes.events, occurred_at=changes.now, new_id=batch_ids(self._new_id))
        await store.apply(changes, rows)

    async def live_person(self, store: GraphStore, person_id: uuid.UUID) -> PersonState | None:
        """The person an id leads to (following merges): live, or forgotten; None if the id is unknown."""
        chain = await store.chain(person_id)
        return chain[-1] if chain else None

    @staticmethod
    def _attachable(key: IdentifierKey, holder: Mapping[IdentifierKey, uuid.UUID], view: GraphView) -> bool:
        return key not in holder and key not in view.ignored

    def _within_limits(
        self,
        pending: list[IdentifierKey],
        tally: Tally,
        filing: Filing,
        now: datetime,
        new_id: Callable[[], uuid.UUID],
        refused: dict[tuple[str, str, uuid.UUID, str, str], RefusedLink],
    ) -> list[IdentifierKey]:
        """The identifiers the limits let the person take; each one set aside is recorded as refused."""
        # First among themselves, as a resolve judges a new person's identifiers…
        while (refusal := self._rules.refusal(pending, {}, {})) is not None:
            pending.remove(refusal.key)
            self._refuse(
                refusal.key,
                refusal.rule,
                refusal.rule_type,
                refusal.description,
                filing,
                now,
                new_id,
                refused,
            )
        # …then together with what the person holds, as a merge of the two is judged.
        while pending:
            objection = self._rules.merge_objection(
                {filing.person_id: tally, _NEW_SIDE: self._rules.tally(((k.type, now) for k in pending), now)}
            )
            if objection is None:
                break
            type_name, description = objection
            # The latest identifier of the type in the record goes first, as in a resolve at equal priority.
            victim = next(key for key in reversed(pending) if key.type == type_name)
            pending.remove(victim)
            self._refuse(victim, RefusalRule.LIMIT, type_name, description, filing, now, new_id, refused)
        return pending

    @staticmethod
    def _refuse(
        key: IdentifierKey,
        rule: RefusalRule,
        rule_type: str,
        description: str,
        filing: Filing,
        now: datetime,
        new_id: Callable[[], uuid.UUID],
        refused: dict[tuple[str, str, uuid.UUID, str, str], RefusedLink],
    ) -> None:
        link = RefusedLink(
            id=new_id(),
            key=key,
            holder_id=None,
            person_ids=(filing.person_id,),
            resolved_person_id=filing.person_id,
            rule=rule,
            rule_type=rule_type,
            description=description,
            source=filing.source,
            refused_at=now,
            last_refused_at=now,
        )
        earlier = refused.get(link.dedupe_key)
        if earlier is None:
            refused[link.dedupe_key] = link
        else:
            earlier.count += 1
