"""Segmentation's migrations build the tables the models describe, move the merge aliases stored before
omni_kit.lineage into person_lineage, and undo cleanly (the aliases back where they were)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection

from omni_kit.db import create_engine, migrate
from omni_kit.idempotency import idempotency_metadata
from omni_kit.lineage import lineage_metadata
from omni_segmentation.main import MIGRATIONS
from omni_segmentation.models import Base

from ..migrations import schema_differences


def _downgrade(connection: Connection, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.downgrade(config, revision)


async def test_the_aliases_stored_before_move_to_person_lineage_and_back(
    make_database: Callable[..., str],
) -> None:
    engine = create_engine(
        make_database("segmentation_migrations"), application_name="omni-segmentation-test"
    )
    merged, survivor = uuid.uuid4(), uuid.uuid4()
    try:
        await migrate(engine, MIGRATIONS, "0003")
        async with engine.begin() as connection:
            await connection.execute(
                sa.text("INSERT INTO merged_persons (person_id, survivor_id) VALUES (:m, :s)"),
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
            assert await connection.scalar(sa.text("SELECT to_regclass('merged_persons')")) is None

        async with engine.begin() as connection:
            await connection.run_sync(_downgrade, "0003")
        async with engine.connect() as connection:
            rows = await connection.execute(sa.text("SELECT person_id, survivor_id FROM merged_persons"))
            assert [tuple(r) for r in rows] == [(merged, survivor)]
        async with engine.begin() as connection:
            await connection.run_sync(_downgrade, "base")
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
        assert tables <= {"alembic_version"}
    finally:
        await engine.dispose()
