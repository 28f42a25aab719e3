"""The migrations build exactly the tables the models describe, and undo cleanly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from omni_identity.main import MIGRATIONS
from omni_identity.models import Base
from omni_kit.db import create_engine, current_revision, migrate


def _table_of(difference: Any) -> str | None:
    """The table a difference reported by compare_metadata is about."""
    item = difference[0] if isinstance(difference, list) else difference
    if item[0] in ("add_table", "remove_table"):
        return str(item[1].name)
    if item[0] in ("add_index", "remove_index"):
        return str(item[1].table.name)
    if item[0].startswith("modify_"):
        return str(item[2])
    return None


def _differences(connection: Connection) -> list[Any]:
    """How the migrated schema differs from the models, for identity's own tables."""
    context = MigrationContext.configure(connection)
    own = set(Base.metadata.tables)
    # The outbox and inbox come from omni_kit's create_bus_tables; only their presence is ours to check.
    return [d for d in compare_metadata(context, Base.metadata) if _table_of(d) in own]


async def test_migrations_match_the_models_and_downgrade(make_database: Callable[..., str]) -> None:
    engine = create_engine(make_database("identity_migrations"), application_name="omni-identity-test")
    try:
        await migrate(engine, MIGRATIONS)
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        assert await current_revision(engine) == ScriptDirectory.from_config(config).get_current_head()
        async with engine.connect() as connection:
            assert await connection.run_sync(_differences) == []
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
