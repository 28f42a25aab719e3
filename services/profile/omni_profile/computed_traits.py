"""Computed-trait definitions: the catalog in force, creating and listing definitions, and backfills.

The catalog is cached in the process and refreshed every `refresh_s` (a definition created by another
replica is applied here from the next refresh on). A new definition is applied to new events at once and
backfilled from the timeline by a job of omni_kit's scheduler (BACKFILL, keyed by the definition's name,
scheduled with the definition), in slices of persons in id order, one slice per run: each slice locks its
persons' profile rows (the lock tracking takes), recomputes the trait from their stored events and
replaces its state, so events tracked before or during the backfill are counted exactly once, and
schedules the next slice in the same transaction. A definition is backfilled only once it is older than
one refresh interval (its job is due then), so that every replica applies it to new events before the
backfill passes their persons; persons whose profile was created after that had it applied to all their
events and are skipped (so a backfill ends under a steady stream of new persons). The cursor is stored,
so a restart resumes.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from omni_kit.bus import Outbox
from omni_kit.errors import AlreadyExists, InvalidArgument, Violations
from omni_kit.scheduler import Job, JobWorker, schedule
from omni_profile import computed, events, paging, persons, repository
from omni_profile.computed import Catalog, Definition
from omni_profile.ingestion import Transaction

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500
_TOKEN_KIND = "computed_traits"

BACKFILL = "profile.computed_trait_backfill"
"""The scheduled job backfilling a new definition, one slice of persons per run; its key is the name."""


class ComputedTraits:
    """The computed-trait definitions in force and their backfill."""

    def __init__(self, outbox: Outbox, *, refresh_s: float, backfill_slice: int) -> None:
        self._outbox = outbox
        self._refresh_s = refresh_s
        self._slice = backfill_slice
        self.catalog = Catalog.of(())

    def current(self) -> Catalog:
        """The catalog in force (what tracking applies)."""
        return self.catalog

    async def refresh(self, session: AsyncSession) -> None:
        """Reload the definitions from the database."""
        self.catalog = Catalog.of(await repository.load_definitions(session))

    def adopt(self, definition: Definition) -> None:
        """Apply a definition committed by this process at once, without waiting for the next refresh."""
        others = [d for d in self.catalog.definitions if d.name != definition.name]
        self.catalog = Catalog.of([*others, definition])

    async def create(self, session: AsyncSession, definition: Definition) -> Definition:
        """Store a new definition (backfilling) and schedule its backfill; AlreadyExists when the name is
        taken.

        The caller adopts it once the transaction has committed.
        """
        stored = await repository.insert_definition(session, replace(definition, state=computed.BACKFILLING))
        if stored is None:
            raise AlreadyExists(
                message=f"a computed trait named {definition.name} exists already",
                reason="COMPUTED_TRAIT_EXISTS",
                metadata={"name": definition.name},
            )
        await schedule(session, BACKFILL, stored.name, timedelta(seconds=self._refresh_s), replace=True)
        return stored

    async def list_page(
        self, session: AsyncSession, page_size: int, page_token: str
    ) -> tuple[list[Definition], str]:
        """A page of definitions by name, and the next page's token ("" at the end)."""
        after = None
        if page_token:
            try:
                after = paging.decode_name(_TOKEN_KIND, page_token)
            except paging.BadPageToken as error:
                violations = Violations()
                violations.add("page_token", str(error))
                raise InvalidArgument(message=str(error), violations=violations.items) from error
        size = DEFAULT_PAGE_SIZE if page_size == 0 else min(page_size, MAX_PAGE_SIZE)
        page = await repository.list_definitions(session, after, size + 1)
        if len(page) <= size:
            return page, ""
        return page[:size], paging.encode_name(_TOKEN_KIND, page[size - 1].name)

    def register(self, worker: JobWorker) -> None:
        """Have the worker run the backfills (one definition at a time: a slice is one transaction)."""
        worker.register(BACKFILL, self.backfill, batch_size=1, lease=timedelta(minutes=5))

    async def backfill(self, session: AsyncSession, jobs: Sequence[Job]) -> None:
        """The job handler: backfill the next slice of each job's definition, and schedule the one after."""
        for job in jobs:
            await self.backfill_slice(session, job.key)

    async def backfill_slice(self, session: AsyncSession, name: str) -> None:
        """Backfill one slice of persons for a definition still backfilling, and schedule the next slice (or
        mark it ready); nothing for a definition backfilled already."""
        cursor = await repository.lock_backfill(session, name, self._refresh_s)
        if cursor is None:
            return
        if not cursor.ready:  # due early (the refresh interval was raised since it was scheduled)
            await schedule(session, BACKFILL, name, cursor.applied_from, replace=True)
            return
        definition = self.catalog.by_name.get(name)
        if definition is None:
            await self.refresh(session)
            definition = self.catalog.by_name[name]
        slice_ = await repository.live_persons_after(session, cursor.after, cursor.applied_from, self._slice)
        if not slice_:
            await repository.advance_backfill(session, name, cursor.after, done=True)
            self.adopt(replace(definition, state=computed.READY))
            log.info("computed trait %s is backfilled", name)
            return
        await self._recompute(session, definition, slice_)
        await repository.advance_backfill(session, name, slice_[-1], done=False)
        await schedule(session, BACKFILL, name, replace=True)

    async def _recompute(
        self, session: AsyncSession, definition: Definition, person_ids: list[uuid.UUID]
    ) -> None:
        now = datetime.now(UTC)
        _, states = await persons.lock_states(session, person_ids)
        timelines = await repository.events_of(session, person_ids, event_type=definition.event_type)
        single = Catalog.of([definition])
        docs: dict[uuid.UUID, computed.State] = {}
        for person_id in person_ids:
            state = states.get(person_id)
            if state is None or state.merged_into is not None or state.erased:
                continue  # merged or erased since the slice was read
            doc = state.computed
            before = computed.value(definition, doc.get(definition.name), now)
            fresh = computed.compute(single, timelines[person_id], now).get(definition.name)
            if fresh:
                doc[definition.name] = fresh
            else:
                doc.pop(definition.name, None)
            docs[person_id] = doc
            if computed.value(definition, fresh, now) != before:
                await events.stage_profile_changed(
                    session,
                    self._outbox,
                    person_id,
                    changed=["computed_traits"],
                    computed_traits=computed.values(self.catalog, doc, now),
                )
        await repository.set_computed(session, docs)

    async def run(self, transaction: Transaction) -> None:
        """Refresh the catalog every refresh_s until cancelled (a background task of the service: each
        replica keeps its own catalog; the backfills are scheduled jobs, run by one replica each)."""
        while True:
            try:
                async with transaction() as session:
                    await self.refresh(session)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("computed traits: refreshing the catalog failed; retrying")
            await asyncio.sleep(self._refresh_s)
