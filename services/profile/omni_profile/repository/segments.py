"""SQL of the segment memberships read model, fed by segmentation's enter/exit events."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from omni_profile.domain import SegmentMembership


async def record_membership(
    session: AsyncSession,
    person_id: uuid.UUID,
    segment_id: str,
    segment_name: str,
    *,
    member: bool,
    changed_at: datetime,
) -> bool:
    """Record an enter (member) or exit unless a later announcement was applied already; True if applied."""
    applied = await session.scalar(
        sa.text(
            "INSERT INTO segment_memberships (person_id, segment_id, segment_name, member, changed_at) "
            "VALUES (:person, :segment, :name, :member, :at) "
            "ON CONFLICT (person_id, segment_id) DO UPDATE SET segment_name = excluded.segment_name, "
            "member = excluded.member, changed_at = excluded.changed_at "
            "WHERE segment_memberships.changed_at <= excluded.changed_at RETURNING 1"
        ),
        {
            "person": person_id,
            "segment": segment_id,
            "name": segment_name,
            "member": member,
            "at": changed_at,
        },
    )
    return applied is not None


async def memberships(session: AsyncSession, person_id: uuid.UUID) -> list[SegmentMembership]:
    """The segments a person is in, by name."""
    rows = await session.execute(
        sa.text(
            "SELECT segment_id, segment_name, changed_at FROM segment_memberships "
            "WHERE person_id = :person AND member ORDER BY segment_name, segment_id"
        ),
        {"person": person_id},
    )
    return [SegmentMembership(row.segment_id, row.segment_name, row.changed_at) for row in rows]


async def delete_memberships(session: AsyncSession, person_ids: Sequence[uuid.UUID]) -> None:
    """Forget the memberships of some persons (merged away or erased; segmentation re-announces survivors)."""
    await session.execute(
        sa.text("DELETE FROM segment_memberships WHERE person_id = ANY(CAST(:ids AS uuid[]))"),
        {"ids": list(person_ids)},
    )
