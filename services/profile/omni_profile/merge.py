"""Merges and unmerges: when identity finds persons to be one, their profiles move onto the survivor; when
an operator splits a person back out, its events move back.

Merge: events move as they are. Traits: per trait, the value of the highest-ranked source (precedence.py);
among equals the survivor's own, then the most recently set; the history moves whole, and values the
survivor gains are recorded as changes by "merge". Computed traits: the merged states are combined, which
is exact because every kind is a sum, minimum or maximum over disjoint sets of events. The cart is
recomputed from the survivor's cart events, now all of them, in the order they happened. Consent per
channel and purpose: the most recent answer wins; the history moves whole. Segment memberships of the
merged persons are dropped (segmentation announces the survivor's). The merged ids keep a profile row
pointing at the survivor, so later events and reads that name them land on the survivor.

Identity's events are followed by omni_kit.lineage, which runs these as its hooks: it tells which persons a
merge really merges here (not merged before, not erased; a survivor merged since is followed to where it
leads), and which person an unmerged one was held by, then records where the ids lead (merged_into, on the
profile rows).

Each event a merge moves remembers the person it was on (origin_person_id; the first, when a chain of merges
moves it again), whatever it carried: an event tracked by person id, a gateway outcome. So does an event
that names a merged person and is recorded on its survivor (tracking.py).

Unmerge: the restored person's id (and the ids that had been merged into it) lead to it again, and the
survivor's events move to it when a merge took them from one of those persons, or when they carry one of
the identifiers identity moved back (compared without case, phone numbers by their digits: the events
identity resolved to the survivor after the merge that were the restored person's). Both persons' counts,
carts and computed traits are recomputed from their timelines, and both announce profile_changed; the
restored person's lists the ids of the events it got back (moved_event_ids, from the survivor), so that
segmentation, which keeps no identifiers, moves the same ones. Traits and consent stay with the survivor:
profile cannot tell which of them the restored person brought.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from omni_kit.bus import Outbox
from omni_kit.ids import new_id
from omni_kit.lineage import Merge, Unmerge
from omni_profile import cart, computed, contact_verdicts, events, repository
from omni_profile.domain import CART_EVENTS, Consent, TraitChange
from omni_profile.precedence import SourcePolicy
from omni_profile.repository import ProfileState

log = logging.getLogger(__name__)

MERGE_SOURCE = "merge"


def merge_consents(
    survivor: Sequence[Consent], merged: Sequence[Sequence[Consent]]
) -> dict[tuple[str, str], Consent]:
    """The consent per channel and purpose after a merge: the most recent answer wins (the survivor's on a
    tie)."""
    result = {(c.channel, c.purpose): c for c in survivor}
    for consents in merged:
        for consent in consents:
            key = (consent.channel, consent.purpose)
            current = result.get(key)
            if current is None or consent.updated_at > current.updated_at:
                result[key] = consent
    return result


class Merger:
    """Applies identity's persons_merged and persons_unmerged events to profiles."""

    def __init__(self, outbox: Outbox, policy: SourcePolicy, catalog: Callable[[], computed.Catalog]) -> None:
        self._outbox = outbox
        self._policy = policy
        self._catalog = catalog

    async def merge(self, session: AsyncSession, survivor: uuid.UUID, merged: Sequence[uuid.UUID]) -> None:
        """Move the merged persons' profiles onto the survivor and announce the survivor's new profile."""
        states = await repository.lock_profiles(session, [survivor, *merged])
        now = datetime.now(UTC)
        changed: list[str] = []
        if await repository.move_events(session, merged, survivor):
            changed.append("events")
        await repository.clear_states(session, merged)
        merged_traits = await self._merge_traits(session, survivor, merged, now)
        if merged_traits is not None:
            changed.append("traits")
        catalog = self._catalog()
        before = states[survivor]
        state = computed.merge_states([before.computed, *(states[m].computed for m in merged)])
        await _recompute_backfilling(session, catalog, {survivor: state}, now)
        stored_cart_events = (await repository.cart_events(session, [survivor]))[survivor]
        new_cart = cart.recompute(stored_cart_events)
        as_of = [a for a in (before.cart_as_of, *(states[m].cart_as_of for m in merged)) if a is not None]
        await repository.set_state(
            session,
            survivor,
            event_count=before.event_count + sum(states[m].event_count for m in merged),
            cart=new_cart,
            cart_as_of=max(as_of) if as_of else None,
            computed=state,
        )
        if new_cart != before.cart:
            changed.append("cart")
        values = computed.values(catalog, state, now)
        if values != computed.values(catalog, before.computed, now):
            changed.append("computed_traits")
        if await self._merge_consents(session, survivor, merged):
            changed.append("consents")
            await contact_verdicts.announce(session, self._outbox, [survivor], now)
        await repository.delete_memberships(session, merged)
        await events.stage_profile_changed(
            session,
            self._outbox,
            survivor,
            changed=changed,
            traits=merged_traits,
            cart=cart.sorted_lines(new_cart) if "cart" in changed else None,
            computed_traits=values if "computed_traits" in changed else None,
            merged_person_ids=merged,
        )

    async def merge_many(self, session: AsyncSession, merges: Sequence[Merge]) -> None:
        """Apply merges in order, as `merge` one after the other would, in a few statements for the lot.

        The usual merge (of persons who have events but no traits or consent yet, e.g. a web visitor and an
        app user found to be one) is applied together with the ones around it that share no person with
        it; a merge that brings traits or consent, or touches a person an earlier merge of the run touched,
        ends the run: the run is written, then that merge alone, and the rest go on from there.
        """
        pending = list(merges)
        while pending:
            applied = await self._merge_run(session, pending)
            if applied < len(pending):
                merge = pending[applied]
                await self.merge(session, merge.survivor_id, merge.merged_ids)
                applied += 1
            pending = pending[applied:]

    async def _merge_run(self, session: AsyncSession, merges: Sequence[Merge]) -> int:
        """Apply the longest run of usual merges at the start of `merges` together; return its length."""
        ids = {person for merge in merges for person in (merge.survivor_id, *merge.merged_ids)}
        states = await repository.lock_profiles(session, ids)
        traits = await repository.load_traits(session, ids)
        consents = await repository.load_consents(session, ids)
        touched: set[uuid.UUID] = set()
        run: list[tuple[uuid.UUID, list[uuid.UUID]]] = []
        for merge in merges:
            survivor, merged = merge.survivor_id, list(merge.merged_ids)
            if touched & {survivor, *merged} or any(traits[m] or consents[m] for m in merged):
                break
            touched |= {survivor, *merged}
            run.append((survivor, merged))
        if run:
            await self._write_run(session, run, states)
        return len(run)

    async def _write_run(
        self,
        session: AsyncSession,
        run: Sequence[tuple[uuid.UUID, list[uuid.UUID]]],
        states: Mapping[uuid.UUID, ProfileState],
    ) -> None:
        """Write merges that share no person and bring no traits or consent: what merge() writes for each."""
        moves = {m: survivor for survivor, merged in run for m in merged}
        moved = await repository.move_events_to(session, moves)
        await repository.clear_states(session, list(moves))
        await repository.move_trait_changes_to(session, moves)
        await repository.move_consents_to(session, moves)
        now = datetime.now(UTC)
        catalog = self._catalog()
        stored_cart_events = await repository.cart_events(session, [survivor for survivor, _ in run])
        new_states: list[repository.NewState] = []
        announcements = []
        merged_states = {
            survivor: computed.merge_states(
                [states[survivor].computed, *(states[m].computed for m in merged)]
            )
            for survivor, merged in run
        }
        await _recompute_backfilling(session, catalog, merged_states, now)
        for survivor, merged in run:
            before = states[survivor]
            state = merged_states[survivor]
            new_cart = cart.recompute(stored_cart_events[survivor])
            as_of = [a for a in (before.cart_as_of, *(states[m].cart_as_of for m in merged)) if a is not None]
            new_states.append(
                repository.NewState(
                    survivor,
                    before.event_count + sum(states[m].event_count for m in merged),
                    new_cart,
                    max(as_of) if as_of else None,
                    state,
                )
            )
            changed = ["events"] if moved.get(survivor) else []
            if new_cart != before.cart:
                changed.append("cart")
            values = computed.values(catalog, state, now)
            if values != computed.values(catalog, before.computed, now):
                changed.append("computed_traits")
            announcements.append(
                events.profile_changed(
                    survivor,
                    changed=changed,
                    cart=cart.sorted_lines(new_cart) if "cart" in changed else None,
                    computed_traits=values if "computed_traits" in changed else None,
                    merged_person_ids=merged,
                )
            )
        await repository.set_states(session, new_states)
        await repository.delete_memberships(session, list(moves))
        await self._outbox.add_envelopes(
            session,
            [
                self._outbox.envelope(payload, event_type=events.PROFILE_CHANGED, person_id=payload.person_id)
                for payload in announcements
            ],
        )

    async def _merge_traits(
        self, session: AsyncSession, survivor: uuid.UUID, merged: Sequence[uuid.UUID], now: datetime
    ) -> dict[str, object] | None:
        """Give the survivor the traits that win by precedence; the survivor's trait values after, or None
        when the merged persons had no traits. Their trait history moves either way (traits set and then
        removed leave history and no trait)."""
        await repository.move_trait_changes(session, merged, survivor)
        traits = await repository.load_traits(session, [survivor, *merged])
        if not any(traits[m] for m in merged):
            return None
        own = traits[survivor]
        result = self._policy.merge(own, [traits[m] for m in merged])
        gained = [t for name, t in result.items() if own.get(name) is not t]
        await repository.write_traits(session, survivor, gained, ())
        await repository.delete_traits(session, merged)
        await repository.record_trait_changes(
            session,
            [
                TraitChange(new_id(), survivor, t.name, own[t.name].value if t.name in own else None, t.value,
                            MERGE_SOURCE, now)
                for t in gained
                if t.name not in own or own[t.name].value != t.value
            ],
        )  # fmt: skip
        return {name: t.value for name, t in result.items()}

    async def _merge_consents(
        self, session: AsyncSession, survivor: uuid.UUID, merged: Sequence[uuid.UUID]
    ) -> bool:
        """Give the survivor the latest consent answers; True when the merged persons had any consent."""
        consents = await repository.load_consents(session, [survivor, *merged])
        had_any = any(consents[m] for m in merged)
        if had_any:
            own: Mapping[tuple[str, str], Consent] = {(c.channel, c.purpose): c for c in consents[survivor]}
            for key, consent in merge_consents(consents[survivor], [consents[m] for m in merged]).items():
                if own.get(key) != consent:
                    await repository.write_consent(session, survivor, consent)
        await repository.move_consents(session, merged, survivor)
        return had_any

    async def unmerge(self, session: AsyncSession, unmerge: Unmerge) -> None:
        """Move the restored person's events back from the person it was held by and recompute both
        profiles."""
        survivor_id, restored_id = unmerge.survivor_id, unmerge.restored_id
        restored_merged_ids = unmerge.restored_merged_ids
        identifiers = unmerge.moved_identifiers
        await repository.lock_profiles(session, [survivor_id, restored_id, *restored_merged_ids])
        moved = await repository.give_back_events(
            session, survivor_id, restored_id, [restored_id, *restored_merged_ids], identifiers
        )
        now = datetime.now(UTC)
        # Consent stays with the survivor: the restored person is back without answers, and whatever verdicts
        # were known for it before its merge no longer hold.
        await contact_verdicts.announce(session, self._outbox, [restored_id], now)
        catalog = self._catalog()
        timelines = await repository.events_of(session, [survivor_id, restored_id])
        for person_id in (survivor_id, restored_id):
            timeline = timelines[person_id]
            cart_events = [e for e in timeline if e.type in CART_EVENTS]
            new_cart = cart.recompute(cart_events)
            state = computed.compute(catalog, timeline, now)
            await repository.set_state(
                session,
                person_id,
                event_count=len(timeline),
                cart=new_cart,
                cart_as_of=max((e.occurred_at for e in cart_events), default=None),
                computed=state,
            )
            await events.stage_profile_changed(
                session,
                self._outbox,
                person_id,
                changed=["events", "cart", "computed_traits"] if moved else ["cart", "computed_traits"],
                cart=cart.sorted_lines(new_cart),
                computed_traits=computed.values(catalog, state, now),
                # Segmentation knows events by id, not by identifiers: it follows the list.
                moved_event_ids=moved if person_id == restored_id else (),
                moved_from_person_id=survivor_id if person_id == restored_id else None,
            )


async def _recompute_backfilling(
    session: AsyncSession, catalog: computed.Catalog, states: dict[uuid.UUID, computed.State], now: datetime
) -> None:
    """Recompute, from the survivors' timelines (the merged events moved in already), the traits of the
    definitions still being backfilled.

    Combining states is exact only for traits complete on both sides. While a definition is backfilled, a
    survivor the backfill has passed may take in a person it has not reached yet, whose state counts only
    the events since the definition: the backfill then skips that merged person, and its older events would
    never count. Recomputing the survivor, as the backfill itself does, counts them.
    """
    backfilling = [d for d in catalog.definitions if d.state == computed.BACKFILLING]
    if not backfilling or not states:
        return
    types = {d.event_type for d in backfilling}
    for event_type in [None] if None in types else sorted(t for t in types if t is not None):
        timelines = await repository.events_of(session, list(states), event_type=event_type)
        definitions = [d for d in backfilling if event_type is None or d.event_type == event_type]
        fresh_catalog = computed.Catalog.of(definitions)
        for person_id, state in states.items():
            fresh = computed.compute(fresh_catalog, timelines[person_id], now)
            for definition in definitions:
                if definition.name in fresh:
                    state[definition.name] = fresh[definition.name]
                else:
                    state.pop(definition.name, None)
