"""Tracking: events are resolved to persons, stored once by their id, applied to the cart and announced.

Tracking runs in three steps, so that no database transaction stays open across the call to identity:
`recorded` (which ids are known already), `resolve` (one BatchResolvePersons call for the rest), `record`
(one transaction: insert, counts, cart, outbox).
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from omni_kit.bus import Outbox
from omni_kit.errors import InvalidArgument, Violations
from omni_profile import cart, events, persons, repository
from omni_profile.domain import CART_EVENTS, Event, TrackResult
from omni_profile.identity_client import IdentifierSet, IdentifiersRejected, IdentityClient

# Merges within one batch form short chains; the bound only guards against a cycle in a bad answer.
_MAX_REDIRECTS = 1000


class Tracker:
    """Records events on timelines; shared by the tracking RPCs and the gateway outcome consumer."""

    def __init__(self, identity: IdentityClient, outbox: Outbox) -> None:
        self._identity = identity
        self._outbox = outbox

    async def recorded(self, session: AsyncSession, batch: Sequence[Event]) -> dict[str, uuid.UUID]:
        """The person of each event in the batch whose id is recorded already."""
        return await repository.recorded_events(session, {e.id for e in batch})

    async def resolve(
        self,
        batch: Sequence[Event],
        paths: Sequence[str],
        recorded: Mapping[str, uuid.UUID],
        *,
        container: str,
    ) -> None:
        """Set person_id on the events that need one, with one call to identity for the whole batch.

        Events already recorded, repeated ids and events carrying a person id are not sent. Identity's
        refusals become InvalidArgument on our request: its "requests[k]…" paths are re-anchored on the
        event they came from (paths[i], e.g. "events[3]"), others on `container`.
        """
        seen: set[str] = set()
        pending: list[int] = []
        for index, event in enumerate(batch):
            if event.id in recorded or event.id in seen:
                continue
            seen.add(event.id)
            if event.person_id is None:
                pending.append(index)
        if not pending:
            return
        sets = [IdentifierSet(batch[i].identifiers, batch[i].channel or "unspecified") for i in pending]
        try:
            resolutions = await self._identity.resolve(sets)
        except IdentifiersRejected as rejected:
            raise _reanchor(rejected, [paths[i] for i in pending], container) from rejected
        # A later identifier set of the batch may merge the person an earlier one resolved to.
        redirects: dict[uuid.UUID, uuid.UUID] = {}
        for resolution in resolutions:
            for merged in resolution.merged_person_ids:
                if merged != resolution.person_id:
                    redirects[merged] = resolution.person_id
        for index, resolution in zip(pending, resolutions, strict=True):
            person_id = resolution.person_id
            for _ in range(_MAX_REDIRECTS):
                if person_id not in redirects:
                    break
                person_id = redirects[person_id]
            batch[index].person_id = person_id

    async def record(
        self,
        session: AsyncSession,
        batch: Sequence[Event],
        recorded: Mapping[str, uuid.UUID] | None = None,
    ) -> list[TrackResult]:
        """Store resolved events in the caller's transaction; one result per event, in order.

        An id recorded before (or earlier in the batch) is a duplicate: answered with the person it was
        recorded for, and nothing changes.
        """
        recorded = recorded or {}
        results: list[TrackResult | None] = [None] * len(batch)
        first: dict[str, int] = {}
        fresh: list[int] = []
        for index, event in enumerate(batch):
            if event.id in recorded:
                results[index] = TrackResult(recorded[event.id], duplicate=True)
            elif event.id not in first:
                first[event.id] = index
                fresh.append(index)
        current = await persons.lock_current(session, {_person(batch[i]) for i in fresh})
        for index in fresh:
            batch[index].person_id = current[_person(batch[index])]
        inserted = await repository.insert_events(session, [batch[i] for i in fresh])
        # Another request may have recorded the same id since `recorded` was read.
        raced = [batch[i].id for i in fresh if batch[i].id not in inserted]
        stored = await repository.recorded_events(session, raced) if raced else {}
        new_events: list[Event] = []
        for index in fresh:
            event = batch[index]
            if event.id in inserted:
                new_events.append(event)
                results[index] = TrackResult(_person(event), duplicate=False)
            else:
                results[index] = TrackResult(stored.get(event.id, _person(event)), duplicate=True)
        for index, event in enumerate(batch):
            if results[index] is None:
                original = results[first[event.id]]
                assert original is not None
                results[index] = TrackResult(original.person_id, duplicate=True)
        if new_events:
            await repository.add_event_counts(session, Counter(_person(e) for e in new_events))
            await self._apply_to_carts(session, new_events)
            await events.stage_events_tracked(session, self._outbox, new_events)
        return [r for r in results if r is not None]

    async def _apply_to_carts(self, session: AsyncSession, new_events: Sequence[Event]) -> None:
        by_person: dict[uuid.UUID, list[Event]] = defaultdict(list)
        for event in new_events:
            if event.type in CART_EVENTS:
                by_person[_person(event)].append(event)
        if not by_person:
            return
        before = await repository.load_carts(session, by_person.keys())
        now = datetime.now(UTC)
        changed: dict[uuid.UUID, cart.Cart] = {}
        for person_id, person_events in by_person.items():
            # Within a batch, the order things happened in; across batches, the order they arrive in.
            person_events.sort(key=lambda e: e.occurred_at)
            after = cart.apply_events(before[person_id], person_events)
            difference = cart.diff(before[person_id], after)
            if difference:
                await repository.write_cart(session, person_id, difference.upserts, difference.deletes, now)
                changed[person_id] = after
        if not changed:
            return
        traits = await repository.load_traits(session, changed.keys())
        for person_id, after in changed.items():
            await events.stage_profile_changed(
                session,
                self._outbox,
                person_id,
                traits={name: trait.value for name, trait in traits[person_id].items()},
                cart=cart.sorted_lines(after),
                changed=["cart"],
            )


def _person(event: Event) -> uuid.UUID:
    if event.person_id is None:
        raise ValueError(f"event {event.id} has not been resolved to a person")
    return event.person_id


def _reanchor(rejected: IdentifiersRejected, paths: Sequence[str], container: str) -> InvalidArgument:
    violations = Violations()
    for index, violation in rejected.violations:
        if index is not None and 0 <= index < len(paths):
            base = paths[index]
        elif len(paths) == 1:
            base = paths[0]
        else:
            base = container
        violations.add(f"{base}.{violation.field}" if violation.field else base, violation.description)
    if not violations:
        violations.add(container, rejected.message)
    return InvalidArgument(
        message=f"identity refused identifiers: {rejected.message}", violations=violations.items
    )
