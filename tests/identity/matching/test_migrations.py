"""The matcher's migration builds exactly the tables its models describe, and undoes cleanly."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection

from omni_identity.main import MIGRATIONS
from omni_identity.matching.models import MatchingBase
from omni_kit.db import create_engine, migrate

from ...migrations import schema_differences

OWN = set(MatchingBase.metadata.tables)
REVISION = "0100"


def _tables(connection: Connection) -> set[str]:
    return set(sa.inspect(connection).get_table_names())


def _previous_revision() -> str:
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    down = ScriptDirectory.from_config(config).get_revision(REVISION).down_revision
    assert isinstance(down, str)
    return down


async def test_migration_matches_the_models_and_downgrades(make_database: Callable[..., str]) -> None:
    engine = create_engine(make_database("matching_migrations"), application_name="omni-identity-test")
    try:
        await migrate(engine, MIGRATIONS)
        async with engine.connect() as connection:
            assert await connection.run_sync(schema_differences, MatchingBase.metadata) == []
            assert await connection.run_sync(_tables) >= OWN

        def downgrade(connection: Connection) -> None:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = connection
            command.downgrade(config, _previous_revision())

        async with engine.begin() as connection:
            await connection.run_sync(downgrade)
        async with engine.connect() as connection:
            tables = await connection.run_sync(_tables)
        assert not OWN & tables
        assert {"persons", "identifiers"} <= tables
    finally:
        await engine.dispose()
