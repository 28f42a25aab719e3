"""All of decisioning's SQL: journeys, offers, read models, journey runs and the decision log."""

from __future__ import annotations

import json
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
from omni_decisioning.learning import decision_log
from omni_decisioning.models import (
    ContactLogRow,
    DecisionRow,
    JourneyRow,
    JourneyRunRow,
    MembershipRow,
    OfferCatalogRow,
    OfferRow,
    OfferVersionRow,
    OutcomeRow,
)
from omni_kit import contact
from omni_kit.bus import OutboxRows, mark_outbox_staged


def _journey(row: JourneyRow) -> Journey:
    return Journey(
        id=row.id,
        name=row.name,
        trigger_segment_id=row.trigger_segment_id,
        channels=tuple(row.channels or ()),
        template_id=row.template_id or "",
        create_time=row.create_time,
        multi_step=row.multi_step,
        state=row.state,
        version=row.version,
        has_draft=row.draft is not None,
        update_time=row.update_time,
    )


def _offer(row: OfferRow | sa.Row[Any]) -> Offer:
    return Offer(
        id=row.id,
        name=row.name,
        description=row.description,
        touchpoints=tuple(row.touchpoints),
        segment_id=row.segment_id,
        priority=row.priority,
        group=row.group,
        valid_from=row.valid_from,
        valid_until=row.valid_until,
        create_time=row.create_time,
        version=row.version,
        update_time=row.update_time,
        archive_time=row.archive_time,
    )


def _snapshot(offer: Offer) -> dict[str, Any]:
    """What a version of an offer says, as kept in offer_versions."""

    def instant(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "name": offer.name,
        "description": offer.description,
        "touchpoints": list(offer.touchpoints),
        "segment_id": str(offer.segment_id) if offer.segment_id is not None else None,
        "priority": offer.priority,
        "group": offer.group,
        "valid_from": instant(offer.valid_from),
        "valid_until": instant(offer.valid_until),
        "archive_time": instant(offer.archive_time),
    }


def _from_snapshot(offer_id: uuid.UUID, create_time: datetime, version: int, row: sa.Row[Any]) -> Offer:
    kept = row.offer

    def instant(value: str | None) -> datetime | None:
        return datetime.fromisoformat(value) if value else None

    return Offer(
        id=offer_id,
        name=kept["name"],
        description=kept["description"],
        touchpoints=tuple(kept["touchpoints"]),
        segment_id=uuid.UUID(kept["segment_id"]) if kept.get("segment_id") else None,
        priority=kept["priority"],
        group=kept.get("group", ""),
        valid_from=instant(kept.get("valid_from")),
        valid_until=instant(kept.get("valid_until")),
        create_time=create_time,
        version=version,
        update_time=row.update_time,
        archive_time=instant(kept.get("archive_time")),
    )


# log_contacts' insert over arrays: one cached statement however many sends (a multi-row VALUES is compiled
# anew for every count of rows, a CPU cost per batch of steps).
_LOG_CONTACTS = sa.text(
    "INSERT INTO contact_log (request_id, person_id, channel, contacted_at, source) "
    "SELECT t.request_id, t.person_id, t.channel, t.at, :source FROM unnest(CAST(:request_ids AS text[]), "
    "CAST(:person_ids AS uuid[]), CAST(:channels AS int[]), CAST(:ats AS timestamptz[])) "
    "AS t(request_id, person_id, channel, at) "
    "ON CONFLICT (request_id) DO UPDATE SET person_id = excluded.person_id, channel = excluded.channel, "
    "contacted_at = excluded.contacted_at, source = excluded.source"
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
            sa.select(JourneyRow)
            .where(JourneyRow.trigger_segment_id == segment_id, sa.not_(JourneyRow.multi_step))
            .order_by(JourneyRow.id)
        )
        return [_journey(row) for row in rows]

    # -- offers --------------------------------------------------------------------------------------------

    async def insert_offer(self, session: AsyncSession, offer: Offer) -> bool:
        """Insert an offer (version 1, kept in its history); False (and nothing written) when its name is
        taken."""
        inserted = await session.scalar(
            insert(OfferRow)
            .values(
                id=offer.id,
                name=offer.name,
                description=offer.description,
                touchpoints=list(offer.touchpoints),
                segment_id=offer.segment_id,
                priority=offer.priority,
                group=offer.group,
                valid_from=offer.valid_from,
                valid_until=offer.valid_until,
                create_time=offer.create_time,
                version=offer.version,
                update_time=offer.update_time or offer.create_time,
            )
            .on_conflict_do_nothing(index_elements=[OfferRow.name])
            .returning(OfferRow.id)
        )
        if inserted is None:
            return False
        await self._keep_version(session, offer)
        await self._offers_changed(session)
        return True

    async def offer(self, session: AsyncSession, offer_id: uuid.UUID, *, lock: bool = False) -> Offer | None:
        """An offer as it is now (locked until the transaction ends, when asked)."""
        query = sa.select(*OfferRow.__table__.columns).where(OfferRow.id == offer_id)
        if lock:
            query = query.with_for_update()
        row = (await session.execute(query)).first()
        return _offer(row) if row is not None else None

    async def offer_version(self, session: AsyncSession, offer_id: uuid.UUID, version: int) -> Offer | None:
        """An offer as one of its versions made it; None for a version it never had."""
        row = (
            await session.execute(
                sa.select(OfferVersionRow.offer, OfferVersionRow.update_time, OfferRow.create_time)
                .join(OfferRow, OfferRow.id == OfferVersionRow.offer_id)
                .where(OfferVersionRow.offer_id == offer_id, OfferVersionRow.version == version)
            )
        ).first()
        return _from_snapshot(offer_id, row.create_time, version, row) if row is not None else None

    async def list_offers(
        self, session: AsyncSession, *, after: uuid.UUID | None, limit: int, show_archived: bool
    ) -> list[Offer]:
        """Offers in id (creation) order, starting after the given id."""
        query = sa.select(*OfferRow.__table__.columns).order_by(OfferRow.id).limit(limit)
        if after is not None:
            query = query.where(OfferRow.id > after)
        if not show_archived:
            query = query.where(OfferRow.archive_time.is_(None))
        return [_offer(row) for row in await session.execute(query)]

    async def name_taken(self, session: AsyncSession, name: str, *, other_than: uuid.UUID) -> bool:
        """Whether another offer has this name."""
        found = await session.scalar(
            sa.select(OfferRow.id).where(OfferRow.name == name, OfferRow.id != other_than).limit(1)
        )
        return found is not None

    async def replace_offer(self, session: AsyncSession, offer: Offer) -> None:
        """Store a new version of an offer (the caller holds its lock and made the version one more)."""
        await session.execute(
            sa.update(OfferRow)
            .where(OfferRow.id == offer.id)
            .values(
                name=offer.name,
                description=offer.description,
                touchpoints=list(offer.touchpoints),
                segment_id=offer.segment_id,
                priority=offer.priority,
                group=offer.group,
                valid_from=offer.valid_from,
                valid_until=offer.valid_until,
                version=offer.version,
                update_time=offer.update_time,
                archive_time=offer.archive_time,
            )
        )
        await self._keep_version(session, offer)
        await self._offers_changed(session)

    async def _keep_version(self, session: AsyncSession, offer: Offer) -> None:
        await session.execute(
            sa.insert(OfferVersionRow).values(
                offer_id=offer.id,
                version=offer.version,
                offer=_snapshot(offer),
                update_time=offer.update_time or offer.create_time,
            )
        )

    async def _offers_changed(self, session: AsyncSession) -> None:
        """Raise the catalogue's version with a change to the offers, in its transaction: every replica's
        cache sees it with its next group of decisions."""
        await session.execute(sa.update(OfferCatalogRow).values(version=OfferCatalogRow.version + 1))

    async def live_offers(self, session: AsyncSession) -> tuple[int, list[Offer]]:
        """The catalogue's version and every offer not archived, as of one snapshot."""
        version = await session.scalar(sa.select(OfferCatalogRow.version))
        rows = await session.execute(
            sa.select(*OfferRow.__table__.columns)
            .where(OfferRow.archive_time.is_(None))
            .order_by(OfferRow.id)
        )
        return int(version or 0), [_offer(row) for row in rows]

    # -- read models ---------------------------------------------------------------------------------------

    async def persons_and_segments(
        self, session: AsyncSession, person_ids: Sequence[uuid.UUID]
    ) -> tuple[int, int, list[tuple[uuid.UUID, set[uuid.UUID]]]]:
        """For each id, in order, the person it stands for now (after merges) and the segments that person is
        a member of; and the offer catalogue's and the learning policies' versions. One statement for a whole group of decisions, on the
        session's driver connection: outside a transaction unless the session began one (a read needs none)."""
        driver = await _driver(session)
        rows = await driver.fetch(_PERSONS_AND_SEGMENTS, list(person_ids))
        found: list[tuple[uuid.UUID, set[uuid.UUID]]] = [(person_id, set()) for person_id in person_ids]
        version = learning_version = 0
        for position, person_id, segment_id, catalog, learning in rows:
            version, learning_version = catalog, learning
            segments = found[position - 1][1]
            found[position - 1] = (person_id, segments)
            if segment_id is not None:
                segments.add(segment_id)
        return int(version or 0), int(learning_version or 0), found

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
        # Contacts move too: the survivor has been sent what they were sent.
        await session.execute(
            sa.update(ContactLogRow).where(ContactLogRow.person_id.in_(merged)).values(person_id=survivor_id)
        )
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
        """Delete the persons' memberships, journey runs, decisions and their outcomes, and forget their contact
        verdicts (a tombstone keeps a late announcement out). The learned counts stay: they hold no person."""
        ids = set(person_ids)
        await contact.forget(session, ids)
        await session.execute(
            sa.delete(OutcomeRow).where(
                OutcomeRow.decision_id.in_(sa.select(DecisionRow.id).where(DecisionRow.person_id.in_(ids)))
            )
        )
        for column in (
            MembershipRow.person_id,
            JourneyRunRow.person_id,
            DecisionRow.person_id,
            ContactLogRow.person_id,
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

    # -- contact log ---------------------------------------------------------------------------------------

    async def lock_person_contacts(self, session: AsyncSession, person_id: uuid.UUID) -> None:
        """Serialise the contact-policy check and the send it lets through for one person, across journeys
        and replicas, until the transaction ends."""
        await session.execute(
            sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
            {"key": f"contacts:{person_id}"},
        )

    async def contacts_since(
        self, session: AsyncSession, person_id: uuid.UUID, since: datetime
    ) -> list[tuple[int, datetime]]:
        """The person's logged marketing sends (channel, when) since an instant."""
        rows = await session.execute(
            sa.select(ContactLogRow.channel, ContactLogRow.contacted_at).where(
                ContactLogRow.person_id == person_id, ContactLogRow.contacted_at >= since
            )
        )
        return [(row.channel, row.contacted_at) for row in rows]

    async def log_contact(
        self,
        session: AsyncSession,
        *,
        request_id: str,
        person_id: uuid.UUID,
        channel: int,
        at: datetime,
        source: str,
        retention: timedelta,
    ) -> None:
        """Count a marketing send (once per request id: the gateway's report of a journey's send replaces the
        journey's row, with the time it was sent), and drop the person's rows past the retention."""
        statement = insert(ContactLogRow).values(
            request_id=request_id, person_id=person_id, channel=channel, contacted_at=at, source=source
        )
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=[ContactLogRow.request_id],
                set_={
                    "person_id": statement.excluded.person_id,
                    "channel": statement.excluded.channel,
                    "contacted_at": statement.excluded.contacted_at,
                    "source": statement.excluded.source,
                },
            )
        )
        await session.execute(
            sa.delete(ContactLogRow).where(
                ContactLogRow.person_id == person_id, ContactLogRow.contacted_at < at - retention
            )
        )

    async def log_contacts(
        self,
        session: AsyncSession,
        contacts: Sequence[tuple[str, uuid.UUID, int, datetime]],
        *,
        source: str,
        retention: timedelta,
    ) -> None:
        """log_contact for many sends ((request id, person, channel, when); request ids distinct), in two
        statements."""
        if not contacts:
            return
        await session.execute(
            _LOG_CONTACTS,
            {
                "request_ids": [rid for rid, _, _, _ in contacts],
                "person_ids": [pid for _, pid, _, _ in contacts],
                "channels": [channel for _, _, channel, _ in contacts],
                "ats": [at for _, _, _, at in contacts],
                "source": source,
            },
        )
        await session.execute(
            sa.delete(ContactLogRow).where(
                ContactLogRow.person_id.in_({pid for _, pid, _, _ in contacts}),
                ContactLogRow.contacted_at < min(at for _, _, _, at in contacts) - retention,
            )
        )

    async def unlog_contact(self, session: AsyncSession, request_id: str) -> None:
        """A send that failed does not count."""
        await session.execute(sa.delete(ContactLogRow).where(ContactLogRow.request_id == request_id))

    # -- decisions -----------------------------------------------------------------------------------------

    async def log_decisions(
        self,
        session: AsyncSession,
        decisions: Sequence[tuple[Decision, DecideQuery]],
        create_time: datetime,
        announcements: OutboxRows,
    ) -> None:
        """Log a group of decisions and stage their announcements in one statement, which PostgreSQL runs
        atomically (and commits at once, unless the session began a transaction)."""
        driver = await _driver(session)
        mark_outbox_staged(session)
        await driver.execute(
            _LOG_DECISIONS,
            create_time,
            [decision.id for decision, _ in decisions],
            [decision.person_id for decision, _ in decisions],
            [query.touchpoint for _, query in decisions],
            [query.channel for _, query in decisions],
            [json.dumps(query.context) for _, query in decisions],
            # Arrays of arrays must be rectangular in PostgreSQL: each decision's offers travel as text.
            [",".join(str(action.offer.id) for action in decision.actions) for decision, _ in decisions],
            [
                decision.candidates_json or decision_log.to_json(decision.candidates)
                for decision, _ in decisions
            ],
            [decision.policy for decision, _ in decisions],
            [decision.model_version for decision, _ in decisions],
            *announcements.columns(),
        )


async def _driver(session: AsyncSession) -> Any:
    """The asyncpg connection under the session (checked out; asking starts no transaction)."""
    connection = await session.connection()
    return (await connection.get_raw_connection()).driver_connection


# Each id with its position, the person it stands for now and their segments (a row per segment, or one
# with none), and the offer catalogue's version on every row (read in the same snapshot).
_PERSONS_AND_SEGMENTS = (
    "SELECT asked.position, coalesce(lineage.survivor_id, asked.id) AS person_id, m.segment_id,"
    " (SELECT version FROM offer_catalog) AS catalog, (SELECT version FROM learning_state) AS learning"
    " FROM unnest($1::uuid[]) WITH ORDINALITY AS asked(id, position)"
    " LEFT JOIN person_lineage AS lineage ON lineage.person_id = asked.id"
    " LEFT JOIN memberships AS m ON m.person_id = coalesce(lineage.survivor_id, asked.id) AND m.is_member"
)

# The decisions (with their candidates and propensities) and the outbox rows announcing them, in one statement.
_LOG_DECISIONS = (
    "WITH logged AS ("
    " INSERT INTO decisions (id, person_id, touchpoint, channel, context, offer_ids, create_time, candidates,"
    " policy, model_version)"
    " SELECT d.id, d.person_id, d.touchpoint, d.channel, d.context, string_to_array(d.offers, ',')::uuid[], $1,"
    " d.candidates, d.policy, d.model_version"
    " FROM unnest($2::uuid[], $3::uuid[], $4::text[], $5::smallint[], $6::jsonb[], $7::text[], $8::jsonb[],"
    " $9::text[], $10::bigint[])"
    " AS d(id, person_id, touchpoint, channel, context, offers, candidates, policy, model_version))"
    " INSERT INTO outbox (id, subject, type, person_id, payload, headers)"
    " SELECT * FROM unnest($11::uuid[], $12::text[], $13::text[], $14::text[], $15::bytea[], $16::jsonb[])"
)
