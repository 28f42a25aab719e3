"""Profile's migrations build the tables its models describe and undo cleanly."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from omni_kit.db import create_engine, current_revision, migrate
from omni_kit.idempotency import idempotency_metadata
from omni_profile.main import MIGRATIONS
from omni_profile.models import Base

from ..migrations import schema_differences


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


async def test_the_schema_matches_the_models_and_downgrades_to_nothing(
    make_database: Callable[..., str],
) -> None:
    engine = create_engine(make_database("profile_migrations"), application_name="omni-profile-test")
    try:
        await migrate(engine, MIGRATIONS)
        assert await current_revision(engine) == ScriptDirectory.from_config(_config()).get_current_head()
        async with engine.connect() as connection:
            assert await connection.run_sync(schema_differences, Base.metadata) == []
            assert await connection.run_sync(schema_differences, idempotency_metadata) == []
            tables = await connection.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
        assert {"outbox", "inbox", "scheduled_jobs", "outbox_dead_letters", *Base.metadata.tables} <= tables
        assert "contact_verdicts_due" not in tables

        async with engine.begin() as connection:
            await connection.run_sync(lambda c: command.downgrade(_config(c), "base"))
        async with engine.connect() as connection:
            left = await connection.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
        assert left <= {"alembic_version"}
    finally:
        await engine.dispose()
