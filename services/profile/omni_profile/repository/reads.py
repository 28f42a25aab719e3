"""The 360 view in one statement: the profile row with its traits, consents, segments and recent events.

GetProfile is the call centre's screen and must answer in milliseconds, so everything it shows comes back in
one round trip, each part aggregated to JSON by PostgreSQL from its own index (traits and consents by their
primary keys, segments by theirs, recent events by events_timeline).

GetProfile runs it through ProfileReader, on a small asyncpg pool of its own with the statement prepared
once per connection: through a SQLAlchemy session the same read costs about three times the CPU
(session, autocommit handling, result rows), which at hundreds of reads a second is most of a core. Reads
inside a write transaction (the profile SetTraits answers with) use read_profile on the session.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from omni_kit.db import RANDOM_PAGE_COST
from omni_profile.domain import CartLine, Consent, Event, SegmentMembership, Trait
from omni_profile.repository.events import event_from_json
from omni_profile.repository.profiles import cart_from_json

_RECENT = (
    "SELECT * FROM events AS r WHERE r.person_id = p.person_id "
    "ORDER BY r.occurred_at DESC, r.id DESC, r.source DESC LIMIT greatest(CAST(:limit AS integer), 0)"
)
_READ_SQL = (
    "SELECT p.person_id, p.merged_into, p.erased_at IS NOT NULL AS erased, p.event_count, p.cart, p.computed, "
    "(SELECT coalesce(jsonb_agg(jsonb_build_array(t.name, t.value, t.source, t.updated_at)), '[]'::jsonb) "
    " FROM traits AS t WHERE t.person_id = p.person_id) AS traits, "
    "(SELECT coalesce(jsonb_agg(jsonb_build_array(c.channel, c.purpose, c.state, c.source, c.double_opt_in, "
    "  c.updated_at) ORDER BY c.channel, c.purpose), '[]'::jsonb) "
    " FROM consents AS c WHERE c.person_id = p.person_id) AS consents, "
    "(SELECT coalesce(jsonb_agg(jsonb_build_array(s.segment_id, s.segment_name, s.changed_at) "
    "  ORDER BY s.segment_name, s.segment_id), '[]'::jsonb) "
    " FROM segment_memberships AS s WHERE s.person_id = p.person_id AND s.member) AS segments, "
    "(SELECT coalesce(jsonb_agg(jsonb_build_array(e.source, e.id, e.type, e.channel, e.occurred_at, "
    "  e.received_at, CASE WHEN e.wire IS NULL THEN e.identifiers END, "
    "  CASE WHEN e.wire IS NULL THEN e.properties END, CASE WHEN e.wire IS NULL THEN e.cart_item END) "
    "  ORDER BY e.occurred_at DESC, e.id DESC, e.source DESC), '[]'::jsonb) "
    f" FROM ({_RECENT}) AS e) AS recent, "
    "(SELECT array_agg(e.wire ORDER BY e.occurred_at DESC, e.id DESC, e.source DESC) "
    f" FROM ({_RECENT}) AS e) AS recent_wire "
    "FROM profiles AS p WHERE p.person_id = :id"
)
_READ = sa.text(_READ_SQL)
_READ_ASYNCPG = _READ_SQL.replace(":id", "$1").replace("CAST(:limit AS integer)", "$2::integer")


@dataclass
class ProfileRead:
    """What the 360 view statement returns for one profile row."""

    person_id: uuid.UUID
    merged_into: uuid.UUID | None
    erased: bool
    event_count: int
    cart: dict[str, CartLine]
    computed: dict[str, Any]
    traits: dict[str, Trait]
    consents: list[Consent]
    segments: list[SegmentMembership]
    recent_events: list[Event]


async def read_profile(session: AsyncSession, person_id: uuid.UUID, recent: int) -> ProfileRead | None:
    """A profile row with everything the 360 view shows, and its `recent` newest events; None if no row."""
    row = (await session.execute(_READ, {"id": person_id, "limit": recent})).first()
    return None if row is None else _profile_read(row._mapping)


class ProfileReader:
    """The 360 view's statement on its own asyncpg pool (see the module's docstring)."""

    def __init__(self, database_url: str, *, size: int, statement_timeout_ms: int) -> None:
        self._dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._size = size
        self._timeout_ms = statement_timeout_ms
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        """Connect the pool."""
        self._pool = await asyncpg.create_pool(
            self._dsn,
            # Every connection opened at start and kept: one opened in a burst of reads (connect, codecs,
            # the statement's first planning) held up the reads queued behind it for tens of milliseconds.
            min_size=self._size,
            max_size=self._size,
            init=_init_connection,
            reset=_nothing_to_reset,
            server_settings={
                "application_name": "omni-profile-reads",
                "statement_timeout": str(self._timeout_ms),
                "random_page_cost": RANDOM_PAGE_COST,
                # This pool runs one statement, whose parts are each best read by walking an index in order
                # (the newest events by events_timeline, stopping after `recent`); before a fresh table has
                # statistics the planner would rather collect all of a person's events and sort them.
                "enable_bitmapscan": "off",
                # Planning the statement costs more than running it; its one plan fits every person.
                "plan_cache_mode": "force_generic_plan",
            },
        )

    async def close(self) -> None:
        """Close the pool."""
        if self._pool is not None:
            await self._pool.close()

    async def read_profile(self, person_id: uuid.UUID, recent: int) -> ProfileRead | None:
        """As read_profile, outside any transaction (one statement sees one snapshot)."""
        assert self._pool is not None, "open() first"
        async with self._pool.acquire() as connection:
            row = await connection.fetchrow(_READ_ASYNCPG, person_id, recent)
        return None if row is None else _profile_read(row)


async def _nothing_to_reset(connection: asyncpg.Connection) -> None:
    """The pool's connections run the one read and change no session state (no SET, LISTEN, advisory lock
    or cursor): the reset statement asyncpg runs by default on every release would cost each read a second
    round trip. (An open transaction is still rolled back by the pool.)"""


async def _init_connection(connection: asyncpg.Connection) -> None:
    # JSONB comes back decoded, as through SQLAlchemy (binary format: a version byte, then the text).
    await connection.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=lambda value: b"\x01" + orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS),
        decoder=lambda data: orjson.loads(data[1:]),
        format="binary",
    )
    # Prepared (and its generic plan made) now, by reading nobody, rather than by the first real read.
    await connection.fetchrow(_READ_ASYNCPG, uuid.UUID(int=0), 0)


def _profile_read(row: Mapping[Any, Any]) -> ProfileRead:
    at = datetime.fromisoformat
    person_id = row["person_id"]
    return ProfileRead(
        person_id=person_id,
        merged_into=row["merged_into"],
        erased=row["erased"],
        event_count=int(row["event_count"]),
        cart=cart_from_json(row["cart"]),
        computed=row["computed"],
        traits={
            name: Trait(name, value, source, at(updated)) for name, value, source, updated in row["traits"]
        },
        consents=[
            Consent(
                channel=channel,
                state=state,
                source=source,
                updated_at=at(updated),
                purpose=purpose,
                double_opt_in=double_opt_in,
            )
            for channel, purpose, state, source, double_opt_in, updated in row["consents"]
        ],
        segments=[SegmentMembership(sid, name, at(changed)) for sid, name, changed in row["segments"]],
        recent_events=[
            event_from_json(person_id, item, encoded)
            for item, encoded in zip(
                row["recent"], row["recent_wire"] or [None] * len(row["recent"]), strict=True
            )
        ],
    )
