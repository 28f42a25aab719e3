"""The decision log's candidates: every eligible offer of a decision with its score, rank and propensities,
kept in decisions.candidates as compact arrays ([offer_id, score, rank, propensity, rank_propensity, chosen]),
since one row is written for every decision."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from typing import Any

from omni_decisioning.entities import LoggedCandidate


def to_json(candidates: Iterable[LoggedCandidate]) -> str:
    """The candidates as stored."""
    return json.dumps(
        [
            [
                str(c.offer_id),
                c.score,
                c.rank,
                round(c.propensity, 6),
                round(c.rank_propensity, 6),
                int(c.chosen),
            ]
            for c in candidates
        ],
        separators=(",", ":"),
    )


def from_json(stored: Any) -> list[LoggedCandidate]:
    """The candidates as read back (a JSON text or the decoded list)."""
    rows = json.loads(stored) if isinstance(stored, str | bytes) else stored
    return [
        LoggedCandidate(
            offer_id=uuid.UUID(row[0]),
            score=float(row[1]),
            rank=int(row[2]),
            propensity=float(row[3]),
            rank_propensity=float(row[4]),
            chosen=bool(row[5]),
        )
        for row in rows or []
    ]
