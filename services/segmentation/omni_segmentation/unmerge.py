"""Identity unmerges: the restored person leads to itself again, takes back the occurrences of the events
that named it (or a person merged into it before), and both persons are evaluated again.

Segmentation keeps no identifiers (personal data stays in identity and profile), so it cannot pick the
occurrences profile moves back for carrying an identifier identity moved back. What it can tell here is
which person each event named when it arrived: an occurrence counted for the survivor only because its event
named the restored person (before the merge, or late) goes back. Profile owns the events: its change of the
restored person, which follows the unmerge on the log, lists every event it moved back (with the events
identity had resolved to the survivor after the merge), and the facts recorder moves the occurrences still on
the survivor then (facts.py), completing this move. Traits and cart stay with the survivor, as profile keeps
them; profile's changes of the two persons bring the carts it recomputes.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from omni_segmentation.membership import MembershipEvaluator
from omni_segmentation.records import PersonRecord
from omni_segmentation.repository import Repository

log = logging.getLogger(__name__)


class PersonUnmerger:
    """Applies identity.persons_unmerged to the read model and the memberships."""

    def __init__(self, repository: Repository, evaluator: MembershipEvaluator) -> None:
        self._repository = repository
        self._evaluator = evaluator

    async def unmerge(
        self,
        session: AsyncSession,
        *,
        survivor_id: uuid.UUID,
        restored_id: uuid.UUID,
        restored_merged_ids: Sequence[uuid.UUID],
        trace_context: dict[str, str],
        now: datetime,
    ) -> None:
        """Split the restored person back out of the survivor: its id (and those of restored_merged_ids)
        lead to it again, the occurrences whose events named them go back to it, and both persons are
        evaluated, their entries and exits announced in this transaction.

        A restored person segmentation does not hold as merged (never heard of, or unmerged already)
        changes nothing.
        """
        restored_merged_ids = [m for m in dict.fromkeys(restored_merged_ids) if m != restored_id]
        await self._repository.lock_persons_by_key(session, [survivor_id, restored_id, *restored_merged_ids])
        held_by = (await self._repository.survivors_of(session, [restored_id])).get(restored_id)
        if held_by is None:
            log.info("persons_unmerged of %s: not merged here, nothing to split", restored_id)
            return
        if held_by != survivor_id:
            # Its occurrences are where segmentation's own record of the merges put them.
            log.warning(
                "persons_unmerged of %s names survivor %s; it was merged into %s here, split from there",
                restored_id,
                survivor_id,
                held_by,
            )
            await self._repository.lock_persons_by_key(session, [held_by])
            survivor_id = held_by
        persons = await self._repository.lock_persons(session, sorted({survivor_id, restored_id}))
        await self._repository.record_unmerge(session, restored_id, restored_merged_ids)
        moved = await self._repository.give_back_events(
            session, survivor_id, restored_id, [restored_id, *restored_merged_ids]
        )
        if restored_id not in persons and (moved or survivor_id in persons):
            # Its facts went to the survivor and stay there; it starts again with none of its own.
            await self._repository.save_persons(
                session, [PersonRecord(restored_id, trace_context=trace_context)]
            )
        await self._evaluator.evaluate_persons(
            session,
            [survivor_id, restored_id],
            now,
            trace_contexts={survivor_id: trace_context, restored_id: trace_context},
        )
