"""Following identity's lineage events: identity.persons_merged, identity.persons_unmerged and
identity.person_forgotten, applied to a service's lineage table and, through the hooks it registers, to its
own data.

`Lineage` is a consumer handler: it runs inside the consumer's transaction, so the inbox applies each event
once, together with its effects, and one durable consumer applies them in the order identity made them. Each
event locks the persons it names and those they lead to (transaction-scoped advisory locks, which the
service may take too: lock_persons), works out what it changes here, runs the service's hook, then records
the change:

- a merge: the merged persons that were live here (not merged before, not forgotten) lead to where the
  survivor leads (identity names live persons, but a survivor merged since, here, is followed), and so do the
  ids that led to them (chains are flattened: every id leads to a live person in one hop). A merge into a
  forgotten person, and the ids already merged, change nothing;
- an unmerge: the restored person leads to itself again and the persons merged into it before lead to it.
  Identity names the live root as the survivor, which for a person merged into one merged later is not the
  person it was merged into; the hook is told where the restored person was held here. An unmerge of a person
  not held as merged here (never heard of, split already, forgotten) changes nothing;
- an erasure: every id the event names, and every id that leads to one of them here even if the event missed
  it, gets a tombstone (and leads nowhere else). A later merge or unmerge naming it changes nothing, and the
  service's reads see it as forgotten.

Hooks see the persons before the change is recorded: a merge hook gets the merges of a run in order, each with
the persons it really merges here. With `gather_merges`, the merges of a transaction are gathered and
applied together (in a few statements for the lot) when it ends or before the next unmerge or erasure.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from omni.events.v1 import envelope_pb2
from omni.identity.v1 import events_pb2
from omni_kit.bus.envelope import unpack
from omni_kit.ids import parse_uuid
from omni_kit.lineage.table import PERSON_LINEAGE, LineageTable, Whereabouts, lock_persons

log = logging.getLogger(__name__)

PERSONS_MERGED = "identity.persons_merged"
PERSONS_UNMERGED = "identity.persons_unmerged"
PERSON_FORGOTTEN = "identity.person_forgotten"
LINEAGE_EVENTS = (PERSONS_MERGED, PERSONS_UNMERGED, PERSON_FORGOTTEN)
"""The event types a Lineage handler takes."""

_GATHERED = "omni_kit.lineage.merges"
"""Where the merges of a transaction wait (session.info)."""


@dataclass(frozen=True, slots=True)
class Merge:
    """A merge as it lands here."""

    survivor_id: uuid.UUID
    """The live person the merged ones lead to from now on."""
    merged_ids: tuple[uuid.UUID, ...]
    """The persons live here until this merge (sorted); at least one."""
    event_id: str


@dataclass(frozen=True, slots=True)
class Unmerge:
    """An unmerge as it lands here."""

    survivor_id: uuid.UUID
    """The person the restored one was held by here (identity's live root), which keeps everything else."""
    restored_id: uuid.UUID
    restored_merged_ids: tuple[uuid.UUID, ...]
    """The persons merged into the restored one before its merge: they lead to it again (sorted)."""
    moved_identifiers: tuple[tuple[str, str], ...]
    """The identifiers identity moved back to the restored person, (type, value), normalised."""
    event_id: str


@dataclass(frozen=True, slots=True)
class Erasure:
    """An erasure as it lands here."""

    person_id: uuid.UUID
    """The person forgotten."""
    person_ids: tuple[uuid.UUID, ...]
    """Every id forgotten, person_id among them: those the event names and those leading to them here."""
    event_id: str


MergeHook = Callable[[AsyncSession, Sequence[Merge]], Awaitable[None]]
UnmergeHook = Callable[[AsyncSession, Unmerge], Awaitable[None]]
ErasureHook = Callable[[AsyncSession, Erasure], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Merged:
    survivor_id: uuid.UUID
    merged_ids: tuple[uuid.UUID, ...]
    event_id: str


class Lineage:
    """Identity's lineage followed into one service's database, with the service's own effects as hooks."""

    event_types = LINEAGE_EVENTS

    def __init__(
        self,
        table: LineageTable = PERSON_LINEAGE,
        *,
        on_merge: MergeHook | None = None,
        on_unmerge: UnmergeHook | None = None,
        on_erase: ErasureHook | None = None,
        gather_merges: bool = False,
    ) -> None:
        self.table = table
        self._on_merge = on_merge
        self._on_unmerge = on_unmerge
        self._on_erase = on_erase
        self._gather_merges = gather_merges

    async def __call__(self, session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        """Apply one lineage event in the consumer's transaction; other types are logged and ignored."""
        if envelope.type == PERSONS_MERGED:
            merged = _merged(envelope)
            if merged is not None:
                session.info.setdefault(_GATHERED, []).append(merged)
                if not self._gather_merges:
                    await self.finish(session)
            return
        # The merges gathered so far happened before this.
        await self.finish(session)
        if envelope.type == PERSONS_UNMERGED:
            await self._unmerged(session, envelope)
        elif envelope.type == PERSON_FORGOTTEN:
            await self._forgotten(session, envelope)
        else:
            log.warning("lineage: ignoring event %s of type %s", envelope.id, envelope.type)

    async def finish(self, session: AsyncSession) -> None:
        """Apply the merges gathered in this transaction (the consumer calls it before committing)."""
        gathered: list[_Merged] = session.info.pop(_GATHERED, [])
        if gathered:
            await self._merge(session, gathered)

    async def whereabouts(
        self, session: AsyncSession, person_ids: Iterable[uuid.UUID]
    ) -> dict[uuid.UUID, Whereabouts]:
        """Where each of these ids leads now (see LineageTable.whereabouts)."""
        return await self.table.whereabouts(session, person_ids)

    async def forget(
        self,
        session: AsyncSession,
        person_id: uuid.UUID,
        person_ids: Iterable[uuid.UUID],
        *,
        event_id: str = "",
    ) -> Erasure:
        """Apply an erasure: tombstones for the persons and every id leading to them, after the hook."""
        await self.finish(session)
        ids = {person_id, *person_ids}
        await lock_persons(session, ids)
        leading = set(await self.table.merged_into(session, ids)) - ids
        await lock_persons(session, leading)
        erasure = Erasure(person_id, tuple(sorted(ids | leading)), event_id)
        if self._on_erase is not None:
            await self._on_erase(session, erasure)
        await self.table.tombstone(session, erasure.person_ids)
        return erasure

    async def _lock(self, session: AsyncSession, person_ids: set[uuid.UUID]) -> dict[uuid.UUID, Whereabouts]:
        """Lock the persons and those they lead to; where each leads, read under the locks.

        Only lineage is written under these locks, so a read after taking them sees every change made
        before (the transactions that made them committed before letting go). The service's own rows are
        its hooks' to lock.
        """
        locked: set[uuid.UUID] = set()
        wanted = set(person_ids)
        while True:
            await lock_persons(session, wanted - locked)
            locked |= wanted
            found = await self.table.whereabouts(session, person_ids)
            leads_to = {w.person_id for w in found.values()} - locked
            if not leads_to:
                return found
            wanted |= leads_to

    async def _merge(self, session: AsyncSession, gathered: Sequence[_Merged]) -> None:
        named = {p for m in gathered for p in (m.survivor_id, *m.merged_ids)}
        found = await self._lock(session, named)
        leads = {p: w.person_id for p, w in found.items()}
        forgotten = {w.person_id for w in found.values() if w.forgotten}
        # The named ids leading to each live person, so that a merge re-points them without a scan of all.
        led_by: dict[uuid.UUID, set[uuid.UUID]] = {}
        for person, target in leads.items():
            led_by.setdefault(target, set()).add(person)
        redirects: dict[uuid.UUID, uuid.UUID] = {}
        merges: list[Merge] = []
        for event in gathered:
            survivor = leads[event.survivor_id]
            if survivor in forgotten:
                log.info(
                    "persons_merged %s: the survivor %s was forgotten; nothing follows",
                    event.event_id,
                    survivor,
                )
                continue
            merged = tuple(
                sorted(
                    {m for m in event.merged_ids if leads[m] == m and m != survivor and m not in forgotten}
                )
            )
            if not merged:
                log.info("persons_merged %s into %s: no person left to merge here", event.event_id, survivor)
                continue
            following = led_by.setdefault(survivor, set())
            for m in merged:
                # m itself, the named ids leading to it, and the persons merged into it earlier in the run.
                for person in led_by.pop(m, set()):
                    leads[person] = survivor
                    if person in redirects:
                        redirects[person] = survivor
                    following.add(person)
                redirects[m] = survivor
            merges.append(Merge(survivor, merged, event.event_id))
        if not merges:
            return
        if self._on_merge is not None:
            await self._on_merge(session, merges)
        await self.table.redirect(session, redirects)
        await self.table.lead(session, redirects)

    async def _unmerged(self, session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        event = unpack(envelope, events_pb2.PersonsUnmergedEvent)
        survivor = parse_uuid(event.survivor_person_id)
        restored = parse_uuid(event.restored_person_id)
        also = [parse_uuid(m) for m in event.restored_merged_person_ids]
        if survivor is None or restored is None or None in also:
            log.error("lineage: ignoring persons_unmerged %s with malformed person ids", envelope.id)
            return
        restored_merged = {m for m in also if m is not None and m != restored}
        found = await self._lock(session, {survivor, restored, *restored_merged})
        where = found[restored]
        if where.forgotten or where.person_id == restored:
            log.info("persons_unmerged %s: %s is not merged here; nothing to split", envelope.id, restored)
            return
        if where.person_id != survivor:
            log.warning(
                "persons_unmerged %s names survivor %s; %s leads to %s here, split from there",
                envelope.id,
                survivor,
                restored,
                where.person_id,
            )
        unmerge = Unmerge(
            survivor_id=where.person_id,
            restored_id=restored,
            restored_merged_ids=tuple(sorted(m for m in restored_merged if not found[m].forgotten)),
            moved_identifiers=tuple((i.type, i.value) for i in event.moved_identifiers),
            event_id=envelope.id,
        )
        if self._on_unmerge is not None:
            await self._on_unmerge(session, unmerge)
        await self.table.lead(
            session, {restored: None, **dict.fromkeys(unmerge.restored_merged_ids, restored)}
        )

    async def _forgotten(self, session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        event = unpack(envelope, events_pb2.PersonForgottenEvent)
        values = [v for v in (event.person_id or envelope.person_id, *event.forgotten_person_ids) if v]
        parsed = [parse_uuid(v) for v in values]
        ids = [p for p in parsed if p is not None]
        if len(ids) < len(values):
            # The valid ids are still erased: skipping them all for one bad id would keep data that must go.
            log.error(
                "lineage: person_forgotten %s names malformed person ids; erasing the others", envelope.id
            )
        if not ids:
            return
        await self.forget(session, ids[0], ids, event_id=envelope.id)


def _merged(envelope: envelope_pb2.Envelope) -> _Merged | None:
    event = unpack(envelope, events_pb2.PersonsMergedEvent)
    survivor = parse_uuid(event.survivor_person_id)
    merged = [parse_uuid(m) for m in event.merged_person_ids]
    if survivor is None or None in merged:
        # Retrying cannot fix a malformed event; dropping it is all that can be done.
        log.error("lineage: ignoring persons_merged %s with malformed person ids", envelope.id)
        return None
    return _Merged(survivor, tuple(m for m in merged if m is not None), envelope.id)
