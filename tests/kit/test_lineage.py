"""Following identity's lineage (omni_kit.lineage) on a real PostgreSQL, and through a real consumer on NATS:
chains of merges, unmerges of a person merged into one merged later and of a survivor merged later, erasures
of merged persons with tombstones, the hooks a service registers, and the migration helpers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from google.protobuf.message import Message
from nats.js import JetStreamContext
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from omni.events.v1 import envelope_pb2
from omni.identity.v1 import events_pb2
from omni_kit.bus import EventConsumer, bus_metadata, events_stream, make_envelope, subject_for
from omni_kit.db import create_engine, session_factory
from omni_kit.lineage import (
    Erasure,
    Lineage,
    LineageTable,
    Merge,
    Unmerge,
    Whereabouts,
    aliases_from_lineage,
    create_lineage_table,
    lineage_from_aliases,
    lineage_metadata,
    person_lineage,
)

from ..migrations import schema_differences

# A service's own per-person row holding its lineage among other columns, as profile's does.
own_metadata = sa.MetaData()
profiles = sa.Table(
    "profiles",
    own_metadata,
    sa.Column("person_id", sa.Uuid, primary_key=True),
    sa.Column("merged_into", sa.Uuid, nullable=True),
    sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("event_count", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)
OWN_ROWS = LineageTable(
    profiles, profiles.c.person_id, profiles.c.merged_into, profiles.c.erased_at, profiles.c.updated_at
)


@pytest.fixture
async def engine(make_database: Callable[..., str]) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(make_database("lineage"), application_name="omni-test-lineage")
    async with engine.begin() as connection:
        await connection.run_sync(bus_metadata.create_all)
        await connection.run_sync(lineage_metadata.create_all)
        await connection.run_sync(own_metadata.create_all)
    yield engine
    await engine.dispose()


class Effects:
    """Hooks that remember what they were asked, and where the persons led when they were asked."""

    def __init__(self, table: LineageTable) -> None:
        self.table = table
        self.calls: list[Merge | Unmerge | Erasure] = []
        self.seen: list[dict[uuid.UUID, Whereabouts]] = []

    async def merged(self, session: AsyncSession, merges: Any) -> None:
        self.calls.extend(merges)
        ids = {p for m in merges for p in (m.survivor_id, *m.merged_ids)}
        self.seen.append(await self.table.whereabouts(session, ids))

    async def unmerged(self, session: AsyncSession, unmerge: Unmerge) -> None:
        self.calls.append(unmerge)

    async def erased(self, session: AsyncSession, erasure: Erasure) -> None:
        self.calls.append(erasure)

    def lineage(self, **options: Any) -> Lineage:
        return Lineage(
            self.table, on_merge=self.merged, on_unmerge=self.unmerged, on_erase=self.erased, **options
        )


def ids(count: int) -> list[uuid.UUID]:
    return sorted(uuid.uuid4() for _ in range(count))


def _envelope(payload: Message, event_type: str) -> envelope_pb2.Envelope:
    return make_envelope(payload, event_type=event_type, producer="identity")


def merged(survivor: uuid.UUID, *persons: uuid.UUID | str) -> envelope_pb2.Envelope:
    return _envelope(
        events_pb2.PersonsMergedEvent(
            survivor_person_id=str(survivor), merged_person_ids=[str(p) for p in persons]
        ),
        "identity.persons_merged",
    )


def unmerged(survivor: uuid.UUID, restored: uuid.UUID, *also: uuid.UUID) -> envelope_pb2.Envelope:
    return _envelope(
        events_pb2.PersonsUnmergedEvent(
            survivor_person_id=str(survivor),
            restored_person_id=str(restored),
            restored_merged_person_ids=[str(p) for p in also],
        ),
        "identity.persons_unmerged",
    )


def forgotten(person: uuid.UUID, *persons: uuid.UUID | str) -> envelope_pb2.Envelope:
    return _envelope(
        events_pb2.PersonForgottenEvent(
            person_id=str(person), forgotten_person_ids=[str(person), *(str(p) for p in persons)]
        ),
        "identity.person_forgotten",
    )


async def apply(engine: AsyncEngine, lineage: Lineage, *envelopes: envelope_pb2.Envelope) -> None:
    """Apply envelopes in one transaction, as the consumer does (finish before the commit)."""
    async with session_factory(engine)() as session, session.begin():
        for envelope in envelopes:
            await lineage(session, envelope)
        await lineage.finish(session)


async def leads(engine: AsyncEngine, table: LineageTable, *persons: uuid.UUID) -> list[uuid.UUID | None]:
    """Where each person leads now; None for a forgotten one."""
    async with session_factory(engine)() as session:
        found = await table.whereabouts(session, persons)
    return [None if found[p].forgotten else found[p].person_id for p in persons]


@pytest.mark.parametrize("table", ["person_lineage", "own rows"])
async def test_merges_flatten_chains_and_unmerges_split_them_where_identity_says(
    engine: AsyncEngine, table: str
) -> None:
    lineage_table = OWN_ROWS if table == "own rows" else Lineage().table
    effects = Effects(lineage_table)
    lineage = effects.lineage()
    first, second, root, stranger = ids(4)
    await apply(engine, lineage, merged(second, first))
    await apply(engine, lineage, merged(root, second))
    assert await leads(engine, lineage_table, first, second, root, stranger) == [root, root, root, stranger]

    # A survivor merged later is split out with the persons merged into it before.
    await apply(engine, lineage, unmerged(root, second, first))
    assert await leads(engine, lineage_table, first, second, root) == [second, second, root]
    await apply(engine, lineage, merged(root, second))
    # A person merged into one merged later: identity names the live root, where it is held here too.
    await apply(engine, lineage, unmerged(root, first))
    assert await leads(engine, lineage_table, first, second, root) == [first, root, root]

    assert effects.calls == [
        Merge(second, (first,), effects.calls[0].event_id),
        Merge(root, (second,), effects.calls[1].event_id),
        Unmerge(root, second, (first,), (), effects.calls[2].event_id),
        Merge(root, (second,), effects.calls[3].event_id),
        Unmerge(root, first, (), (), effects.calls[4].event_id),
    ]


async def test_hooks_get_what_each_merge_really_merges_here_before_it_is_recorded(
    engine: AsyncEngine,
) -> None:
    effects = Effects(Lineage().table)
    lineage = effects.lineage(gather_merges=True)
    a, b, c, d, gone, survivor_gone = ids(6)
    await apply(engine, lineage, forgotten(gone), forgotten(survivor_gone))
    effects.calls.clear()

    await apply(
        engine,
        lineage,
        merged(b, a),
        merged(b, a),  # the same merge again: nothing left to merge
        merged(c, b, gone),  # a forgotten person is not merged
        merged(b, d),  # b was merged into c meanwhile: d follows it there
        merged(survivor_gone, c),  # into a forgotten person: nothing
    )

    # One call for the transaction's run, in order, before any of it was recorded.
    assert [(m.survivor_id, m.merged_ids) for m in effects.calls if isinstance(m, Merge)] == [
        (b, (a,)),
        (c, (b,)),
        (c, (d,)),
    ]
    assert len(effects.seen) == 1 and all(w.person_id == p for p, w in effects.seen[0].items())
    assert await leads(engine, effects.table, a, b, c, d, gone) == [c, c, c, c, None]


async def test_an_erasure_tombstones_every_id_leading_to_the_person(engine: AsyncEngine) -> None:
    effects = Effects(Lineage().table)
    lineage = effects.lineage()
    person, merged_person, missed, bystander, later = ids(5)
    await apply(engine, lineage, merged(person, merged_person), merged(person, missed))
    effects.calls.clear()

    # The event misses one id that leads to the person here: it is forgotten with it.
    await apply(engine, lineage, forgotten(person, merged_person, "not-a-uuid"))

    [erasure] = effects.calls
    assert erasure == Erasure(person, tuple(sorted([person, merged_person, missed])), erasure.event_id)
    assert await leads(engine, effects.table, person, merged_person, missed, bystander) == [
        None,
        None,
        None,
        bystander,
    ]
    # Nothing brings them back: a merge or unmerge naming them changes nothing.
    effects.calls.clear()
    await apply(
        engine, lineage, merged(person, later), merged(later, missed), unmerged(person, merged_person)
    )
    assert effects.calls == []
    assert await leads(engine, effects.table, later, missed, merged_person) == [later, None, None]


async def test_an_unmerge_of_a_person_not_merged_here_changes_nothing(engine: AsyncEngine) -> None:
    effects = Effects(Lineage().table)
    lineage = effects.lineage()
    survivor, restored, other = ids(3)
    await apply(engine, lineage, unmerged(survivor, restored, other))
    assert effects.calls == []
    assert await leads(engine, effects.table, restored, other) == [restored, other]


async def test_malformed_events_are_skipped(engine: AsyncEngine) -> None:
    effects = Effects(Lineage().table)
    lineage = effects.lineage()
    survivor, person = ids(2)
    await apply(engine, lineage, merged(survivor, person, "not-a-uuid"), unmerged(survivor, person))
    await apply(
        engine,
        lineage,
        _envelope(events_pb2.PersonsUnmergedEvent(restored_person_id="x"), "identity.persons_unmerged"),
        _envelope(events_pb2.PersonForgottenEvent(forgotten_person_ids=["x"]), "identity.person_forgotten"),
    )
    assert effects.calls == []
    assert await leads(engine, effects.table, person) == [person]


async def test_the_services_own_rows_keep_their_other_columns(engine: AsyncEngine) -> None:
    survivor, person, never_seen = ids(3)
    async with engine.begin() as connection:
        await connection.execute(profiles.insert().values(person_id=person, event_count=7))
    lineage = Lineage(OWN_ROWS)
    await apply(engine, lineage, merged(survivor, person), forgotten(never_seen))
    async with engine.connect() as connection:
        rows = {
            row.person_id: (row.merged_into, row.erased_at is not None, row.event_count)
            for row in await connection.execute(sa.select(profiles))
        }
    assert rows == {person: (survivor, False, 7), never_seen: (None, True, 0)}


async def test_through_a_consumer_each_event_applies_once_in_order(
    engine: AsyncEngine, js: tuple[JetStreamContext, str]
) -> None:
    context, namespace = js
    effects = Effects(Lineage().table)
    lineage = effects.lineage(gather_merges=True)
    consumer = EventConsumer(
        context,
        session_factory(engine),
        durable="test-lineage",
        stream=events_stream(namespace),
        subjects=[subject_for(t, namespace) for t in lineage.event_types],
        handler=lineage,
    )
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    first, second, root = ids(3)
    events = [merged(second, first), merged(root, second), unmerged(root, first)]
    for number, envelope in enumerate([events[0], *events]):  # the first one delivered twice
        await context.publish(
            subject_for(envelope.type, namespace),
            envelope.SerializeToString(),
            headers={"Nats-Msg-Id": str(number)},
        )
    for _ in range(200):
        if consumer.applied >= 3:
            break
        await asyncio.sleep(0.05)
    consumer.stop()
    await task
    assert [type(call).__name__ for call in effects.calls] == ["Merge", "Merge", "Unmerge"]
    assert await leads(engine, effects.table, first, second) == [first, root]


def _alembic(connection: Connection, step: Callable[[Operations], None]) -> None:
    step(Operations(MigrationContext.configure(connection)))


async def test_migration_helpers_build_the_model_and_keep_a_services_aliases(
    make_database: Callable[..., str],
) -> None:
    engine = create_engine(make_database("lineage_migration"), application_name="omni-test-lineage")
    person, survivor = ids(2)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                sa.text(
                    "CREATE TABLE person_aliases (merged_person_id uuid PRIMARY KEY, survivor_person_id uuid)"
                )
            )
            await connection.execute(
                sa.text("INSERT INTO person_aliases VALUES (:p, :s)"), {"p": person, "s": survivor}
            )
            await connection.run_sync(
                _alembic,
                lambda op: lineage_from_aliases(
                    op,
                    table="person_aliases",
                    person_column="merged_person_id",
                    survivor_column="survivor_person_id",
                ),
            )
        async with engine.connect() as connection:
            assert await connection.run_sync(schema_differences, lineage_metadata) == []
            rows = (
                await connection.execute(sa.select(person_lineage.c.person_id, person_lineage.c.survivor_id))
            ).all()
            assert [tuple(r) for r in rows] == [(person, survivor)]
            assert await connection.scalar(sa.text("SELECT to_regclass('person_aliases')")) is None

        async with engine.begin() as connection:
            await connection.execute(
                sa.text(
                    "CREATE TABLE person_aliases (merged_person_id uuid PRIMARY KEY, survivor_person_id uuid)"
                )
            )
            await connection.run_sync(
                _alembic,
                lambda op: aliases_from_lineage(
                    op,
                    table="person_aliases",
                    person_column="merged_person_id",
                    survivor_column="survivor_person_id",
                ),
            )
            back = (await connection.execute(sa.text("SELECT * FROM person_aliases"))).all()
            assert [tuple(r) for r in back] == [(person, survivor)]
            assert await connection.scalar(sa.text("SELECT to_regclass('person_lineage')")) is None
        async with engine.begin() as connection:
            await connection.run_sync(_alembic, create_lineage_table)
    finally:
        await engine.dispose()
