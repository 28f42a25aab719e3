"""SQL of the profiles table: the per-person lock and state row (cart, computed-trait state, tombstone)."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from omni_kit.db import json_text
from omni_profile.domain import CartLine


@dataclass
class ProfileState:
    """A profile row (locked, or read to plan a batch): where it leads, and the state events change."""

    person_id: uuid.UUID
    merged_into: uuid.UUID | None
    erased: bool
    event_count: int
    cart_document: dict[str, Any]
    """The cart as stored; `cart` reads it when first asked for (most batches touch no cart)."""
    cart_as_of: datetime | None
    computed: dict[str, Any]
    version: int | None = None
    """The row version read (PostgreSQL's xmin: every update writes a new one); None for no row."""

    @classmethod
    def empty(cls, person_id: uuid.UUID) -> ProfileState:
        """The state of a person with no profile row yet."""
        return cls(person_id, None, False, 0, {}, None, {})

    @functools.cached_property
    def cart(self) -> dict[str, CartLine]:
        """The cart: lines by product id."""
        return cart_from_json(self.cart_document)


@dataclass(frozen=True)
class ProfileUpdate:
    """What a batch changes on one profile row; None leaves a part as it is."""

    person_id: uuid.UUID
    added_events: int = 0
    computed: dict[str, Any] | None = None
    cart: dict[str, CartLine] | None = None
    cart_as_of: datetime | None = None


@dataclass(frozen=True)
class NewState:
    """A profile's counts, cart and computed state as a merge, an unmerge or a recompute leaves them."""

    person_id: uuid.UUID
    event_count: int
    cart: dict[str, CartLine]
    cart_as_of: datetime | None
    computed: dict[str, Any]


def cart_from_json(document: dict[str, Any]) -> dict[str, CartLine]:
    """A cart from its stored form: lines by product id."""
    return {
        product_id: CartLine(
            product_id=product_id,
            quantity=int(line["quantity"]),
            name=line.get("name") or "",
            unit_price_minor=line.get("unit_price_minor"),
            currency_code=line.get("currency_code"),
        )
        for product_id, line in document.items()
    }


def cart_to_json(cart: dict[str, CartLine]) -> str:
    """A cart in its stored form, as JSON text."""
    return json_text(
        {
            product_id: {
                "quantity": line.quantity,
                "name": line.name,
                "unit_price_minor": line.unit_price_minor,
                "currency_code": line.currency_code,
            }
            for product_id, line in cart.items()
        }
    )


# Missing profile rows are created first (a statement of its own, so the lock below, with a snapshot taken
# after it, sees rows others created meanwhile). Then the persons asked for and the survivors they were
# merged into (as last committed) are locked together, in id order, so that two batches never lock in
# different orders; merges keep merged_into one hop deep. A locking read, not an upsert that rewrites each
# row: the batch rewrites the rows it changes once, at the end.
_CREATE = sa.text(
    "INSERT INTO profiles (person_id) SELECT id FROM unnest(CAST(:ids AS uuid[])) AS t(id) ORDER BY id "
    "ON CONFLICT (person_id) DO NOTHING"
)
_LOCK = sa.text(
    "SELECT p.person_id, p.merged_into, p.erased_at IS NOT NULL AS erased, p.event_count, p.cart, "
    "p.cart_as_of, p.computed FROM profiles AS p WHERE p.person_id IN ("
    " SELECT w.id FROM unnest(CAST(:ids AS uuid[])) AS w(id)"
    " UNION SELECT m.merged_into FROM unnest(CAST(:ids AS uuid[])) AS u(id)"
    " JOIN profiles AS m ON m.person_id = u.id WHERE m.merged_into IS NOT NULL"
    ") ORDER BY p.person_id FOR UPDATE OF p"
)


async def lock_profiles(
    session: AsyncSession, person_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, ProfileState]:
    """Create missing profile rows and lock them all, with the survivors they lead to, in id order; return
    their state (the survivors' too).

    The row lock serialises every write to a person (tracking, traits, merges, erasure), so a merge cannot
    slip between reading where a person's events go and writing them. Rows are locked in id order, so two
    batches sharing persons do not deadlock (unless a merge commits between the two, which the callers'
    retries cover).
    """
    ids = sorted(set(person_ids))
    if not ids:
        return {}
    await session.execute(_CREATE, {"ids": ids})
    rows = await session.execute(_LOCK, {"ids": ids})
    return {
        row.person_id: ProfileState(
            person_id=row.person_id,
            merged_into=row.merged_into,
            erased=row.erased,
            event_count=int(row.event_count),
            cart_document=row.cart,
            cart_as_of=row.cart_as_of,
            computed=row.computed,
        )
        for row in rows
    }


_UPDATE = sa.text(
    "UPDATE profiles AS p SET event_count = p.event_count + u.added, "
    "computed = coalesce(u.computed, p.computed), cart = coalesce(u.cart, p.cart), "
    "cart_as_of = coalesce(u.cart_as_of, p.cart_as_of), updated_at = now() "
    "FROM unnest(CAST(:ids AS uuid[]), CAST(:added AS bigint[]), CAST(:computed AS jsonb[]), "
    "CAST(:carts AS jsonb[]), CAST(:cart_as_of AS timestamptz[])) AS u(id, added, computed, cart, cart_as_of) "
    "WHERE p.person_id = u.id"
)


async def update_profiles(session: AsyncSession, updates: Sequence[ProfileUpdate]) -> None:
    """Write what a batch changed on its profiles (one statement)."""
    if not updates:
        return
    await session.execute(
        _UPDATE,
        {
            "ids": [u.person_id for u in updates],
            "added": [u.added_events for u in updates],
            "computed": [None if u.computed is None else json_text(u.computed) for u in updates],
            "carts": [None if u.cart is None else cart_to_json(u.cart) for u in updates],
            "cart_as_of": [u.cart_as_of for u in updates],
        },
    )


async def set_state(
    session: AsyncSession,
    person_id: uuid.UUID,
    *,
    event_count: int,
    cart: dict[str, CartLine],
    cart_as_of: datetime | None,
    computed: dict[str, Any],
) -> None:
    """Replace a profile's counts, cart and computed state (after a merge, unmerge or recompute)."""
    await set_states(session, [NewState(person_id, event_count, cart, cart_as_of, computed)])


async def set_states(session: AsyncSession, states: Sequence[NewState]) -> None:
    """Replace profiles' counts, carts and computed states (one statement)."""
    if not states:
        return
    await session.execute(
        sa.text(
            "UPDATE profiles SET event_count = s.n, cart = s.cart, cart_as_of = s.as_of, "
            "computed = s.computed, updated_at = now() "
            "FROM unnest(CAST(:ids AS uuid[]), CAST(:counts AS bigint[]), CAST(:carts AS jsonb[]), "
            "CAST(:as_of AS timestamptz[]), CAST(:computed AS jsonb[])) AS s(id, n, cart, as_of, computed) "
            "WHERE profiles.person_id = s.id"
        ),
        {
            "ids": [s.person_id for s in states],
            "counts": [s.event_count for s in states],
            "carts": [cart_to_json(s.cart) for s in states],
            "as_of": [s.cart_as_of for s in states],
            "computed": [json_text(s.computed) for s in states],
        },
    )


async def set_computed(session: AsyncSession, states: dict[uuid.UUID, dict[str, Any]]) -> None:
    """Replace the computed state of some profiles (one statement)."""
    if not states:
        return
    await session.execute(
        sa.text(
            "UPDATE profiles AS p SET computed = u.computed, updated_at = now() "
            "FROM unnest(CAST(:ids AS uuid[]), CAST(:docs AS jsonb[])) AS u(id, computed) WHERE p.person_id = u.id"
        ),
        {"ids": list(states), "docs": [json_text(s) for s in states.values()]},
    )


@dataclass(frozen=True)
class Whereabouts:
    """Where persons' events go, read without locking."""

    leads_to: dict[uuid.UUID, tuple[uuid.UUID, bool]]
    """For each person with a profile row: the live person it leads to, and whether that was erased."""
    states: dict[uuid.UUID, ProfileState]
    """The state of each live person led to (not erased), with its row version."""


# c is the row the person leads to (its own when not merged). Left-joined, as before this read carried
# state: a survivor without a row of its own still receives the events, and gets a row when locked.
_WHERE = sa.text(
    "SELECT p.person_id, coalesce(p.merged_into, p.person_id) AS current, "
    "coalesce(c.erased_at, p.erased_at) IS NOT NULL AS erased, c.person_id IS NOT NULL AS has_row, "
    "c.xmin::text::bigint AS version, c.event_count, c.cart, c.cart_as_of, c.computed "
    "FROM profiles AS p LEFT JOIN profiles AS c ON c.person_id = coalesce(p.merged_into, p.person_id) "
    "WHERE p.person_id = ANY(CAST(:ids AS uuid[]))"
)


async def where_persons_are(session: AsyncSession, person_ids: Iterable[uuid.UUID]) -> Whereabouts:
    """Without locking: the live person each of these leads to, whether it was erased, and its state, for
    those with a profile row (merges keep merged_into one hop deep)."""
    ids = list(set(person_ids))
    if not ids:
        return Whereabouts({}, {})
    leads_to: dict[uuid.UUID, tuple[uuid.UUID, bool]] = {}
    states: dict[uuid.UUID, ProfileState] = {}
    for row in await session.execute(_WHERE, {"ids": ids}):
        leads_to[row.person_id] = (row.current, row.erased)
        if row.has_row and not row.erased and row.current not in states:
            states[row.current] = _live_state(row.current, row)
    return Whereabouts(leads_to, states)


@dataclass(frozen=True)
class Locked:
    """Profile rows locked to write what was planned from an unlocked read (lock_as_read)."""

    moved: set[uuid.UUID]
    """Persons merged away or erased since they were read."""
    changed: dict[uuid.UUID, ProfileState]
    """The locked state of the persons written since they were read: their plan is stale."""


# Unchanged since read: the same row version, or, for a person read without a row, a row still empty.
_STALE = (
    "CASE WHEN e.version IS NULL THEN p.event_count <> 0 OR p.cart_as_of IS NOT NULL "
    "OR p.cart <> '{}'::jsonb OR p.computed <> '{}'::jsonb ELSE p.xmin::text::bigint <> e.version END"
)
_LOCK_AS_READ = sa.text(
    "SELECT p.person_id, p.merged_into, p.erased_at IS NOT NULL AS erased, "
    f"{_STALE} AS stale, p.xmin::text::bigint AS version, p.event_count, p.cart_as_of, "
    f"CASE WHEN {_STALE} THEN p.cart END AS cart, CASE WHEN {_STALE} THEN p.computed END AS computed "
    "FROM profiles AS p JOIN unnest(CAST(:ids AS uuid[]), CAST(:versions AS bigint[])) AS e(id, version) "
    "ON p.person_id = e.id ORDER BY p.person_id FOR UPDATE OF p"
)


async def lock_as_read(session: AsyncSession, versions: Mapping[uuid.UUID, int | None]) -> Locked:
    """Create missing profile rows and lock these, in id order; say which changed since they were read.

    `versions` maps each person to the row version it was read at (None: read without a row). Only the
    rows written since come back with their state, so the usual batch, planned from an unlocked read,
    holds its locks for its writes and its commit only.
    """
    if not versions:
        return Locked(set(), {})
    ids = sorted(versions)
    await session.execute(_CREATE, {"ids": ids})
    rows = await session.execute(_LOCK_AS_READ, {"ids": ids, "versions": [versions[i] for i in ids]})
    moved: set[uuid.UUID] = set()
    changed: dict[uuid.UUID, ProfileState] = {}
    for row in rows:
        if row.merged_into is not None or row.erased:
            moved.add(row.person_id)
        elif row.stale:
            changed[row.person_id] = _live_state(row.person_id, row)
    return Locked(moved, changed)


def _live_state(person_id: uuid.UUID, row: Any) -> ProfileState:
    """The state of a live (not merged, not erased) person from a row with its state and version."""
    return ProfileState(
        person_id=person_id,
        merged_into=None,
        erased=False,
        event_count=int(row.event_count),
        cart_document=row.cart,
        cart_as_of=row.cart_as_of,
        computed=row.computed,
        version=row.version,
    )


async def held_persons(session: AsyncSession, person_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these ids profile holds a row for (live, merged into another, or erased)."""
    ids = list(set(person_ids))
    if not ids:
        return set()
    rows = await session.execute(
        sa.text("SELECT person_id FROM profiles WHERE person_id = ANY(CAST(:ids AS uuid[]))"), {"ids": ids}
    )
    return set(rows.scalars())


async def profile_state(
    session: AsyncSession, person_id: uuid.UUID
) -> tuple[int, uuid.UUID | None, bool] | None:
    """A profile row's event count, merged_into and whether it is erased; None if there is no row."""
    row = (
        await session.execute(
            sa.text(
                "SELECT event_count, merged_into, erased_at IS NOT NULL AS erased FROM profiles WHERE person_id = :id"
            ),
            {"id": person_id},
        )
    ).first()
    return None if row is None else (int(row.event_count), row.merged_into, row.erased)


async def clear_states(session: AsyncSession, person_ids: Sequence[uuid.UUID]) -> None:
    """Empty the counts, carts and computed states of these profiles: persons merged away (their events went
    to the survivor) or forgotten. Where their ids lead is omni_kit.lineage's to write."""
    await session.execute(
        sa.text(
            "UPDATE profiles SET event_count = 0, cart = '{}'::jsonb, cart_as_of = NULL, "
            "computed = '{}'::jsonb, updated_at = now() WHERE person_id = ANY(CAST(:ids AS uuid[]))"
        ),
        {"ids": list(person_ids)},
    )


async def live_persons_after(
    session: AsyncSession, after: uuid.UUID | None, created_before: datetime, limit: int
) -> list[uuid.UUID]:
    """Live (not merged, not erased) persons with events whose profile was created before a time, in id
    order after a cursor: a backfill's next slice."""
    rows = await session.execute(
        sa.text(
            "SELECT person_id FROM profiles WHERE merged_into IS NULL AND erased_at IS NULL AND event_count > 0 "
            "AND created_at <= :before AND (CAST(:after AS uuid) IS NULL OR person_id > CAST(:after AS uuid)) "
            "ORDER BY person_id LIMIT :limit"
        ),
        {"after": after, "before": created_before, "limit": limit},
    )
    return [row.person_id for row in rows]
