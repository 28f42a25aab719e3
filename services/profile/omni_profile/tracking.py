"""Tracking: events resolved to persons through identity, then recorded in one transaction: stored once per
(source, id), applied to the cart and the computed traits, announced.

A batch costs a fixed number of statements whatever its size: read (without locking) where the persons'
events go and their profile rows, insert the events and stage their announcements, (only when a cart event
arrived out of order) read those persons' cart events, plan the profile changes, lock the profile rows
(creating missing ones; only the rows written since the read come back, and are planned again), write
them, stage the change announcements. The rows are locked for the writes and the commit only: nearly every
batch shares persons with the batches running beside it. Cart and computed traits are functions of the set
of events, not of the order they arrive in: computed traits by construction (see computed.py), the cart by
applying events in the order they happened, recomputed from the stored cart events when one arrives older
than the last applied (profiles.cart_as_of).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from omni_kit.bus import Outbox
from omni_kit.errors import FieldViolation, InvalidArgument, Violations, listed
from omni_profile import cart, computed, events, repository, wire
from omni_profile.domain import CART_EVENTS, PERSON_ERASED, PERSON_NOT_FOUND, REJECTED, Event, TrackResult
from omni_profile.envelopes import EnvelopeBatch
from omni_profile.identity_client import (
    IdentifierSet,
    IdentifiersRejected,
    IdentityClient,
    Resolution,
    SetRefused,
    Standing,
)
from omni_profile.repository import ProfileState, ProfileUpdate

# Merges within one batch form short chains; the bound only guards against a cycle in a bad answer.
_MAX_REDIRECTS = 1000

ERASED = FieldViolation("person_id", "the person was erased; events about them are not recorded")
ERASED_IDENTIFIERS = FieldViolation(
    "identifiers", "the identifiers belong to an erased person; events about them are not recorded"
)
UNKNOWN_PERSON = FieldViolation("person_id", "no such person: neither profile nor identity knows this id")


class PersonsMoved(RuntimeError):
    """A person of a batch was merged or erased between reading where its events go and locking it; the
    transaction must be run again (nothing of it is kept)."""


class Tracker:
    """Resolves and records events; shared by every way events come in (RPCs, consumers, HTTP).

    The steps (resolve_each, record) are run by ingestion.Ingestion, which owns the transactions.
    """

    def __init__(
        self, identity: IdentityClient, outbox: Outbox, catalog: Callable[[], computed.Catalog]
    ) -> None:
        self._identity = identity
        self._outbox = outbox
        self._catalog = catalog

    async def resolve_each(
        self,
        events: Sequence[Event],
        recorded: Mapping[tuple[str, str], uuid.UUID],
        held: Collection[uuid.UUID] = (),
    ) -> dict[int, TrackResult]:
        """Set person_id on the events that need one; return the events refused on the way, by index.

        Events already recorded and repeated keys are not sent. An event naming its person_id is not
        resolved, but the person must exist: one profile holds a record of (`held`: ids with a profile row,
        live, merged or erased) or, else, one identity knows (PERSON_NOT_FOUND, or PERSON_ERASED for a person
        identity erased). Identifier sets identity refuses (it names them in its answer) reject their events
        (their violations), and sets holding only an erased person's identifiers are refused PERSON_ERASED. A
        refusal that names no request of the batch cannot be pinned on an event: it is raised as
        InvalidArgument.
        """
        first: dict[tuple[str, str], int] = {}
        pending: list[int] = []
        named: dict[uuid.UUID, list[int]] = defaultdict(list)
        for index, event in enumerate(events):
            if event.key in recorded or event.key in first:
                continue
            first[event.key] = index
            if event.person_id is None:
                pending.append(index)
            elif event.person_id not in held:
                named[event.person_id].append(index)
        refused: dict[int, TrackResult] = {}
        if named:
            for person_id, standing in (await self._identity.standings(named)).items():
                if standing is Standing.UNKNOWN:
                    refused.update(dict.fromkeys(named[person_id], _NOT_FOUND))
                elif standing is Standing.FORGOTTEN:
                    refused.update(dict.fromkeys(named[person_id], _ERASED))
        while pending:
            sets = [
                IdentifierSet(
                    events[i].identifiers,
                    events[i].channel or "unspecified",
                    f"{events[i].source}/{events[i].id}",
                )
                for i in pending
            ]
            try:
                answers = await self._identity.resolve(sets)
            except IdentifiersRejected as refusal:
                # A fault of the call as a whole (identity names refused sets in its answer): the one event
                # it can concern is refused, or the batch is. An identity older than refuse_sets_individually
                # refuses the call naming its first refused sets: those are refused and the rest sent again.
                rejected = _refused(refusal, pending)
                refused.update({i: TrackResult.rejected(v) for i, v in rejected.items()})
                pending = [i for i in pending if i not in rejected]
                continue
            resolved: list[tuple[int, Resolution]] = []
            for index, answer in zip(pending, answers, strict=True):
                if isinstance(answer, SetRefused):
                    refused[index] = TrackResult.rejected(_set_violations(answer))
                else:
                    resolved.append((index, answer))
            forgotten = _assign(events, [i for i, _ in resolved], [r for _, r in resolved])
            refused.update(dict.fromkeys(forgotten, _ERASED_IDENTIFIERS))
            break
        # Repeats of a refused event's key are refused with it.
        for index, event in enumerate(events):
            original = first.get(event.key)
            if original is not None and original != index and original in refused:
                refused[index] = refused[original]
        return refused

    async def record(
        self,
        session: AsyncSession,
        batch: Sequence[Event],
        recorded: Mapping[tuple[str, str], uuid.UUID] | None = None,
    ) -> list[TrackResult]:
        """Store resolved events in the caller's transaction; one result per event, in order.

        A (source, id) recorded before (in `recorded`, or earlier in the batch, or by a concurrent request)
        is a duplicate: answered with the person it was recorded for, and nothing changes. An event of an
        erased person is rejected.
        """
        recorded = recorded or {}
        results: list[TrackResult | None] = [None] * len(batch)
        first: dict[tuple[str, str], int] = {}
        fresh: list[int] = []
        for index, event in enumerate(batch):
            key = event.key
            if key in recorded:
                results[index] = TrackResult(recorded[key], duplicate=True)
            elif key not in first:
                first[key] = index
                fresh.append(index)
        # Where the events go is read without locking, and the events are stored and announced before the
        # profile rows are locked: batches sharing persons (most do) wait on each other only for the last
        # part of the transaction. The locks confirm where the events went, or the transaction is run again
        # (PersonsMoved: a merge or an erasure committed in between).
        whereabouts = await repository.where_persons_are(session, {_named(batch[i]) for i in fresh})
        storable: list[Event] = []
        for index in fresh:
            event = batch[index]
            named = _named(event)
            current, erased = whereabouts.leads_to.get(named, (named, False))
            event.person_id = current
            event.origin_person_id = named if current != named else None
            if erased:
                results[index] = _ERASED
            else:
                storable.append(event)
        for event in storable:
            wire.stored_event_bytes(event)
        inserted = await repository.insert_events(session, storable)
        # Keys recorded before (or by a concurrent request): a duplicate, or an id reused for other content.
        raced = [e.key for e in storable if e.key not in inserted]
        stored = await repository.recorded_events(session, raced) if raced else {}
        new_events: list[Event] = []
        for index in fresh:
            if results[index] is not None:
                continue
            event = batch[index]
            if event.key in inserted:
                new_events.append(event)
                results[index] = TrackResult(_person(event), duplicate=False)
            else:
                person_id, fingerprint = stored.get(event.key, (_person(event), None))
                results[index] = _again(person_id, fingerprint, event)
        # Repeats within the batch: compared with what was recorded before, else with their first occurrence.
        for index, event in enumerate(batch):
            if results[index] is None:
                original = results[first[event.key]]
                assert original is not None
                if original.status == REJECTED:
                    results[index] = original
                elif event.key in stored:
                    results[index] = _again(*stored[event.key], event)
                else:
                    results[index] = _again(original.person_id, batch[first[event.key]].fingerprint, event)
        if new_events:
            tracked = events.tracked_envelopes(EnvelopeBatch(self._outbox), new_events)
            await self._outbox.add_envelopes(session, tracked)
            await self._apply(session, new_events, whereabouts.states)
        return [r for r in results if r is not None]

    async def _apply(
        self, session: AsyncSession, new_events: Sequence[Event], read: Mapping[uuid.UUID, ProfileState]
    ) -> None:
        """Apply newly stored events to their persons' cart, computed traits and counts; announce them.

        Planned from the states read without locking; then the rows are locked and the plans of the
        persons written since (by a concurrent batch) are made again from their locked state. Batches
        sharing persons (nearly all do) so wait on each other only for the writes and the commit.
        """
        now = datetime.now(UTC)
        catalog = self._catalog()
        by_person: dict[uuid.UUID, list[Event]] = defaultdict(list)
        for event in new_events:
            by_person[_person(event)].append(event)
        states = {p: read.get(p) or ProfileState.empty(p) for p in by_person}
        plans = await _plan(session, catalog, by_person, states, now)
        locked = await repository.lock_as_read(session, {p: states[p].version for p in by_person})
        if locked.moved:
            raise PersonsMoved("a merge or an erasure moved persons of the batch while it was recorded")
        if locked.changed:
            plans.update(
                await _plan(session, catalog, {p: by_person[p] for p in locked.changed}, locked.changed, now)
            )
        await repository.update_profiles(session, [plan.update for plan in plans.values()])
        announcements = [a for a in (plan.announcement() for plan in plans.values()) if a is not None]
        await self._outbox.add_envelopes(
            session, events.changed_envelopes(EnvelopeBatch(self._outbox), announcements)
        )


@dataclass(frozen=True)
class _Plan:
    """What a batch's events change on one profile: the row update and the parts announced as changed."""

    update: ProfileUpdate
    changed: list[str]
    computed_values: dict[str, Any] | None
    """Every computed trait's value, when one changed."""

    def announcement(self) -> tuple[str, bytes] | None:
        """The encoded profile_changed payload, or None when nothing announced changed."""
        if not self.changed:
            return None
        person_id = str(self.update.person_id)
        new_cart = self.update.cart
        return person_id, events.profile_changed_bytes(
            person_id,
            changed=self.changed,
            cart=cart.sorted_lines(new_cart) if "cart" in self.changed and new_cart is not None else None,
            computed_traits=self.computed_values,
        )


async def _plan(
    session: AsyncSession,
    catalog: computed.Catalog,
    by_person: Mapping[uuid.UUID, Sequence[Event]],
    states: Mapping[uuid.UUID, ProfileState],
    now: datetime,
) -> dict[uuid.UUID, _Plan]:
    """Plan the cart, computed traits and counts of each person from its state (changed in place) and its
    new events."""
    plans: dict[uuid.UUID, _Plan] = {}
    late_carts: list[uuid.UUID] = []
    for person_id, person_events in by_person.items():
        state = states[person_id]
        changed: list[str] = []
        cart_events = [e for e in person_events if e.type in CART_EVENTS]
        new_cart: cart.Cart | None = None
        cart_as_of = state.cart_as_of
        if cart_events:
            latest = max(e.occurred_at for e in cart_events)
            cart_as_of = latest if cart_as_of is None else max(cart_as_of, latest)
            if state.cart_as_of is not None and min(e.occurred_at for e in cart_events) <= state.cart_as_of:
                late_carts.append(person_id)
            else:
                new_cart = cart.apply_events(state.cart, sorted(cart_events, key=cart.order_key))
                if new_cart != state.cart:
                    changed.append("cart")
        computed_values = _update_computed(catalog, state.computed, person_events, now)
        if computed_values is not None:
            changed.append("computed_traits")
        update = ProfileUpdate(person_id, len(person_events), state.computed, new_cart, cart_as_of)
        plans[person_id] = _Plan(update, changed, computed_values)
    if late_carts:
        # Out of order: the cart is what all the person's cart events, in the order they happened, make
        # (the stored ones include this batch's).
        stored = await repository.cart_events(session, late_carts)
        for person_id in late_carts:
            plan = plans[person_id]
            recomputed = cart.recompute(stored[person_id])
            changed = ["cart", *plan.changed] if recomputed != states[person_id].cart else plan.changed
            update = ProfileUpdate(
                person_id, plan.update.added_events, plan.update.computed, recomputed, plan.update.cart_as_of
            )
            plans[person_id] = _Plan(update, changed, plan.computed_values)
    return plans


def _update_computed(
    catalog: computed.Catalog, doc: computed.State, person_events: Sequence[Event], now: datetime
) -> dict[str, Any] | None:
    """Apply events to a person's computed state in place; every trait's value when one changed, else None."""
    candidates = {d.name for e in person_events for d in catalog.matching(e)}
    if not candidates:
        return None
    before = computed.values_of(catalog, doc, candidates, now)
    touched = computed.apply(catalog, doc, person_events, now)
    if not touched:
        return None
    after = computed.values(catalog, doc, now)
    if all(before.get(name) == after.get(name) for name in touched):
        return None
    return after


_ERASED = TrackResult.rejected([ERASED], PERSON_ERASED)
_ERASED_IDENTIFIERS = TrackResult.rejected([ERASED_IDENTIFIERS], PERSON_ERASED)
_NOT_FOUND = TrackResult.rejected([UNKNOWN_PERSON], PERSON_NOT_FOUND)


def _again(person_id: uuid.UUID | None, fingerprint: bytes | None, event: Event) -> TrackResult:
    """The result of an event whose key was recorded before (for person_id, with that fingerprint): a
    duplicate, unless both fingerprints are known and differ. Events stored without one (before they were
    kept, or not sent as protobuf) compare equal to anything."""
    assert person_id is not None
    if fingerprint is not None and event.fingerprint is not None and fingerprint != event.fingerprint:
        return TrackResult.id_reused(person_id)
    return TrackResult(person_id, duplicate=True)


def _refused(refusal: IdentifiersRejected, pending: Sequence[int]) -> dict[int, list[FieldViolation]]:
    """The events of `pending` that identity's refusal names, with their violations."""
    refused: dict[int, list[FieldViolation]] = {}
    for position, violation in refusal.violations:
        if position is not None and 0 <= position < len(pending):
            refused.setdefault(pending[position], []).append(violation)
        elif len(pending) == 1:
            refused.setdefault(pending[0], []).append(violation)
    if not refused:
        if len(pending) == 1:
            return {pending[0]: [FieldViolation("identifiers", refusal.message)]}
        violations = Violations()
        violations.add("events", refusal.message)
        raise InvalidArgument(
            message=f"identity refused the batch: {refusal.message}", violations=violations.items
        )
    return refused


def _set_violations(refusal: SetRefused) -> list[FieldViolation]:
    """An event's violations for its refused identifier set (the set's paths are the event's: both hold
    `identifiers`), with a last one counting those identity left out."""
    return listed(refusal.violations, omitted=refusal.omitted)


def _assign(events: Sequence[Event], pending: Sequence[int], resolutions: Sequence[Resolution]) -> list[int]:
    """Set each pending event's person from its resolution; return the events whose identifiers all belonged
    to an erased person (no person)."""
    # A later identifier set of the batch may merge the person an earlier one resolved to.
    redirects: dict[uuid.UUID, uuid.UUID] = {}
    for resolution in resolutions:
        if resolution.person_id is None:
            continue
        for merged in resolution.merged_person_ids:
            if merged != resolution.person_id:
                redirects[merged] = resolution.person_id
    forgotten: list[int] = []
    for index, resolution in zip(pending, resolutions, strict=True):
        person_id = resolution.person_id
        if person_id is None:
            forgotten.append(index)
            continue
        for _ in range(_MAX_REDIRECTS):
            if person_id not in redirects:
                break
            person_id = redirects[person_id]
        events[index].person_id = person_id
    return forgotten


def _named(event: Event) -> uuid.UUID:
    """The person the event was resolved to or named, before any redirect to a survivor (a run made again
    after a conflict starts from it)."""
    return event.origin_person_id or _person(event)


def _person(event: Event) -> uuid.UUID:
    if event.person_id is None:
        raise ValueError(f"event {event.id} has not been resolved to a person")
    return event.person_id
