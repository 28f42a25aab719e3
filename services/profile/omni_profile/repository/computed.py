"""SQL of computed-trait definitions and their backfill progress."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from omni_profile.computed import Definition

_COLUMNS = (
    "name, kind, event_type, channels, property, window_days, per_channel, currency_code, description, state, "
    "created_at"
)


def _definition(row: Any) -> Definition:
    return Definition(
        name=row.name,
        kind=row.kind,
        event_type=row.event_type,
        channels=frozenset(row.channels),
        property=row.property,
        window_days=int(row.window_days),
        per_channel=row.per_channel,
        currency_code=row.currency_code,
        description=row.description,
        state=row.state,
        created_at=row.created_at,
    )


async def load_definitions(session: AsyncSession) -> list[Definition]:
    """Every computed-trait definition, by name."""
    rows = await session.execute(sa.text(f"SELECT {_COLUMNS} FROM computed_traits ORDER BY name"))
    return [_definition(row) for row in rows]


async def list_definitions(session: AsyncSession, after: str | None, limit: int) -> list[Definition]:
    """A page of definitions by name, after a name."""
    rows = await session.execute(
        sa.text(
            f"SELECT {_COLUMNS} FROM computed_traits WHERE CAST(:after AS text) IS NULL OR name > :after "
            "ORDER BY name LIMIT :limit"
        ),
        {"after": after, "limit": limit},
    )
    return [_definition(row) for row in rows]


async def insert_definition(session: AsyncSession, definition: Definition) -> Definition | None:
    """Store a new definition (backfilling); None when the name is taken."""
    row = (
        await session.execute(
            sa.text(
                "INSERT INTO computed_traits (name, kind, event_type, channels, property, window_days, per_channel, "
                "currency_code, description, state) VALUES (:name, :kind, :event_type, CAST(:channels AS text[]), "
                ":property, :window_days, :per_channel, :currency_code, :description, :state) "
                f"ON CONFLICT (name) DO NOTHING RETURNING {_COLUMNS}"
            ),
            {
                "name": definition.name,
                "kind": definition.kind,
                "event_type": definition.event_type,
                "channels": sorted(definition.channels),
                "property": definition.property,
                "window_days": definition.window_days,
                "per_channel": definition.per_channel,
                "currency_code": definition.currency_code,
                "description": definition.description,
                "state": definition.state,
            },
        )
    ).first()
    return None if row is None else _definition(row)


@dataclass(frozen=True)
class BackfillCursor:
    """Where a definition's backfill got to, locked for its next slice."""

    after: uuid.UUID | None
    """The last person id done (None before the first slice)."""
    applied_from: datetime
    """When every replica applies the definition to new events (created_at plus the grace): profiles created
    later need no backfill."""
    ready: bool
    """Whether that time has come (the database's clock), so the backfill may run."""


async def lock_backfill(session: AsyncSession, name: str, grace_s: float) -> BackfillCursor | None:
    """Lock the definition's row if it is still backfilling and return its cursor; None when it is not (done,
    or no such definition)."""
    row = (
        await session.execute(
            sa.text(
                "SELECT backfill_after, created_at + make_interval(secs => :grace) AS applied_from, "
                "created_at + make_interval(secs => :grace) <= now() AS ready "
                "FROM computed_traits WHERE name = :name AND state = 'backfilling' FOR UPDATE"
            ),
            {"name": name, "grace": grace_s},
        )
    ).first()
    return None if row is None else BackfillCursor(row.backfill_after, row.applied_from, row.ready)


async def advance_backfill(session: AsyncSession, name: str, after: uuid.UUID | None, *, done: bool) -> None:
    """Record how far a backfill got, or that it is done."""
    await session.execute(
        sa.text(
            "UPDATE computed_traits SET backfill_after = :after, "
            "state = CASE WHEN :done THEN 'ready' ELSE state END WHERE name = :name"
        ),
        {"name": name, "after": after, "done": done},
    )
