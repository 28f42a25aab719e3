"""The decision log as off-policy evaluation reads it: the decisions at a touchpoint and their rewards."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession


@dataclass(frozen=True)
class LoggedRow:
    """One logged decision: its id and its candidates as stored ([offer_id, score, rank, propensity,
    rank_propensity, chosen] each)."""

    decision_id: str
    candidates: list[list[Any]]


@dataclass(frozen=True)
class Rewards:
    """What was recorded of one chosen offer of a decision."""

    clicked: bool
    converted: bool
    value: float


_WINDOW = " AND ($2::timestamptz IS NULL OR d.create_time >= $2) AND ($3::timestamptz IS NULL OR d.create_time < $3)"


class EvaluationRepository:
    """Reads of the decision log and outcomes."""

    async def logged(
        self,
        session: AsyncSession,
        *,
        touchpoint: str,
        start: datetime | None,
        end: datetime | None,
        limit: int,
    ) -> tuple[list[LoggedRow], dict[tuple[str, str], Rewards]]:
        """Up to `limit` decisions at the touchpoint in the window (oldest first), and the rewards of their
        offers keyed by (decision id, offer id)."""
        connection = await session.connection()
        driver: Any = (await connection.get_raw_connection()).driver_connection
        rows = await driver.fetch(
            "SELECT d.id::text, d.candidates::text FROM decisions AS d WHERE d.touchpoint = $1"
            + _WINDOW
            + " ORDER BY d.create_time, d.id LIMIT $4",
            touchpoint,
            start,
            end,
            limit,
        )
        outcomes = await driver.fetch(
            "SELECT o.decision_id::text, o.offer_id::text, bool_or(o.type = 2), bool_or(o.type = 3),"
            " coalesce(sum(o.value) FILTER (WHERE o.type = 3), 0)"
            " FROM outcomes AS o JOIN decisions AS d ON d.id = o.decision_id WHERE d.touchpoint = $1"
            + _WINDOW
            + " GROUP BY 1, 2",
            touchpoint,
            start,
            end,
        )
        return (
            [LoggedRow(row[0], json.loads(row[1])) for row in rows],
            {(row[0], row[1]): Rewards(bool(row[2]), bool(row[3]), float(row[4])) for row in outcomes},
        )
