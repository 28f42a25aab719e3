"""All of decisioning's SQL: journeys, offers, read models, journey runs and the decision log."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import distinct_on, insert
from sqlalchemy.ext.asyncio import AsyncSession

from omni_decisioning.entities import (
    DecideQuery,
    Decision,
    Journey,
    JourneyRun,
    Offer,
    RunOutcome,
)
from omni_decisioning.models import (
    DecisionRow,
    JourneyRow,
    JourneyRunRow,
    MembershipRow,
    OfferRow,
)
from omni_kit import contact
from omni_kit.lineage import person_lineage


def _journey(row: JourneyRow) -> Journey:
    return Journey(
        id=row.id,
        name=row.name,
        trigger_segment_id=row.trigger_segment_id,
        channels=tuple(row.channels),
        template_id=row.template_id,
        create_time=row.create_time,
    )


def _offer(row: OfferRow | sa.Row[Any]) -> Offer:
    return Offer(
        id=row.id,
        name=row.name,
        description=row.description,
        touchpoints=tuple(row.touchpoints),
        segment_id=row.segment_id,
        priority=row.priority,
        create_time=row.create_time,
    )


class Repository:
    """Queries over decisioning's database; every method runs in the caller's session and transaction."""

    # -- journeys ------------------------------------------------------------------------------------------

    async def insert_journey(self, session: AsyncSession, journey: Journey) -> bool:
        """Insert a journey; False (and nothing written) when its name is taken."""
        inserted = await session.scalar(
            insert(JourneyRow)
            .values(
                id=journey.id,
                name=journey.name,
                trigger_segment_id=journey.trigger_segment_id,
                channels=list(journey.channels),
                template_id=journey.template_id,
                create_time=journey.create_time,
            )
            .on_conflict_do_nothing(index_elements=[JourneyRow.name])
            .returning(JourneyRow.id)
        )
        return inserted is not None

    async def list_journeys(
        self, session: AsyncSession, *, after: uuid.UUID | None, limit: int
    ) -> list[Journey]:
        """Journeys in id (creation) order, starting after the given id."""
        query = sa.select(JourneyRow).order_by(JourneyRow.id).limit(limit)
        if after is not None:
            query = query.where(JourneyRow.id > after)
        return [_journey(row) for row in await session.scalars(query)]

    async def journeys_triggered_by(self, session: AsyncSession, segment_id: uuid.UUID) -> list[Journey]:
        """The journeys that start when a person enters the segment."""
        rows = await session.scalars(
            sa.select(JourneyRow).where(JourneyRow.trigger_segment_id == segment_id).order_by(JourneyRow.id)
        )
        return [_journey(row) for row in rows]

    # -- offers --------------------------------------------------------------------------------------------

    async def insert_offer(self, session: AsyncSession, offer: Offer) -> bool:
        """Insert an offer; False (and nothing written) when its name is taken."""
        inserted = await session.scalar(
            insert(OfferRow)
            .values(
                id=offer.id,
                name=offer.name,
                description=offer.description,
                touchpoints=list(offer.touchpoints),
                segment_id=offer.segment_id,
                priority=offer.priority,
                create_time=offer.create_time,
            )
            .on_conflict_do_nothing(index_elements=[OfferRow.name])
            .returning(OfferRow.id)
        )
        return inserted is not None

    async def offers_at(self, session: AsyncSession, touchpoint: str) -> list[Offer]:
        """The offers that may be shown at a touchpoint (those listing it or listing none)."""
        # Plain rows, not ORM objects: this is on Decide's path and runs for every call.
        rows = await session.execute(
            sa.select(*OfferRow.__table__.columns).where(
                sa.or_(
                    sa.func.cardinality(OfferRow.touchpoints) == 0,
                    OfferRow.touchpoints.any_() == touchpoint,
                )
            )
        )
        return [_offer(row) for row in rows]

    # -- read models ---------------------------------------------------------------------------------------

    async def person_and_segments(
        self, session: AsyncSession, person_id: uuid.UUID
    ) -> tuple[uuid.UUID, set[uuid.UUID]]:
        """The person an id stands for now and the segments they are a member of, in one round trip."""
        alias = (
            sa.select(person_lineage.c.survivor_id)
            .where(person_lineage.c.person_id == person_id)
            .scalar_subquery()
        )
        person = sa.select(sa.func.coalesce(alias, sa.literal(person_id, sa.Uuid)).label("id")).cte("person")
        rows = await session.execute(
            sa.select(person.c.id, MembershipRow.segment_id)
            .select_from(person)
            .outerjoin(
                MembershipRow,
                sa.and_(MembershipRow.person_id == person.c.id, MembershipRow.is_member.is_(True)),
            )
        )
        found = rows.all()
        return found[0].id, {row.segment_id for row in found if row.segment_id is not None}

    async def record_membership(
        self,
        session: AsyncSession,
        *,
        person_id: uuid.UUID,
        segment_id: uuid.UUID,
        is_member: bool,
        as_of: datetime,
    ) -> bool:
        """Set membership unless a newer fact is known; True when it was applied."""
        statement = insert(MembershipRow).values(
            person_id=person_id, segment_id=segment_id, is_member=is_member, as_of=as_of
        )
        applied = await session.scalar(
            statement.on_conflict_do_update(
                index_elements=[MembershipRow.person_id, MembershipRow.segment_id],
                set_={"is_member": statement.excluded.is_member, "as_of": statement.excluded.as_of},
                where=MembershipRow.as_of <= statement.excluded.as_of,
            ).returning(MembershipRow.person_id)
        )
        return applied is not None

    async def merge_persons(
        self, session: AsyncSession, *, survivor_id: uuid.UUID, merged_ids: Sequence[uuid.UUID]
    ) -> None:
        """Move memberships and journey runs of merged persons to the survivor.

        Where both have a fact about the same segment, the newer one wins. Each run moved remembers whose it
        was (the first person, through a chain of merges), for an unmerge to give back. Contact verdicts do
        not move: profile merges the consent answers and announces the survivor's verdicts.
        """
        merged = [m for m in merged_ids if m != survivor_id]
        if not merged:
            return
        newest_memberships = (
            sa.select(
                sa.literal(survivor_id, sa.Uuid).label("person_id"),
                MembershipRow.segment_id,
                MembershipRow.is_member,
                MembershipRow.as_of,
            )
            .where(MembershipRow.person_id.in_(merged))
            .ext(distinct_on(MembershipRow.segment_id))
            .order_by(MembershipRow.segment_id, MembershipRow.as_of.desc())
        )
        moved_memberships = insert(MembershipRow).from_select(
            ["person_id", "segment_id", "is_member", "as_of"], newest_memberships
        )
        await session.execute(
            moved_memberships.on_conflict_do_update(
                index_elements=[MembershipRow.person_id, MembershipRow.segment_id],
                set_={
                    "is_member": moved_memberships.excluded.is_member,
                    "as_of": moved_memberships.excluded.as_of,
                },
                where=MembershipRow.as_of < moved_memberships.excluded.as_of,
            )
        )
        await session.execute(sa.delete(MembershipRow).where(MembershipRow.person_id.in_(merged)))
        # Runs move too, so the re-entry guard sees one person's history as one.
        await session.execute(
            sa.update(JourneyRunRow)
            .where(JourneyRunRow.person_id.in_(merged))
            .values(
                person_id=survivor_id,
                origin_person_id=sa.func.coalesce(JourneyRunRow.origin_person_id, JourneyRunRow.person_id),
            )
        )

    async def give_back_runs(
        self,
        session: AsyncSession,
        *,
        survivor_id: uuid.UUID,
        restored_id: uuid.UUID,
        origin_ids: Collection[uuid.UUID],
    ) -> None:
        """Move the survivor's journey runs that a merge took from one of origin_ids (the restored person and
        those merged into it before) to the restored person; those of the restored person itself are its own
        again."""
        await session.execute(
            sa.update(JourneyRunRow)
            .where(JourneyRunRow.person_id == survivor_id, JourneyRunRow.origin_person_id.in_(origin_ids))
            .values(
                person_id=restored_id,
                origin_person_id=sa.func.nullif(JourneyRunRow.origin_person_id, restored_id),
            )
        )

    async def forget_persons(self, session: AsyncSession, person_ids: Collection[uuid.UUID]) -> None:
        """Delete the persons' memberships, journey runs and decisions, and forget their contact verdicts (a
        tombstone keeps a late announcement out)."""
        ids = set(person_ids)
        await contact.forget(session, ids)
        for column in (
            MembershipRow.person_id,
            JourneyRunRow.person_id,
            DecisionRow.person_id,
        ):
            await session.execute(sa.delete(column.class_).where(column.in_(ids)))

    # -- journey runs --------------------------------------------------------------------------------------

    async def lock_journey_person(
        self, session: AsyncSession, journey_id: uuid.UUID, person_id: uuid.UUID
    ) -> None:
        """Serialise runs of one journey for one person until the transaction ends (replicas race otherwise)."""
        await session.execute(
            sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
            {"key": f"journey-run:{journey_id}:{person_id}"},
        )

    async def has_run_for_trigger(
        self,
        session: AsyncSession,
        *,
        journey_id: uuid.UUID,
        person_id: uuid.UUID,
        trigger_event_id: uuid.UUID,
    ) -> bool:
        """Whether this trigger event already produced a run of the journey for the person."""
        found = await session.scalar(
            sa.select(JourneyRunRow.id).where(
                JourneyRunRow.journey_id == journey_id,
                JourneyRunRow.person_id == person_id,
                JourneyRunRow.trigger_event_id == trigger_event_id,
            )
        )
        return found is not None

    async def started_run_times(
        self,
        session: AsyncSession,
        *,
        journey_id: uuid.UUID,
        person_id: uuid.UUID,
        around: datetime,
        window: timedelta,
    ) -> list[datetime]:
        """Trigger times of runs that requested a send, within `window` either side of `around`."""
        rows = await session.scalars(
            sa.select(JourneyRunRow.trigger_time).where(
                JourneyRunRow.journey_id == journey_id,
                JourneyRunRow.person_id == person_id,
                JourneyRunRow.outcome == RunOutcome.SEND_REQUESTED.value,
                JourneyRunRow.trigger_time > around - window,
                JourneyRunRow.trigger_time < around + window,
            )
        )
        return list(rows)

    async def insert_run(self, session: AsyncSession, run: JourneyRun) -> None:
        """Record a journey run."""
        session.add(
            JourneyRunRow(
                id=run.id,
                journey_id=run.journey_id,
                person_id=run.person_id,
                trigger_event_id=run.trigger_event_id,
                trigger_time=run.trigger_time,
                outcome=run.outcome.value,
                channel=run.channel,
                request_id=run.request_id,
                create_time=run.create_time,
            )
        )
        await session.flush()

    # -- decisions -----------------------------------------------------------------------------------------

    async def insert_decision(
        self, session: AsyncSession, decision: Decision, query: DecideQuery, create_time: datetime
    ) -> None:
        """Log a decision."""
        await session.execute(
            sa.insert(DecisionRow).values(
                id=decision.id,
                person_id=decision.person_id,
                touchpoint=query.touchpoint,
                channel=query.channel,
                context=query.context,
                offer_ids=[action.offer.id for action in decision.actions],
                create_time=create_time,
            )
        )
