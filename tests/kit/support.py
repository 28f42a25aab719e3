"""What the event-log tests share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from omni_kit.bus.tables import outbox_table

test_metadata = sa.MetaData()
notes = sa.Table(
    "notes",
    test_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("text", sa.Text, nullable=False),
)
"""A state change for handlers to write, so tests see what was applied and what rolled back."""


async def lose_the_relays_mark(engine: AsyncEngine, publish: Callable[[], Awaitable[int]]) -> int:
    """Run a relay's publish as if the process died after publishing, before its transaction committed:
    the rows it marked (and emptied) are as they were before."""
    async with engine.connect() as connection:
        rows = (await connection.execute(sa.select(outbox_table))).mappings().all()
    published = await publish()
    async with engine.begin() as connection:
        await connection.execute(outbox_table.delete())
        await connection.execute(outbox_table.insert(), [dict(row) for row in rows])
    return published
