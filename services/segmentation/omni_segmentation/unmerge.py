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

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from omni_kit.lineage import Unmerge
from omni_segmentation.membership import MembershipEvaluator
from omni_segmentation.records import PersonRecord
from omni_segmentation.repository import Repository


class PersonUnmerger:
    """Applies identity.persons_unmerged to the read model and the memberships."""

    def __init__(self, repository: Repository, evaluator: MembershipEvaluator) -> None:
        self._repository = repository
        self._evaluator = evaluator

    async def unmerge(
        self,
        session: AsyncSession,
        unmerge: Unmerge,
        *,
        trace_context: dict[str, str],
        now: datetime,
    ) -> None:
        """Split the restored person back out of the person it was held by: the occurrences whose events
        named it (or one merged into it before) go back to it, and both persons are evaluated, their entries
        and exits announced in this transaction. omni_kit.lineage makes its ids lead to it again."""
        survivor_id, restored_id = unmerge.survivor_id, unmerge.restored_id
        persons = await self._repository.lock_persons(session, sorted({survivor_id, restored_id}))
        moved = await self._repository.give_back_events(
            session, survivor_id, restored_id, [restored_id, *unmerge.restored_merged_ids]
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
