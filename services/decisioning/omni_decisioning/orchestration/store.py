"""The SQL of multi-step journeys: journeys' drafts, states and versions, runs and the steps they took, and the
profile facts (events of the types journeys name, traits) decisioning keeps for them."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from omni_decisioning.models import (
    FlowRunRow,
    FlowRunStepRow,
    JourneyRow,
    JourneyVersionRow,
    MembershipRow,
    PersonEventRow,
    PersonTraitsRow,
)
from omni_kit.db import json_text

LIVE = ("published", "paused")
EVENT_RETENTION = timedelta(days=367)
"""How long a kept event can matter: the longest window a condition looks back (366 days), and a day."""


@dataclass
class Run:
    """A run as the engine works with it (mutable: the engine moves it on and saves it)."""

    id: uuid.UUID
    journey_id: uuid.UUID
    version: int
    person_id: uuid.UUID
    key: str
    trigger_id: str
    state: str
    current_step: str | None
    due_at: datetime | None
    visits: dict[str, int]
    data: dict[str, Any]
    start_time: datetime
    end_time: datetime | None = None
    end_reason: str | None = None


@dataclass(frozen=True)
class StepRecord:
    """A step a run took, to be recorded after the ones before (journey_flow_steps)."""

    run_id: uuid.UUID
    step_id: str
    kind: str
    at: datetime
    outcome: str
    detail: str
    next_step: str | None


# One statement for a batch's step records: each run's records follow its last one (its rows are locked by
# the caller, so nobody else appends meanwhile); `ord` numbers a run's records within the batch.
_ADD_STEPS = sa.text(
    "INSERT INTO journey_flow_steps (run_id, seq, step_id, kind, at, outcome, detail, next_step) "
    "SELECT t.run_id, coalesce((SELECT max(s.seq) FROM journey_flow_steps s WHERE s.run_id = t.run_id), 0) "
    "+ t.ord, t.step_id, t.kind, t.at, t.outcome, t.detail, t.next_step "
    "FROM unnest(CAST(:run_ids AS uuid[]), CAST(:ords AS int[]), CAST(:step_ids AS text[]), "
    "CAST(:kinds AS text[]), CAST(:ats AS timestamptz[]), CAST(:outcomes AS text[]), "
    "CAST(:details AS text[]), CAST(:next_steps AS text[])) "
    "AS t(run_id, ord, step_id, kind, at, outcome, detail, next_step)"
)
# One statement for a batch's runs' new positions.
_SAVE_RUNS = sa.text(
    "UPDATE journey_flow_runs AS r SET version = t.version, state = t.state, current_step = t.current_step, "
    "due_at = t.due_at, visits = t.visits, data = t.data, end_time = t.end_time, end_reason = t.end_reason "
    "FROM unnest(CAST(:ids AS uuid[]), CAST(:versions AS bigint[]), CAST(:states AS text[]), "
    "CAST(:current_steps AS text[]), CAST(:due_ats AS timestamptz[]), CAST(:visits AS jsonb[]), "
    "CAST(:data AS jsonb[]), CAST(:end_times AS timestamptz[]), CAST(:end_reasons AS text[])) "
    "AS t(id, version, state, current_step, due_at, visits, data, end_time, end_reason) WHERE r.id = t.id"
)


def _run(row: FlowRunRow) -> Run:
    return Run(
        id=row.id,
        journey_id=row.journey_id,
        version=row.version,
        person_id=row.person_id,
        key=row.key,
        trigger_id=row.trigger_id,
        state=row.state,
        current_step=row.current_step,
        due_at=row.due_at,
        visits=dict(row.visits),
        data=dict(row.data),
        start_time=row.start_time,
        end_time=row.end_time,
        end_reason=row.end_reason,
    )


class Store:
    """Queries over decisioning's journey tables; every method runs in the caller's transaction."""

    # -- journeys ------------------------------------------------------------------------------------------

    async def insert_draft(
        self, session: AsyncSession, *, journey_id: uuid.UUID, name: str, draft: dict[str, Any], at: datetime
    ) -> bool:
        """Insert a multi-step journey as a draft; False when the name is taken."""
        inserted = await session.scalar(
            insert(JourneyRow)
            .values(
                id=journey_id,
                name=name,
                create_time=at,
                update_time=at,
                multi_step=True,
                state="draft",
                version=0,
                draft=draft,
            )
            .on_conflict_do_nothing(index_elements=[JourneyRow.name])
            .returning(JourneyRow.id)
        )
        return inserted is not None

    async def journey(
        self, session: AsyncSession, journey_id: uuid.UUID, *, lock: bool = False
    ) -> JourneyRow | None:
        """A journey's row (locked to the transaction's end, when asked)."""
        query = sa.select(JourneyRow).where(JourneyRow.id == journey_id)
        if lock:
            query = query.with_for_update()
        return (await session.scalars(query)).first()

    async def spec(self, session: AsyncSession, journey_id: uuid.UUID, version: int) -> dict[str, Any] | None:
        """A published version's stored spec."""
        return await session.scalar(
            sa.select(JourneyVersionRow.spec).where(
                JourneyVersionRow.journey_id == journey_id, JourneyVersionRow.version == version
            )
        )

    async def specs(
        self, session: AsyncSession, versions: Collection[tuple[uuid.UUID, int]]
    ) -> dict[tuple[uuid.UUID, int], dict[str, Any]]:
        """Published versions' stored specs, in one query (those that exist)."""
        if not versions:
            return {}
        rows = await session.execute(
            sa.select(JourneyVersionRow.journey_id, JourneyVersionRow.version, JourneyVersionRow.spec).where(
                sa.tuple_(JourneyVersionRow.journey_id, JourneyVersionRow.version).in_(list(versions))
            )
        )
        return {(row.journey_id, row.version): row.spec for row in rows}

    async def add_version(
        self, session: AsyncSession, journey_id: uuid.UUID, version: int, spec: dict[str, Any], at: datetime
    ) -> None:
        """Keep a published version."""
        session.add(JourneyVersionRow(journey_id=journey_id, version=version, spec=spec, publish_time=at))
        await session.flush()

    async def live_journeys(
        self, session: AsyncSession, *, segment_id: uuid.UUID | None = None, event_type: str | None = None
    ) -> list[JourneyRow]:
        """Published journeys entered by a segment or an event type."""
        query = sa.select(JourneyRow).where(JourneyRow.multi_step, JourneyRow.state == "published")
        if segment_id is not None:
            query = query.where(JourneyRow.entry_segment_id == segment_id)
        if event_type is not None:
            query = query.where(JourneyRow.entry_event_type == event_type)
        return list(await session.scalars(query.order_by(JourneyRow.id)))

    async def event_type_named(self, session: AsyncSession, event_type: str) -> bool:
        """Whether a live journey names the event type (so the event is kept)."""
        found = await session.scalar(
            sa.select(JourneyRow.id)
            .where(JourneyRow.state.in_(LIVE), sa.literal(event_type) == sa.any_(JourneyRow.event_types))
            .limit(1)
        )
        return found is not None

    # -- runs ----------------------------------------------------------------------------------------------

    async def lock_entry(
        self, session: AsyncSession, journey_id: uuid.UUID, person_id: uuid.UUID, key: str
    ) -> None:
        """Serialise entries of one person (and key) into one journey until the transaction ends."""
        await session.execute(
            sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
            {"key": f"journey-entry:{journey_id}:{person_id}:{key}"},
        )

    async def has_trigger(
        self, session: AsyncSession, journey_id: uuid.UUID, person_id: uuid.UUID, trigger_id: str
    ) -> bool:
        """Whether this trigger started a run already."""
        found = await session.scalar(
            sa.select(FlowRunRow.id).where(
                FlowRunRow.journey_id == journey_id,
                FlowRunRow.person_id == person_id,
                FlowRunRow.trigger_id == trigger_id,
            )
        )
        return found is not None

    async def earlier_runs(
        self, session: AsyncSession, journey_id: uuid.UUID, person_id: uuid.UUID, key: str | None
    ) -> list[tuple[datetime, str]]:
        """(start time, state) of the person's runs of the journey (of the key, when given), newest first."""
        query = sa.select(FlowRunRow.start_time, FlowRunRow.state).where(
            FlowRunRow.journey_id == journey_id, FlowRunRow.person_id == person_id
        )
        if key is not None:
            query = query.where(FlowRunRow.key == key)
        rows = await session.execute(query.order_by(FlowRunRow.start_time.desc()))
        return [(row.start_time, row.state) for row in rows]

    async def insert_run(self, session: AsyncSession, run: Run) -> None:
        """Record a new run."""
        session.add(
            FlowRunRow(
                id=run.id,
                journey_id=run.journey_id,
                version=run.version,
                person_id=run.person_id,
                key=run.key,
                trigger_id=run.trigger_id,
                state=run.state,
                current_step=run.current_step,
                due_at=run.due_at,
                visits=run.visits,
                data=run.data,
                start_time=run.start_time,
            )
        )
        await session.flush()

    async def runs_to_step(
        self, session: AsyncSession, run_ids: Sequence[uuid.UUID]
    ) -> list[tuple[Run, JourneyRow | None]]:
        """Runs with their journeys, in one query, the runs locked to the transaction's end (in id order, as
        every other locker of several runs takes them)."""
        rows = await session.execute(
            sa.select(FlowRunRow, JourneyRow)
            .outerjoin(JourneyRow, JourneyRow.id == FlowRunRow.journey_id)
            .where(FlowRunRow.id.in_(list(run_ids)))
            .order_by(FlowRunRow.id)
            .with_for_update(of=FlowRunRow)
        )
        return [(_run(run), journey) for run, journey in rows]

    async def save_runs(self, session: AsyncSession, runs: Sequence[Run]) -> None:
        """Store runs' new positions, in one statement."""
        if not runs:
            return
        await session.execute(
            _SAVE_RUNS,
            {
                "ids": [run.id for run in runs],
                "versions": [run.version for run in runs],
                "states": [run.state for run in runs],
                "current_steps": [run.current_step for run in runs],
                "due_ats": [run.due_at for run in runs],
                "visits": [json_text(run.visits) for run in runs],
                "data": [json_text(run.data) for run in runs],
                "end_times": [run.end_time for run in runs],
                "end_reasons": [run.end_reason for run in runs],
            },
        )

    async def add_steps(self, session: AsyncSession, records: Sequence[StepRecord]) -> None:
        """Record steps runs took, in the order given (each run's after the ones it took before), in one
        statement."""
        if not records:
            return
        ords: list[int] = []
        seen: dict[uuid.UUID, int] = {}
        for record in records:
            seen[record.run_id] = seen.get(record.run_id, 0) + 1
            ords.append(seen[record.run_id])
        await session.execute(
            _ADD_STEPS,
            {
                "run_ids": [r.run_id for r in records],
                "ords": ords,
                "step_ids": [r.step_id for r in records],
                "kinds": [r.kind for r in records],
                "ats": [r.at for r in records],
                "outcomes": [r.outcome for r in records],
                "details": [r.detail for r in records],
                "next_steps": [r.next_step for r in records],
            },
        )

    async def active_runs(
        self,
        session: AsyncSession,
        *,
        person_id: uuid.UUID | None = None,
        journey_id: uuid.UUID | None = None,
        lock: bool = False,
    ) -> list[Run]:
        """Runs still going, of a person or of a journey (locked, when asked)."""
        query = sa.select(FlowRunRow).where(FlowRunRow.state == "active")
        if person_id is not None:
            query = query.where(FlowRunRow.person_id == person_id)
        if journey_id is not None:
            query = query.where(FlowRunRow.journey_id == journey_id)
        if lock:
            query = query.with_for_update()
        return [_run(row) for row in await session.scalars(query.order_by(FlowRunRow.id))]

    async def person_runs(
        self,
        session: AsyncSession,
        person_id: uuid.UUID,
        *,
        journey_id: uuid.UUID | None,
        before: uuid.UUID | None,
        limit: int,
    ) -> list[tuple[Run, list[FlowRunStepRow]]]:
        """A person's runs, newest first (before an id, for paging), each with its steps in order."""
        query = sa.select(FlowRunRow).where(FlowRunRow.person_id == person_id)
        if journey_id is not None:
            query = query.where(FlowRunRow.journey_id == journey_id)
        if before is not None:
            query = query.where(FlowRunRow.id < before)
        runs = [_run(row) for row in await session.scalars(query.order_by(FlowRunRow.id.desc()).limit(limit))]
        if not runs:
            return []
        steps: dict[uuid.UUID, list[FlowRunStepRow]] = {run.id: [] for run in runs}
        for step in await session.scalars(
            sa.select(FlowRunStepRow)
            .where(FlowRunStepRow.run_id.in_(list(steps)))
            .order_by(FlowRunStepRow.run_id, FlowRunStepRow.seq)
        ):
            steps[step.run_id].append(step)
        return [(run, steps[run.id]) for run in runs]

    async def forget_persons(self, session: AsyncSession, person_ids: Sequence[uuid.UUID]) -> None:
        """Erase everything held about the persons (their runs, with the steps, events and traits)."""
        ids = list(person_ids)
        await session.execute(sa.delete(FlowRunRow).where(FlowRunRow.person_id.in_(ids)))
        await session.execute(sa.delete(PersonEventRow).where(PersonEventRow.person_id.in_(ids)))
        await session.execute(sa.delete(PersonTraitsRow).where(PersonTraitsRow.person_id.in_(ids)))

    async def merge_persons(
        self, session: AsyncSession, survivor_id: uuid.UUID, merged_ids: Sequence[uuid.UUID]
    ) -> None:
        """The merged persons' runs and events become the survivor's."""
        ids = [m for m in merged_ids if m != survivor_id]
        if ids:
            await session.execute(
                sa.update(FlowRunRow).where(FlowRunRow.person_id.in_(ids)).values(person_id=survivor_id)
            )
            await session.execute(
                sa.update(PersonEventRow)
                .where(PersonEventRow.person_id.in_(ids))
                .values(person_id=survivor_id)
            )

    # -- profile read models -------------------------------------------------------------------------------

    async def keep_event(
        self,
        session: AsyncSession,
        *,
        event_id: str,
        person_id: uuid.UUID,
        event_type: str,
        at: datetime,
        properties: dict[str, Any],
    ) -> None:
        """Keep a tracked event (once per id), and drop the person's events older than any window reaches."""
        await session.execute(
            insert(PersonEventRow)
            .values(
                event_id=event_id, person_id=person_id, type=event_type, occurred_at=at, properties=properties
            )
            .on_conflict_do_nothing(index_elements=[PersonEventRow.event_id])
        )
        await session.execute(
            sa.delete(PersonEventRow).where(
                PersonEventRow.person_id == person_id, PersonEventRow.occurred_at < at - EVENT_RETENTION
            )
        )

    async def event_since(
        self,
        session: AsyncSession,
        person_id: uuid.UUID,
        event_type: str,
        since: datetime,
        key: tuple[str, str] | None,
    ) -> bool:
        """Whether the person has an event of the type since an instant (with a property equal to a key)."""
        query = sa.select(PersonEventRow.event_id).where(
            PersonEventRow.person_id == person_id,
            PersonEventRow.type == event_type,
            PersonEventRow.occurred_at >= since,
        )
        if key is not None:
            query = query.where(PersonEventRow.properties[key[0]].astext == key[1])
        return (await session.scalar(query.limit(1))) is not None

    async def set_traits(
        self, session: AsyncSession, person_id: uuid.UUID, traits: dict[str, Any], as_of: datetime
    ) -> None:
        """Keep a person's traits as announced (newest wins)."""
        statement = insert(PersonTraitsRow).values(person_id=person_id, traits=traits, as_of=as_of)
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=[PersonTraitsRow.person_id],
                set_={"traits": statement.excluded.traits, "as_of": statement.excluded.as_of},
                where=PersonTraitsRow.as_of <= statement.excluded.as_of,
            )
        )

    async def traits(self, session: AsyncSession, person_id: uuid.UUID) -> dict[str, Any]:
        """A person's traits as last announced ({} when none were)."""
        found = await session.scalar(
            sa.select(PersonTraitsRow.traits).where(PersonTraitsRow.person_id == person_id)
        )
        return dict(found or {})

    async def is_member(self, session: AsyncSession, person_id: uuid.UUID, segment_id: uuid.UUID) -> bool:
        """Whether decisioning's read model has the person in the segment."""
        found = await session.scalar(
            sa.select(MembershipRow.is_member).where(
                MembershipRow.person_id == person_id, MembershipRow.segment_id == segment_id
            )
        )
        return bool(found)

    async def members(
        self, session: AsyncSession, segment_id: uuid.UUID, *, after: uuid.UUID | None, limit: int
    ) -> list[uuid.UUID]:
        """Members of a segment as decisioning knows them, in id order after an id."""
        query = sa.select(MembershipRow.person_id).where(
            MembershipRow.segment_id == segment_id, MembershipRow.is_member
        )
        if after is not None:
            query = query.where(MembershipRow.person_id > after)
        return list(await session.scalars(query.order_by(MembershipRow.person_id).limit(limit)))

    async def run_by_trigger(
        self, session: AsyncSession, journey_id: uuid.UUID, person_id: uuid.UUID, trigger_id: str
    ) -> Run | None:
        """The run a trigger started, if any."""
        row = (
            await session.scalars(
                sa.select(FlowRunRow).where(
                    FlowRunRow.journey_id == journey_id,
                    FlowRunRow.person_id == person_id,
                    FlowRunRow.trigger_id == trigger_id,
                )
            )
        ).first()
        return _run(row) if row is not None else None
