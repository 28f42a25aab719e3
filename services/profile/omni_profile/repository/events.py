"""SQL of the event timeline: recording events once per (source, id), reading and moving timelines."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from omni_kit.db import json_text
from omni_profile.domain import CartLine, Event, Identifier
from omni_profile.paging import TimelinePosition
from omni_profile.wire import stored_properties

_COMPACT = (",", ":")
EVENT_COLUMNS = (
    "source, id, person_id, type, channel, occurred_at, received_at, identifiers, properties, cart_item"
)
# For recomputing: the columns, and the encoding where it holds the properties.
_READ_COLUMNS = f"{EVENT_COLUMNS}, CASE WHEN properties IS NULL THEN wire END AS wire"
# For display: an event with its encoding needs nothing else decoded.
_SHOWN_COLUMNS = (
    "source, id, person_id, type, channel, occurred_at, received_at, wire, "
    "CASE WHEN wire IS NULL THEN identifiers END AS identifiers, "
    "CASE WHEN wire IS NULL THEN properties END AS properties, "
    "CASE WHEN wire IS NULL THEN cart_item END AS cart_item"
)


def line_json(line: CartLine) -> dict[str, Any]:
    """A cart line as stored in an event's cart_item."""
    return {
        "product_id": line.product_id,
        "quantity": line.quantity,
        "name": line.name,
        "unit_price_minor": line.unit_price_minor,
        "currency_code": line.currency_code,
    }


def event_from_row(row: Any) -> Event:
    """An event from a row of the events table (any row with its columns; a row read for display may
    carry the encoding instead of identifiers, properties and cart_item)."""
    item = row.cart_item
    return Event(
        id=row.id,
        type=row.type,
        channel=row.channel,
        occurred_at=row.occurred_at,
        received_at=row.received_at,
        identifiers=[Identifier(type=i["type"], value=i["value"]) for i in row.identifiers or ()],
        properties=_properties(row),
        cart_item=None if item is None else CartLine(**item),
        person_id=row.person_id,
        source=row.source,
        encoded=getattr(row, "wire", None),
    )


def _properties(row: Any) -> dict[str, Any]:
    if row.properties is not None:
        return dict(row.properties)
    encoded = getattr(row, "wire", None)
    return {} if encoded is None else stored_properties(encoded)


def event_from_json(person_id: uuid.UUID, item: list[Any], encoded: bytes | None) -> Event:
    """An event from the JSON array the profile read builds: [source, id, type, channel, occurred_at,
    received_at, identifiers, properties, cart_item], the last three null when it has its encoding."""
    source, id_, type_, channel, occurred_at, received_at, identifiers, properties, cart_item = item
    return Event(
        id=id_,
        type=type_,
        channel=channel,
        occurred_at=datetime.fromisoformat(occurred_at),
        received_at=datetime.fromisoformat(received_at),
        identifiers=[Identifier(type=i["type"], value=i["value"]) for i in identifiers or ()],
        properties=properties or {},
        cart_item=None if cart_item is None else CartLine(**cart_item),
        person_id=person_id,
        source=source,
        encoded=encoded,
    )


_RECORDED = sa.text(
    "SELECT e.source, e.id, e.person_id, e.fingerprint FROM events AS e "
    "JOIN unnest(CAST(:sources AS text[]), CAST(:ids AS text[])) AS k(source, id) "
    "ON e.source = k.source AND e.id = k.id"
)


async def recorded_events(
    session: AsyncSession, keys: Collection[tuple[str, str]]
) -> dict[tuple[str, str], tuple[uuid.UUID, bytes | None]]:
    """For the keys already recorded among these (source, id): the person each was recorded for and its
    fingerprint (None when it was stored without one)."""
    if not keys:
        return {}
    keys = list(keys)
    rows = await session.execute(_RECORDED, {"sources": [k[0] for k in keys], "ids": [k[1] for k in keys]})
    return {(row.source, row.id): (row.person_id, row.fingerprint) for row in rows}


_INSERT = sa.text(
    f"INSERT INTO events ({EVENT_COLUMNS}, wire, origin_person_id, fingerprint) "
    "SELECT * FROM unnest(CAST(:sources AS text[]), CAST(:ids AS text[]), CAST(:persons AS uuid[]), "
    "CAST(:types AS text[]), CAST(:channels AS text[]), CAST(:occurred AS timestamptz[]), "
    "CAST(:received AS timestamptz[]), CAST(:identifiers AS jsonb[]), CAST(:properties AS jsonb[]), "
    "CAST(:cart_items AS jsonb[]), CAST(:wires AS bytea[]), CAST(:origins AS uuid[]), "
    "CAST(:fingerprints AS bytea[])) "
    "ON CONFLICT (source, id) DO NOTHING RETURNING source, id"
)


async def insert_events(session: AsyncSession, new_events: Sequence[Event]) -> set[tuple[str, str]]:
    """Insert events (one statement), skipping keys already recorded; return the keys inserted. Each event's
    `encoded` is stored with it (set by the caller)."""
    if not new_events:
        return set()
    dumps = json_text
    result = await session.execute(
        _INSERT,
        {
            "sources": [e.source for e in new_events],
            "ids": [e.id for e in new_events],
            "persons": [e.person_id for e in new_events],
            "types": [e.type for e in new_events],
            "channels": [e.channel for e in new_events],
            "occurred": [e.occurred_at for e in new_events],
            "received": [e.received_at for e in new_events],
            "identifiers": [
                dumps([{"type": i.type, "value": i.value} for i in e.identifiers]) for e in new_events
            ],
            # Kept in the encoding (every new event has one); JSON only for an event without.
            "properties": [None if e.encoded is not None else dumps(e.properties) for e in new_events],
            "cart_items": [
                None if e.cart_item is None else dumps(line_json(e.cart_item)) for e in new_events
            ],
            "wires": [e.encoded for e in new_events],
            "origins": [e.origin_person_id for e in new_events],
            "fingerprints": [e.fingerprint for e in new_events],
        },
    )
    return {(row.source, row.id) for row in result}


async def timeline(
    session: AsyncSession, person_id: uuid.UUID, limit: int, before: TimelinePosition | None = None
) -> list[Event]:
    """A person's events newest first, strictly older than `before` when given."""
    where = "person_id = :person"
    params: dict[str, Any] = {"person": person_id, "limit": limit}
    if before is not None:
        params |= {"t": before.occurred_at, "i": before.event_id, "s": before.source}
        where += (
            " AND (occurred_at, id, source) < (:t, :i, :s)"
            if before.source is not None
            else " AND (occurred_at, id) < (:t, :i)"
        )
    rows = await session.execute(
        sa.text(
            f"SELECT {_SHOWN_COLUMNS} FROM events WHERE {where} "
            "ORDER BY occurred_at DESC, id DESC, source DESC LIMIT :limit"
        ),
        params,
    )
    return [event_from_row(row) for row in rows]


async def cart_events(
    session: AsyncSession, person_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, list[Event]]:
    """The cart events of some persons since each one's last order, in the order they happened.

    Events before the last order cannot matter: the order empties the cart.
    """
    result: dict[uuid.UUID, list[Event]] = {pid: [] for pid in person_ids}
    if not person_ids:
        return result
    # The literal list is CART_EVENTS, spelled out so that the partial index events_cart applies.
    rows = await session.execute(
        sa.text(
            f"SELECT {_READ_COLUMNS} FROM events AS e WHERE e.person_id = ANY(CAST(:ids AS uuid[])) "
            "AND e.type IN ('cart_item_added', 'cart_item_removed', 'order_completed') "
            "AND e.occurred_at >= coalesce((SELECT max(o.occurred_at) FROM events AS o "
            "  WHERE o.person_id = e.person_id AND o.type = 'order_completed'), '-infinity') "
            "ORDER BY e.person_id, e.occurred_at, e.source, e.id"
        ),
        {"ids": list(person_ids)},
    )
    for row in rows:
        result[row.person_id].append(event_from_row(row))
    return result


async def events_of(
    session: AsyncSession, person_ids: Collection[uuid.UUID], *, event_type: str | None = None
) -> dict[uuid.UUID, list[Event]]:
    """Every event of some persons (of one type, when given), in the order they happened: for recomputing
    computed traits and carts."""
    result: dict[uuid.UUID, list[Event]] = {pid: [] for pid in person_ids}
    if not person_ids:
        return result
    rows = await session.execute(
        sa.text(
            f"SELECT {_READ_COLUMNS} FROM events WHERE person_id = ANY(CAST(:ids AS uuid[])) "
            "AND (CAST(:type AS text) IS NULL OR type = :type) ORDER BY person_id, occurred_at, source, id"
        ),
        {"ids": list(person_ids), "type": event_type},
    )
    for row in rows:
        result[row.person_id].append(event_from_row(row))
    return result


# The join key is repeated as `= ANY(...)` (here and in the other moves of a merge): with the join alone, a
# cached generic plan may hash-join the few merged persons against a sequential scan of the table. Each
# event remembers the person it was on (its first: a chain of merges keeps where it started), so an unmerge
# can give it back whatever it carried.
MOVE_EVENTS = sa.text(
    "WITH moved AS (UPDATE events SET person_id = m.survivor, "
    "origin_person_id = coalesce(events.origin_person_id, events.person_id) "
    "FROM unnest(CAST(:merged AS uuid[]), CAST(:survivors AS uuid[])) AS m(merged, survivor) "
    "WHERE events.person_id = m.merged AND events.person_id = ANY(CAST(:merged AS uuid[])) "
    "RETURNING events.person_id) "
    "SELECT person_id, count(*) AS n FROM moved GROUP BY person_id"
)


async def move_events(session: AsyncSession, merged: Sequence[uuid.UUID], survivor: uuid.UUID) -> int:
    """Move the merged persons' events to the survivor; return how many moved."""
    return sum((await move_events_to(session, dict.fromkeys(merged, survivor))).values())


async def move_events_to(session: AsyncSession, moves: Mapping[uuid.UUID, uuid.UUID]) -> dict[uuid.UUID, int]:
    """Move each merged person's events to its survivor (`moves`: merged → survivor); return how many
    moved to each survivor that received any."""
    if not moves:
        return {}
    rows = await session.execute(MOVE_EVENTS, {"merged": list(moves), "survivors": list(moves.values())})
    return {row.person_id: int(row.n) for row in rows}


_GIVE_BACK = sa.text(
    "UPDATE events AS e SET person_id = :to_person, origin_person_id = nullif(e.origin_person_id, :to_person) "
    "WHERE e.person_id = :from_person AND (e.origin_person_id = ANY(CAST(:origins AS uuid[])) OR EXISTS ("
    " SELECT 1 FROM jsonb_array_elements(e.identifiers) AS i"
    " JOIN unnest(CAST(:types AS text[]), CAST(:values AS text[])) AS k(type, value)"
    " ON lower(i->>'type') = k.type AND CASE WHEN k.type = 'phone'"
    "  THEN regexp_replace(i->>'value', '[^0-9]', '', 'g') = regexp_replace(k.value, '[^0-9]', '', 'g')"
    "  ELSE lower(i->>'value') = lower(k.value) END)) "
    "RETURNING e.id"
)


async def give_back_events(
    session: AsyncSession,
    from_person: uuid.UUID,
    to_person: uuid.UUID,
    origins: Sequence[uuid.UUID],
    identifiers: Sequence[tuple[str, str]],
) -> list[str]:
    """Move to another person (an unmerge's restored one) the events of a person that a merge took from one
    of `origins`, or that carry any of these (type, value) identifiers; return the ids of those moved (each
    once, in no particular order).

    Events keep identifiers as the channel sent them, while identity's are normalised: values are compared
    without case, and phone numbers by their digits. An event back on the person it was taken from forgets
    that origin.
    """
    if not origins and not identifiers:
        return []
    rows = await session.execute(
        _GIVE_BACK,
        {
            "from_person": from_person,
            "to_person": to_person,
            "origins": list(origins),
            "types": [t.lower() for t, _ in identifiers],
            "values": [v for _, v in identifiers],
        },
    )
    return sorted({row.id for row in rows})


async def delete_events(session: AsyncSession, person_ids: Sequence[uuid.UUID]) -> int:
    """Delete every event of some persons; return how many."""
    result = await session.execute(
        sa.text("DELETE FROM events WHERE person_id = ANY(CAST(:ids AS uuid[]))"), {"ids": list(person_ids)}
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def event_count(session: AsyncSession, person_id: uuid.UUID) -> int:
    """How many events a person has (counted, after moves)."""
    return int(
        await session.scalar(sa.text("SELECT count(*) FROM events WHERE person_id = :id"), {"id": person_id})
        or 0
    )
