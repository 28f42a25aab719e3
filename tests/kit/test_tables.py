"""The migration steps services call create exactly the tables omni-kit's code reads and writes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

from omni_kit.bus import bus_metadata, create_bus_tables, create_outbox_dead_letters
from omni_kit.db import create_engine
from omni_kit.scheduler import create_jobs_table, jobs_metadata

from ..migrations import schema_differences


def _migrate(connection: Connection) -> None:
    op = Operations(MigrationContext.configure(connection))
    create_bus_tables(op)
    create_outbox_dead_letters(op)
    create_jobs_table(op)


async def test_the_migration_steps_match_the_tables_the_kit_uses(make_database: Callable[..., Any]) -> None:
    engine = create_engine(make_database("kit_tables"), application_name="omni-test-tables")
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_migrate)
            assert await connection.run_sync(schema_differences, bus_metadata) == []
            assert await connection.run_sync(schema_differences, jobs_metadata) == []
    finally:
        await engine.dispose()
