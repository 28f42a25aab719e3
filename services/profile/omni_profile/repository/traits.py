"""SQL of traits and their history."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from omni_kit.db import json_text
from omni_profile.domain import Trait, TraitChange
from omni_profile.paging import Position

_COMPACT = (",", ":")


def _json(value: Any) -> str | None:
    return None if value is None else json_text(value)


async def load_traits(
    session: AsyncSession, person_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, dict[str, Trait]]:
    """The traits of some persons, by person and name."""
    result: dict[uuid.UUID, dict[str, Trait]] = {pid: {} for pid in person_ids}
    if not person_ids:
        return result
    rows = await session.execute(
        sa.text(
            "SELECT person_id, name, value, source, updated_at FROM traits "
            "WHERE person_id = ANY(CAST(:ids AS uuid[]))"
        ),
        {"ids": list(person_ids)},
    )
    for row in rows:
        result[row.person_id][row.name] = Trait(row.name, row.value, row.source, row.updated_at)
    return result


async def write_traits(
    session: AsyncSession, person_id: uuid.UUID, upserts: Sequence[Trait], deletes: Collection[str]
) -> None:
    """Set and remove traits of one person."""
    if deletes:
        await session.execute(
            sa.text("DELETE FROM traits WHERE person_id = :id AND name = ANY(CAST(:names AS text[]))"),
            {"id": person_id, "names": list(deletes)},
        )
    if upserts:
        await session.execute(
            sa.text(
                "INSERT INTO traits (person_id, name, value, source, updated_at) "
                "SELECT :id, * FROM unnest(CAST(:names AS text[]), CAST(:values AS jsonb[]), "
                "CAST(:sources AS text[]), CAST(:times AS timestamptz[])) "
                "ON CONFLICT (person_id, name) DO UPDATE SET value = excluded.value, source = excluded.source, "
                "updated_at = excluded.updated_at"
            ),
            {
                "id": person_id,
                "names": [t.name for t in upserts],
                "values": [_json(t.value) for t in upserts],
                "sources": [t.source for t in upserts],
                "times": [t.updated_at for t in upserts],
            },
        )


async def delete_traits(session: AsyncSession, person_ids: Sequence[uuid.UUID]) -> None:
    """Remove every trait of some persons."""
    await session.execute(
        sa.text("DELETE FROM traits WHERE person_id = ANY(CAST(:ids AS uuid[]))"), {"ids": list(person_ids)}
    )


async def record_trait_changes(session: AsyncSession, changes: Sequence[TraitChange]) -> None:
    """Append changes to the trait history (one statement)."""
    if not changes:
        return
    await session.execute(
        sa.text(
            "INSERT INTO trait_changes (id, person_id, name, old_value, new_value, source, changed_at) "
            "SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:persons AS uuid[]), CAST(:names AS text[]), "
            "CAST(:olds AS jsonb[]), CAST(:news AS jsonb[]), CAST(:sources AS text[]), "
            "CAST(:times AS timestamptz[]))"
        ),
        {
            "ids": [c.id for c in changes],
            "persons": [c.person_id for c in changes],
            "names": [c.name for c in changes],
            "olds": [_json(c.old_value) for c in changes],
            "news": [_json(c.new_value) for c in changes],
            "sources": [c.source for c in changes],
            "times": [c.changed_at for c in changes],
        },
    )


async def trait_changes(
    session: AsyncSession, person_id: uuid.UUID, name: str | None, limit: int, before: Position | None
) -> list[TraitChange]:
    """A person's trait changes newest first, of one trait or all, strictly older than `before`."""
    where = "person_id = :person"
    params: dict[str, Any] = {"person": person_id, "limit": limit}
    if name:
        where += " AND name = :name"
        params["name"] = name
    if before is not None:
        where += " AND (changed_at, id) < (:t, CAST(:k AS uuid))"
        params |= {"t": before.at, "k": before.key}
    rows = await session.execute(
        sa.text(
            "SELECT id, person_id, name, old_value, new_value, source, changed_at FROM trait_changes "
            f"WHERE {where} ORDER BY changed_at DESC, id DESC LIMIT :limit"
        ),
        params,
    )
    return [
        TraitChange(row.id, row.person_id, row.name, row.old_value, row.new_value, row.source, row.changed_at)
        for row in rows
    ]


async def move_trait_changes(session: AsyncSession, merged: Sequence[uuid.UUID], survivor: uuid.UUID) -> None:
    """Move the merged persons' trait history to the survivor."""
    await move_trait_changes_to(session, dict.fromkeys(merged, survivor))


async def move_trait_changes_to(session: AsyncSession, moves: Mapping[uuid.UUID, uuid.UUID]) -> None:
    """Move each merged person's trait history to its survivor (`moves`: merged → survivor)."""
    if not moves:
        return
    await session.execute(
        sa.text(
            "UPDATE trait_changes SET person_id = m.survivor "
            "FROM unnest(CAST(:merged AS uuid[]), CAST(:survivors AS uuid[])) AS m(merged, survivor) "
            "WHERE trait_changes.person_id = m.merged"
            " AND trait_changes.person_id = ANY(CAST(:merged AS uuid[]))"
        ),
        {"merged": list(moves), "survivors": list(moves.values())},
    )


async def delete_trait_changes(session: AsyncSession, person_ids: Sequence[uuid.UUID]) -> None:
    """Delete the trait history of some persons."""
    await session.execute(
        sa.text("DELETE FROM trait_changes WHERE person_id = ANY(CAST(:ids AS uuid[]))"),
        {"ids": list(person_ids)},
    )
