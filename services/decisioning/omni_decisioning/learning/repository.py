"""The learning end's SQL: outcomes, outcome counts, learning policies, imported and logged decisions."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from omni_decisioning.entities import LoggedCandidate
from omni_decisioning.learning import decision_log
from omni_decisioning.learning.policy import CLICK, CONVERSION, IMPRESSION, Counts, LearningPolicy


@dataclass(frozen=True)
class StoredOutcome:
    """An outcome as recorded."""

    outcome_id: str
    decision_id: uuid.UUID
    offer_id: uuid.UUID
    type: int
    value: float
    occur_time: datetime


@dataclass(frozen=True)
class StoredDecision:
    """A logged decision."""

    id: uuid.UUID
    person_id: uuid.UUID
    touchpoint: str
    candidates: list[LoggedCandidate]
    offer_ids: list[uuid.UUID]
    policy: str
    model_version: int
    create_time: datetime


@dataclass(frozen=True)
class ImportedDecision:
    """A decision made elsewhere, to be added to the log."""

    id: uuid.UUID
    person_id: uuid.UUID
    touchpoint: str
    candidates: tuple[LoggedCandidate, ...]
    policy: str
    model_version: int
    create_time: datetime


class LearningRepository:
    """Queries of the learning end; each runs in the caller's session and transaction."""

    async def learning_version(self, session: AsyncSession) -> int:
        """The learning policies' version."""
        return int(await session.scalar(sa.text("SELECT version FROM learning_state")) or 0)

    async def load(
        self, session: AsyncSession
    ) -> tuple[int, dict[str, LearningPolicy], dict[tuple[uuid.UUID, str], Counts]]:
        """The version, every learning policy, and the outcome counts at the touchpoints of enabled ones."""
        version = await self.learning_version(session)
        policies = {
            row.touchpoint: LearningPolicy.from_json(row.touchpoint, row.policy)
            for row in await session.execute(sa.text("SELECT touchpoint, policy FROM learning_policies"))
        }
        learning = [touchpoint for touchpoint, policy in policies.items() if policy.enabled]
        counts: dict[tuple[uuid.UUID, str], Counts] = {}
        if learning:
            rows = await session.execute(
                sa.text(
                    "SELECT offer_id, touchpoint, impressions, clicks, conversions FROM outcome_counts"
                    " WHERE touchpoint = ANY(:touchpoints)"
                ),
                {"touchpoints": learning},
            )
            for row in rows:
                counts[(row.offer_id, row.touchpoint)] = Counts(row.impressions, row.clicks, row.conversions)
        return version, policies, counts

    async def set_policy(self, session: AsyncSession, policy: LearningPolicy, now: datetime) -> None:
        """Store a touchpoint's policy (replacing its last) and raise the learning version."""
        await session.execute(
            sa.text(
                "INSERT INTO learning_policies (touchpoint, policy, update_time)"
                " VALUES (:touchpoint, CAST(:policy AS jsonb), :now) ON CONFLICT (touchpoint)"
                " DO UPDATE SET policy = excluded.policy, update_time = excluded.update_time"
            ),
            {"touchpoint": policy.touchpoint, "policy": json.dumps(policy.to_json()), "now": now},
        )
        await session.execute(sa.text("UPDATE learning_state SET version = version + 1"))

    async def decision(self, session: AsyncSession, decision_id: uuid.UUID) -> StoredDecision | None:
        """A logged decision."""
        row = (
            await session.execute(
                sa.text(
                    "SELECT id, person_id, touchpoint, candidates, offer_ids, policy, model_version,"
                    " create_time FROM decisions WHERE id = :id"
                ),
                {"id": decision_id},
            )
        ).first()
        if row is None:
            return None
        return StoredDecision(
            id=row.id,
            person_id=row.person_id,
            touchpoint=row.touchpoint,
            candidates=decision_log.from_json(row.candidates),
            offer_ids=list(row.offer_ids),
            policy=row.policy,
            model_version=row.model_version,
            create_time=row.create_time,
        )

    async def insert_outcome(self, session: AsyncSession, outcome: StoredOutcome, now: datetime) -> bool:
        """Record an outcome; False (nothing written) when its id was recorded before."""
        inserted = await session.scalar(
            sa.text(
                "INSERT INTO outcomes (outcome_id, decision_id, offer_id, type, value, occur_time, create_time)"
                " VALUES (:outcome_id, :decision_id, :offer_id, :type, :value, :occur_time, :now)"
                " ON CONFLICT (outcome_id) DO NOTHING RETURNING outcome_id"
            ),
            {**outcome.__dict__, "now": now},
        )
        return inserted is not None

    async def outcome(self, session: AsyncSession, outcome_id: str) -> StoredOutcome | None:
        """An outcome recorded before."""
        row = (
            await session.execute(
                sa.text(
                    "SELECT outcome_id, decision_id, offer_id, type, value, occur_time FROM outcomes"
                    " WHERE outcome_id = :id"
                ),
                {"id": outcome_id},
            )
        ).first()
        return StoredOutcome(*row) if row is not None else None

    async def outcomes_of(self, session: AsyncSession, decision_id: uuid.UUID) -> list[StoredOutcome]:
        """The outcomes recorded against a decision, oldest first."""
        rows = await session.execute(
            sa.text(
                "SELECT outcome_id, decision_id, offer_id, type, value, occur_time FROM outcomes"
                " WHERE decision_id = :id ORDER BY occur_time, outcome_id"
            ),
            {"id": decision_id},
        )
        return [StoredOutcome(*row) for row in rows]

    async def count_outcome(
        self, session: AsyncSession, *, offer_id: uuid.UUID, touchpoint: str, type_: int, value: float
    ) -> None:
        """Add an outcome to its offer's counts at the touchpoint (what the posterior is made of)."""
        await session.execute(
            sa.text(
                "INSERT INTO outcome_counts AS c (offer_id, touchpoint, impressions, clicks, conversions, value)"
                " VALUES (:offer_id, :touchpoint, :impressions, :clicks, :conversions, :value)"
                " ON CONFLICT (offer_id, touchpoint) DO UPDATE SET"
                " impressions = c.impressions + excluded.impressions, clicks = c.clicks + excluded.clicks,"
                " conversions = c.conversions + excluded.conversions, value = c.value + excluded.value"
            ),
            {
                "offer_id": offer_id,
                "touchpoint": touchpoint,
                "impressions": int(type_ == IMPRESSION),
                "clicks": int(type_ == CLICK),
                "conversions": int(type_ == CONVERSION),
                "value": value if type_ == CONVERSION else 0.0,
            },
        )

    async def import_decisions(self, session: AsyncSession, decisions: Sequence[ImportedDecision]) -> int:
        """Add decisions to the log; an id already there is left as it is. The number added."""
        connection = await session.connection()
        driver: Any = (await connection.get_raw_connection()).driver_connection
        return int(
            await driver.fetchval(
                "WITH added AS (INSERT INTO decisions"
                " (id, person_id, touchpoint, channel, context, offer_ids, create_time, candidates, policy,"
                " model_version)"
                " SELECT d.id, d.person_id, d.touchpoint, 0, '{}'::jsonb, string_to_array(d.offers, ',')::uuid[],"
                " d.create_time, d.candidates, d.policy, d.model_version"
                " FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::timestamptz[], $6::jsonb[],"
                " $7::text[], $8::bigint[])"
                " AS d(id, person_id, touchpoint, offers, create_time, candidates, policy, model_version)"
                " ON CONFLICT (id) DO NOTHING RETURNING 1) SELECT count(*) FROM added",
                [d.id for d in decisions],
                [d.person_id for d in decisions],
                [d.touchpoint for d in decisions],
                [
                    ",".join(str(c.offer_id) for c in sorted(d.candidates, key=lambda c: c.rank) if c.chosen)
                    for d in decisions
                ],
                [d.create_time for d in decisions],
                [decision_log.to_json(d.candidates) for d in decisions],
                [d.policy for d in decisions],
                [d.model_version for d in decisions],
            )
        )
