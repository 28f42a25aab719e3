"""All of profile's SQL. Functions take the caller's session; the caller owns the transaction."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from omni_profile.domain import CartLine, Consent, Event, Identifier, Trait
from omni_profile.models import (
    CartLineRow,
    ConsentChangeRow,
    ConsentRow,
    EventRow,
    ProfileRow,
    TraitRow,
)
from omni_profile.paging import TimelinePosition

profiles = cast(sa.Table, ProfileRow.__table__)
events = cast(sa.Table, EventRow.__table__)
traits = cast(sa.Table, TraitRow.__table__)
cart_lines = cast(sa.Table, CartLineRow.__table__)
consents = cast(sa.Table, ConsentRow.__table__)
consent_history = cast(sa.Table, ConsentChangeRow.__table__)


# -- profiles ---------------------------------------------------------------------------------------------


async def lock_profiles(
    session: AsyncSession, person_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, uuid.UUID | None]:
    """Create missing profile rows and lock them all, in id order; return each one's merged_into.

    The row lock serialises every write to a person (tracking, cart, merges), so a merge cannot slip between
    reading where a person's events go and writing them.
    """
    ids = sorted(set(person_ids))
    if not ids:
        return {}
    statement = (
        insert(profiles)
        .values([{"person_id": pid} for pid in ids])
        .on_conflict_do_update(index_elements=[profiles.c.person_id], set_={"updated_at": sa.func.now()})
        .returning(profiles.c.person_id, profiles.c.merged_into)
    )
    rows = (await session.execute(statement)).all()
    return {row.person_id: row.merged_into for row in rows}


async def profile_state(session: AsyncSession, person_id: uuid.UUID) -> tuple[int, uuid.UUID | None] | None:
    """A profile row's event count and merged_into, or None if there is no row."""
    row = (
        await session.execute(
            sa.select(profiles.c.event_count, profiles.c.merged_into).where(profiles.c.person_id == person_id)
        )
    ).first()
    return None if row is None else (int(row.event_count), row.merged_into)


async def add_event_counts(session: AsyncSession, counts: Mapping[uuid.UUID, int]) -> None:
    """Add to the event counts of some persons (one statement)."""
    if not counts:
        return
    await session.execute(
        sa.text(
            "UPDATE profiles AS p SET event_count = p.event_count + c.n, updated_at = now() "
            "FROM unnest(CAST(:ids AS uuid[]), CAST(:ns AS bigint[])) AS c(id, n) WHERE p.person_id = c.id"
        ),
        {"ids": list(counts), "ns": list(counts.values())},
    )


async def mark_merged(session: AsyncSession, merged: Sequence[uuid.UUID], survivor: uuid.UUID) -> int:
    """Point merged persons (and persons merged into them before) at the survivor; return their event count."""
    moved = await session.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(profiles.c.event_count), 0)).where(
            profiles.c.person_id.in_(merged)
        )
    )
    await session.execute(
        profiles.update()
        .where(profiles.c.person_id.in_(merged))
        .values(merged_into=survivor, event_count=0, updated_at=sa.func.now())
    )
    await session.execute(
        profiles.update()
        .where(profiles.c.merged_into.in_(merged))
        .values(merged_into=survivor, updated_at=sa.func.now())
    )
    return int(moved or 0)


# -- events -----------------------------------------------------------------------------------------------


def _event_values(event: Event) -> dict[str, Any]:
    line = event.cart_item
    return {
        "id": event.id,
        "person_id": event.person_id,
        "type": event.type,
        "channel": event.channel,
        "occurred_at": event.occurred_at,
        "received_at": event.received_at,
        "identifiers": [{"type": i.type, "value": i.value} for i in event.identifiers],
        "properties": event.properties,
        "cart_item": None if line is None else _line_json(line),
    }


def _line_json(line: CartLine) -> dict[str, Any]:
    return {
        "product_id": line.product_id,
        "quantity": line.quantity,
        "name": line.name,
        "unit_price_minor": line.unit_price_minor,
        "currency_code": line.currency_code,
    }


def _event_from_row(row: Any) -> Event:
    item = row.cart_item
    return Event(
        id=row.id,
        type=row.type,
        channel=row.channel,
        occurred_at=row.occurred_at,
        received_at=row.received_at,
        identifiers=[Identifier(type=i["type"], value=i["value"]) for i in row.identifiers],
        properties=dict(row.properties),
        cart_item=None if item is None else CartLine(**item),
        person_id=row.person_id,
    )


async def recorded_events(session: AsyncSession, event_ids: Collection[str]) -> dict[str, uuid.UUID]:
    """The person each of these event ids was recorded for, for the ids already recorded."""
    if not event_ids:
        return {}
    rows = await session.execute(
        sa.select(events.c.id, events.c.person_id).where(events.c.id.in_(list(event_ids)))
    )
    return {row.id: row.person_id for row in rows}


async def insert_events(session: AsyncSession, new_events: Sequence[Event]) -> set[str]:
    """Insert events, skipping ids already recorded; return the ids that were inserted."""
    if not new_events:
        return set()
    statement = insert(events).on_conflict_do_nothing(index_elements=[events.c.id]).returning(events.c.id)
    result = await session.execute(statement, [_event_values(e) for e in new_events])
    return set(result.scalars().all())


async def timeline(
    session: AsyncSession, person_id: uuid.UUID, limit: int, before: TimelinePosition | None = None
) -> list[Event]:
    """A person's events newest first, strictly older than `before` when given."""
    query = sa.select(events).where(events.c.person_id == person_id)
    if before is not None:
        query = query.where(
            sa.tuple_(events.c.occurred_at, events.c.id) < sa.tuple_(before.occurred_at, before.event_id)
        )
    query = query.order_by(events.c.occurred_at.desc(), events.c.id.desc()).limit(limit)
    return [_event_from_row(row) for row in await session.execute(query)]


async def move_events(session: AsyncSession, merged: Sequence[uuid.UUID], survivor: uuid.UUID) -> int:
    """Move the merged persons' events to the survivor; return how many moved."""
    result = await session.execute(
        events.update().where(events.c.person_id.in_(merged)).values(person_id=survivor)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# -- traits -----------------------------------------------------------------------------------------------


async def load_traits(
    session: AsyncSession, person_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, dict[str, Trait]]:
    """The traits of some persons, by person and name."""
    result: dict[uuid.UUID, dict[str, Trait]] = {pid: {} for pid in person_ids}
    if not person_ids:
        return result
    rows = await session.execute(sa.select(traits).where(traits.c.person_id.in_(list(person_ids))))
    for row in rows:
        result[row.person_id][row.name] = Trait(row.name, row.value, row.source, row.updated_at)
    return result


async def write_traits(
    session: AsyncSession, person_id: uuid.UUID, upserts: Sequence[Trait], deletes: Collection[str]
) -> None:
    """Set and remove traits of one person."""
    if deletes:
        await session.execute(
            traits.delete().where(traits.c.person_id == person_id, traits.c.name.in_(list(deletes)))
        )
    if upserts:
        statement = insert(traits)
        statement = statement.on_conflict_do_update(
            index_elements=[traits.c.person_id, traits.c.name],
            set_={
                "value": statement.excluded.value,
                "source": statement.excluded.source,
                "updated_at": statement.excluded.updated_at,
            },
        )
        await session.execute(
            statement,
            [
                {
                    "person_id": person_id,
                    "name": t.name,
                    "value": t.value,
                    "source": t.source,
                    "updated_at": t.updated_at,
                }
                for t in upserts
            ],
        )


async def delete_traits(session: AsyncSession, person_ids: Sequence[uuid.UUID]) -> None:
    """Remove every trait of some persons."""
    await session.execute(traits.delete().where(traits.c.person_id.in_(person_ids)))


# -- cart -------------------------------------------------------------------------------------------------


async def load_carts(
    session: AsyncSession, person_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, dict[str, CartLine]]:
    """The carts of some persons: their lines by product id."""
    result: dict[uuid.UUID, dict[str, CartLine]] = {pid: {} for pid in person_ids}
    if not person_ids:
        return result
    rows = await session.execute(sa.select(cart_lines).where(cart_lines.c.person_id.in_(list(person_ids))))
    for row in rows:
        result[row.person_id][row.product_id] = CartLine(
            product_id=row.product_id,
            quantity=int(row.quantity),
            name=row.name,
            unit_price_minor=row.unit_price_minor,
            currency_code=row.currency_code,
        )
    return result


async def write_cart(
    session: AsyncSession,
    person_id: uuid.UUID,
    upserts: Sequence[CartLine],
    deletes: Collection[str],
    now: datetime,
) -> None:
    """Write changed cart lines of one person and delete the lines gone."""
    if deletes:
        await session.execute(
            cart_lines.delete().where(
                cart_lines.c.person_id == person_id, cart_lines.c.product_id.in_(list(deletes))
            )
        )
    if upserts:
        statement = insert(cart_lines)
        statement = statement.on_conflict_do_update(
            index_elements=[cart_lines.c.person_id, cart_lines.c.product_id],
            set_={
                column: statement.excluded[column]
                for column in ("name", "quantity", "unit_price_minor", "currency_code", "updated_at")
            },
        )
        await session.execute(
            statement,
            [{"person_id": person_id, **_line_json(line), "updated_at": now} for line in upserts],
        )


async def delete_carts(session: AsyncSession, person_ids: Sequence[uuid.UUID]) -> None:
    """Remove the carts of some persons."""
    await session.execute(cart_lines.delete().where(cart_lines.c.person_id.in_(person_ids)))


# -- consent ----------------------------------------------------------------------------------------------


async def load_consents(
    session: AsyncSession, person_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, list[Consent]]:
    """The current consents of some persons, ordered by channel."""
    result: dict[uuid.UUID, list[Consent]] = {pid: [] for pid in person_ids}
    if not person_ids:
        return result
    rows = await session.execute(
        sa.select(consents).where(consents.c.person_id.in_(list(person_ids))).order_by(consents.c.channel)
    )
    for row in rows:
        result[row.person_id].append(Consent(row.channel, row.state, row.source, row.updated_at))
    return result


async def write_consent(session: AsyncSession, person_id: uuid.UUID, consent: Consent) -> None:
    """Set one person's consent for a channel."""
    statement = insert(consents).values(
        person_id=person_id,
        channel=consent.channel,
        state=consent.state,
        source=consent.source,
        updated_at=consent.updated_at,
    )
    statement = statement.on_conflict_do_update(
        index_elements=[consents.c.person_id, consents.c.channel],
        set_={
            "state": statement.excluded.state,
            "source": statement.excluded.source,
            "updated_at": statement.excluded.updated_at,
        },
    )
    await session.execute(statement)


async def record_consent_change(
    session: AsyncSession, change_id: uuid.UUID, person_id: uuid.UUID, consent: Consent
) -> None:
    """Append a consent change to the history."""
    await session.execute(
        consent_history.insert().values(
            id=change_id,
            person_id=person_id,
            channel=consent.channel,
            state=consent.state,
            source=consent.source,
            recorded_at=consent.updated_at,
        )
    )


async def consent_changes(session: AsyncSession, person_id: uuid.UUID) -> list[Consent]:
    """A person's consent history, oldest first."""
    rows = await session.execute(
        sa.select(consent_history)
        .where(consent_history.c.person_id == person_id)
        .order_by(consent_history.c.recorded_at, consent_history.c.id)
    )
    return [Consent(row.channel, row.state, row.source, row.recorded_at) for row in rows]


async def move_consents(session: AsyncSession, merged: Sequence[uuid.UUID], survivor: uuid.UUID) -> None:
    """Drop the merged persons' current consents and move their history to the survivor."""
    await session.execute(consents.delete().where(consents.c.person_id.in_(merged)))
    await session.execute(
        consent_history.update().where(consent_history.c.person_id.in_(merged)).values(person_id=survivor)
    )
