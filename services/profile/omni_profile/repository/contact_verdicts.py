"""SQL of contact verdict announcements: their versions."""

from __future__ import annotations

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
