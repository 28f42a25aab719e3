"""Merges: when identity finds persons to be one, their profiles move onto the surviving person.

Events move as they are. Traits: the survivor's values win; among the merged persons, the most recently
set value. Cart lines of the same product add up. Consent per channel: the most recent answer wins; the
history moves whole. The merged ids keep a profile row pointing at the survivor, so later events and reads
that name them land on the survivor.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from omni_kit.bus import Outbox
from omni_profile import cart, events, persons, repository
from omni_profile.domain import Consent, Trait

log = logging.getLogger(__name__)


def merge_traits(survivor: Mapping[str, Trait], merged: Sequence[Mapping[str, Trait]]) -> dict[str, Trait]:
    """The survivor's traits after a merge: its own win; otherwise the most recently set merged value."""
    result = dict(survivor)
    candidates = sorted(
        (trait for traits in merged for trait in traits.values()), key=lambda t: t.updated_at, reverse=True
    )
    for trait in candidates:
        result.setdefault(trait.name, trait)
    return result


def merge_consents(survivor: Sequence[Consent], merged: Sequence[Sequence[Consent]]) -> dict[str, Consent]:
    """The consent per channel after a merge: the most recently given answer wins (the survivor's on a tie)."""
    result = {c.channel: c for c in survivor}
    for consents in merged:
        for consent in consents:
            current = result.get(consent.channel)
            if current is None or consent.updated_at > current.updated_at:
                result[consent.channel] = consent
    return result


class Merger:
    """Applies identity's persons_merged events to profiles."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

    async def merge(
        self, session: AsyncSession, survivor_id: uuid.UUID, merged_ids: Sequence[uuid.UUID]
    ) -> None:
        """Move the merged persons' profiles onto the survivor and announce the survivor's new profile.

        Safe to apply twice: the second time the merged persons have nothing left to move.
        """
        current = await persons.lock_current(session, [survivor_id, *merged_ids])
        # The survivor may itself have been merged away by a later event applied first.
        survivor = current[survivor_id]
        # Ids merged away earlier (into the survivor or elsewhere) have nothing of their own any more.
        merged = sorted({m for m in merged_ids if m != survivor and current[m] == m})
        if not merged:
            log.info("persons_merged into %s: nothing left to move", survivor)
            return
        everyone = [survivor, *merged]
        changed: list[str] = []
        if await repository.move_events(session, merged, survivor):
            changed.append("events")
        moved_count = await repository.mark_merged(session, merged, survivor)
        await repository.add_event_counts(session, {survivor: moved_count})

        traits = await repository.load_traits(session, everyone)
        merged_traits = merge_traits(traits[survivor], [traits[m] for m in merged])
        added_traits = [t for name, t in merged_traits.items() if name not in traits[survivor]]
        if added_traits:
            await repository.write_traits(session, survivor, added_traits, ())
        if any(traits[m] for m in merged):
            changed.append("traits")
            await repository.delete_traits(session, merged)

        carts = await repository.load_carts(session, everyone)
        merged_cart = cart.merge_carts(carts[survivor], [carts[m] for m in merged])
        difference = cart.diff(carts[survivor], merged_cart)
        if difference:
            changed.append("cart")
            await repository.write_cart(
                session, survivor, difference.upserts, difference.deletes, datetime.now(UTC)
            )
        await repository.delete_carts(session, merged)

        consents = await repository.load_consents(session, everyone)
        if any(consents[m] for m in merged):
            changed.append("consents")
            own = {c.channel: c for c in consents[survivor]}
            for channel, consent in merge_consents(consents[survivor], [consents[m] for m in merged]).items():
                if own.get(channel) != consent:
                    await repository.write_consent(session, survivor, consent)
        await repository.move_consents(session, merged, survivor)

        await events.stage_profile_changed(
            session,
            self._outbox,
            survivor,
            traits={name: trait.value for name, trait in merged_traits.items()},
            cart=cart.sorted_lines(merged_cart),
            changed=changed,
            merged_person_ids=merged,
        )
