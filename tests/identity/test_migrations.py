"""The migrations build exactly the tables the models describe, and undo cleanly."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from omni_identity.main import MIGRATIONS
from omni_identity.models import Base
from omni_kit.db import create_engine, current_revision, migrate

from ..migrations import schema_differences


async def test_migrations_match_the_models_and_downgrade(make_database: Callable[..., str]) -> None:
    engine = create_engine(make_database("identity_migrations"), application_name="omni-identity-test")
    try:
        await migrate(engine, MIGRATIONS)
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        assert await current_revision(engine) == ScriptDirectory.from_config(config).get_current_head()
        async with engine.connect() as connection:
            assert await connection.run_sync(schema_differences, Base.metadata) == []
            tables = await connection.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
            assert {"outbox", "inbox", *Base.metadata.tables} <= tables

        def downgrade(connection: Connection) -> None:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = connection
            command.downgrade(config, "base")

        async with engine.begin() as connection:
            await connection.run_sync(downgrade)
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
        assert tables <= {"alembic_version"}
    finally:
        await engine.dispose()
