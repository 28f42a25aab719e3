"""Decisioning's migrations: the consents it kept become profile's contact verdicts (the same channels allowed
and refused), the schema matches the models, and they undo cleanly."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from omni.common.v1 import common_pb2 as c
from omni.profile.v1 import profile_pb2 as p
from omni_decisioning.main import MIGRATIONS
from omni_decisioning.models import Base
from omni_kit import contact
from omni_kit.contact import Purpose, Reason, Verdict
from omni_kit.db import create_engine, migrate
from omni_kit.idempotency import idempotency_metadata
from omni_kit.lineage import lineage_metadata

from ..migrations import schema_differences

MARKETING = Purpose.MARKETING
# Decisioning stored a grant awaiting double opt-in as state 0.
AWAITING = p.CONSENT_STATE_UNSPECIFIED


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


async def test_kept_consents_become_the_same_verdicts_and_come_back_on_a_downgrade(
    make_database: Callable[..., str],
) -> None:
    ada, bob = uuid.uuid4(), uuid.uuid4()
    at = datetime(2026, 6, 1, tzinfo=UTC)
    kept = [
        (ada, c.CHANNEL_EMAIL, p.CONSENT_STATE_GRANTED),
        (ada, c.CHANNEL_SMS, AWAITING),
        (ada, c.CHANNEL_CALL_CENTER, p.CONSENT_STATE_REVOKED),
        (bob, c.CHANNEL_EMAIL, p.CONSENT_STATE_DENIED),
    ]
    engine = create_engine(make_database("decisioning_migrations"), application_name="omni-test-decisioning")
    try:
        await migrate(engine, MIGRATIONS, "0001")
        async with engine.begin() as connection:
            await connection.execute(
                sa.text(
                    "INSERT INTO consents (person_id, channel, state, update_time) VALUES (:p, :c, :s, :at)"
                ),
                [{"p": person, "c": channel, "s": state, "at": at} for person, channel, state in kept],
            )

        await migrate(engine, MIGRATIONS)

        async with engine.connect() as connection:
            assert await connection.run_sync(schema_differences, Base.metadata) == []
        async with AsyncSession(engine) as session:
            verdicts = await contact.verdicts_of(session, [ada, bob])
        assert verdicts[ada].of(c.CHANNEL_EMAIL, MARKETING) == Verdict(
            c.CHANNEL_EMAIL, MARKETING, True, Reason.CONSENT_GRANTED
        )
        assert verdicts[ada].of(c.CHANNEL_SMS, MARKETING).reason == Reason.AWAITING_CONFIRMATION
        assert verdicts[ada].of(c.CHANNEL_CALL_CENTER, MARKETING).refusal == (
            "no marketing consent for call_center: revoked"
        )
        assert verdicts[bob].of(c.CHANNEL_EMAIL, MARKETING).reason == Reason.DENIED
        assert not verdicts[bob].of(c.CHANNEL_SMS, MARKETING).allowed
        # Any announcement of profile replaces them.
        assert {v.version for v in verdicts.values()} == {0}

        async with engine.begin() as connection:
            await connection.run_sync(lambda conn: command.downgrade(_config(conn), "0001"))
        async with engine.connect() as connection:
            back = (await connection.execute(sa.text("SELECT person_id, channel, state FROM consents"))).all()
        assert sorted(map(tuple, back)) == sorted(kept)

        async with engine.begin() as connection:
            await connection.run_sync(lambda conn: command.downgrade(_config(conn), "base"))
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda conn: set(sa.inspect(conn).get_table_names()))
        assert tables <= {"alembic_version"}
    finally:
        await engine.dispose()


async def test_the_aliases_stored_before_move_to_person_lineage_and_back(
    make_database: Callable[..., str],
) -> None:
    engine = create_engine(make_database("decisioning_migrations"), application_name="omni-test-decisioning")
    merged, survivor = uuid.uuid4(), uuid.uuid4()
    try:
        await migrate(engine, MIGRATIONS, "0003")
        async with engine.begin() as connection:
            await connection.execute(
                sa.text("INSERT INTO person_aliases (merged_person_id, survivor_person_id) VALUES (:m, :s)"),
                {"m": merged, "s": survivor},
            )

        await migrate(engine, MIGRATIONS)

        async with engine.connect() as connection:
            assert await connection.run_sync(schema_differences, Base.metadata) == []
            assert await connection.run_sync(schema_differences, lineage_metadata) == []
            assert await connection.run_sync(schema_differences, idempotency_metadata) == []
            rows = await connection.execute(
                sa.text("SELECT person_id, survivor_id, forgotten_at FROM person_lineage")
            )
            assert [tuple(r) for r in rows] == [(merged, survivor, None)]
            assert await connection.scalar(sa.text("SELECT to_regclass('person_aliases')")) is None

        async with engine.begin() as connection:
            await connection.run_sync(lambda conn: command.downgrade(_config(conn), "0003"))
        async with engine.connect() as connection:
            rows = await connection.execute(
                sa.text("SELECT merged_person_id, survivor_person_id FROM person_aliases")
            )
            assert [tuple(r) for r in rows] == [(merged, survivor)]
    finally:
        await engine.dispose()
