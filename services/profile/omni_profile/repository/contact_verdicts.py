"""SQL of contact verdict announcements: their versions and the republish queue."""

from __future__ import annotations

import uuid
from collections.abc import Collection

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession


async def next_verdict_versions(session: AsyncSession, count: int) -> list[int]:
    """`count` fresh versions, each higher than every version taken before."""
    if count <= 0:
        return []
    rows = await session.scalars(
        sa.text("SELECT nextval('contact_verdict_versions') FROM generate_series(1, :n)"), {"n": count}
    )
    return sorted(rows)


async def claim_due_verdicts(session: AsyncSession, limit: int) -> list[uuid.UUID]:
    """Lock up to `limit` persons of the republish queue that no other transaction holds."""
    rows = await session.scalars(
        sa.text(
            "SELECT person_id FROM contact_verdicts_due ORDER BY person_id LIMIT :limit FOR UPDATE SKIP LOCKED"
        ),
        {"limit": limit},
    )
    return list(rows)


async def delete_due_verdicts(session: AsyncSession, person_ids: Collection[uuid.UUID]) -> None:
    """Take persons off the republish queue."""
    await session.execute(
        sa.text("DELETE FROM contact_verdicts_due WHERE person_id = ANY(CAST(:ids AS uuid[]))"),
        {"ids": list(person_ids)},
    )
