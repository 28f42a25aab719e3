"""SQL of consent (per channel and purpose) and its history."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from omni_profile.domain import Consent
from omni_profile.paging import Position

_CONSENT_COLUMNS = "channel, purpose, state, source, double_opt_in"


def _consent(row: Any, at: str = "updated_at") -> Consent:
    return Consent(
        channel=row.channel,
        state=row.state,
        source=row.source,
        updated_at=getattr(row, at),
        purpose=row.purpose,
        double_opt_in=row.double_opt_in,
    )


async def load_consents(
    session: AsyncSession, person_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, list[Consent]]:
    """The current consents of some persons, ordered by channel and purpose."""
    result: dict[uuid.UUID, list[Consent]] = {pid: [] for pid in person_ids}
    if not person_ids:
        return result
    rows = await session.execute(
        sa.text(
            f"SELECT person_id, {_CONSENT_COLUMNS}, updated_at FROM consents "
            "WHERE person_id = ANY(CAST(:ids AS uuid[])) ORDER BY channel, purpose"
        ),
        {"ids": list(person_ids)},
    )
    for row in rows:
        result[row.person_id].append(_consent(row))
    return result


async def write_consent(session: AsyncSession, person_id: uuid.UUID, consent: Consent) -> None:
    """Set one person's consent for a channel and purpose."""
    await session.execute(
        sa.text(
            f"INSERT INTO consents (person_id, {_CONSENT_COLUMNS}, updated_at) "
            "VALUES (:person, :channel, :purpose, :state, :source, :double_opt_in, :at) "
            "ON CONFLICT (person_id, channel, purpose) DO UPDATE SET state = excluded.state, "
            "source = excluded.source, double_opt_in = excluded.double_opt_in, updated_at = excluded.updated_at"
        ),
        _params(person_id, consent),
    )


def _params(person_id: uuid.UUID, consent: Consent) -> dict[str, Any]:
    return {
        "person": person_id,
        "channel": consent.channel,
        "purpose": consent.purpose,
        "state": consent.state,
        "source": consent.source,
        "double_opt_in": consent.double_opt_in,
        "at": consent.updated_at,
    }


async def record_consent_change(
    session: AsyncSession, change_id: uuid.UUID, person_id: uuid.UUID, consent: Consent
) -> None:
    """Append a consent change to the history."""
    await session.execute(
        sa.text(
            f"INSERT INTO consent_history (id, person_id, {_CONSENT_COLUMNS}, recorded_at) "
            "VALUES (:id, :person, :channel, :purpose, :state, :source, :double_opt_in, :at)"
        ),
        {"id": change_id, **_params(person_id, consent)},
    )


async def consent_changes(
    session: AsyncSession, person_id: uuid.UUID, limit: int, before: Position | None = None
) -> list[tuple[uuid.UUID, Consent]]:
    """A person's consent history newest first, strictly older than `before`; each with its change id."""
    where = "person_id = :person"
    params: dict[str, Any] = {"person": person_id, "limit": limit}
    if before is not None:
        where += " AND (recorded_at, id) < (:t, CAST(:k AS uuid))"
        params |= {"t": before.at, "k": before.key}
    rows = await session.execute(
        sa.text(
            f"SELECT id, {_CONSENT_COLUMNS}, recorded_at FROM consent_history WHERE {where} "
            "ORDER BY recorded_at DESC, id DESC LIMIT :limit"
        ),
        params,
    )
    return [(row.id, _consent(row, "recorded_at")) for row in rows]


async def move_consents(session: AsyncSession, merged: Sequence[uuid.UUID], survivor: uuid.UUID) -> None:
    """Drop the merged persons' current consents and move their history to the survivor."""
    await move_consents_to(session, dict.fromkeys(merged, survivor))


async def move_consents_to(session: AsyncSession, moves: Mapping[uuid.UUID, uuid.UUID]) -> None:
    """Drop each merged person's current consents and move its history to its survivor (`moves`: merged →
    survivor)."""
    if not moves:
        return
    params = {"merged": list(moves), "survivors": list(moves.values())}
    await session.execute(
        sa.text("DELETE FROM consents WHERE person_id = ANY(CAST(:merged AS uuid[]))"),
        {"merged": list(moves)},
    )
    await session.execute(
        sa.text(
            "UPDATE consent_history SET person_id = m.survivor "
            "FROM unnest(CAST(:merged AS uuid[]), CAST(:survivors AS uuid[])) AS m(merged, survivor) "
            "WHERE consent_history.person_id = m.merged"
            " AND consent_history.person_id = ANY(CAST(:merged AS uuid[]))"
        ),
        params,
    )


async def delete_consents(session: AsyncSession, person_ids: Sequence[uuid.UUID]) -> None:
    """Delete the consents and consent history of some persons."""
    params = {"ids": list(person_ids)}
    await session.execute(sa.text("DELETE FROM consents WHERE person_id = ANY(CAST(:ids AS uuid[]))"), params)
    await session.execute(
        sa.text("DELETE FROM consent_history WHERE person_id = ANY(CAST(:ids AS uuid[]))"), params
    )
