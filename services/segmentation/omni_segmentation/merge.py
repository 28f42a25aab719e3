"""Identity merges: the merged persons' facts and events go to the survivor, their memberships end.

omni_kit.lineage applies identity.persons_merged: it names the persons really merged here and the live person
they now lead to, locks them, runs this, then records where they lead."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from omni_kit.lineage import Merge
from omni_segmentation.membership import MembershipEvaluator
from omni_segmentation.records import PersonRecord
from omni_segmentation.repository import Repository

_NEVER = datetime.min.replace(tzinfo=UTC)


def combine_facts(
    survivor_id: uuid.UUID,
    survivor: PersonRecord | None,
    merged: Sequence[PersonRecord],
    trace_context: dict[str, str],
) -> PersonRecord:
    """The survivor's facts after a merge, until profile announces the merged profile itself.

    Traits and computed traits: the survivor's win, the merged persons' fill the gaps (the most recently
    changed first); profile's change of the survivor brings the recomputed ones. Cart: the units add up, as
    profile's cart merge keeps every line.
    """
    ordered = sorted(merged, key=lambda p: p.facts_changed_at or _NEVER)
    traits: dict[str, Any] = {}
    computed: dict[str, Any] = {}
    for person in ordered:
        traits.update(person.traits)
        computed.update(person.computed_traits)
    base = survivor or PersonRecord(survivor_id)
    traits.update(base.traits)
    computed.update(base.computed_traits)
    changed = [p.facts_changed_at for p in [base, *merged] if p.facts_changed_at is not None]
    return PersonRecord(
        person_id=survivor_id,
        traits=traits,
        cart_units=base.cart_units + sum(p.cart_units for p in merged),
        trace_context=trace_context,
        facts_changed_at=base.facts_changed_at or (max(changed) if changed else None),
        computed_traits=computed,
        computed_changed_at=base.computed_changed_at
        or max((p.computed_changed_at for p in merged if p.computed_changed_at is not None), default=None),
    )


class PersonMerger:
    """Applies identity.persons_merged to the read model and the memberships."""

    def __init__(self, repository: Repository, evaluator: MembershipEvaluator) -> None:
        self._repository = repository
        self._evaluator = evaluator

    async def merge(
        self,
        session: AsyncSession,
        merge: Merge,
        *,
        trace_context: dict[str, str],
        now: datetime,
    ) -> None:
        """Move the merged persons' facts and events to the survivor, end their memberships (announcing the
        exits) and re-evaluate the survivor."""
        survivor_id = merge.survivor_id
        persons = await self._repository.lock_persons(session, [survivor_id, *merge.merged_ids])
        merged = [persons[m] for m in merge.merged_ids if m in persons]
        if merged:
            survivor = combine_facts(survivor_id, persons.get(survivor_id), merged, trace_context)
            await self._repository.save_persons(session, [survivor])
            await self._repository.move_events(session, survivor_id, [p.person_id for p in merged])
            await self._evaluator.drop_all(session, [p.person_id for p in merged], now)
            await self._repository.delete_persons(session, [p.person_id for p in merged])
        if merged or survivor_id in persons:
            await self._evaluator.evaluate_person(session, survivor_id, now)
