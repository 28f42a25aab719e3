"""The gateway's migrations build the tables the models describe, keep the messages stored before them, and
undo cleanly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from omni_gateway.domain import Purpose
from omni_gateway.main import MIGRATIONS
from omni_gateway.models import Base
from omni_kit.db import create_engine, current_revision, migrate
from omni_kit.ids import new_id


def _differences(connection: Connection) -> list[Any]:
    """How the migrated schema differs from the models, for the gateway's own tables (not the bus's)."""
    own = set(Base.metadata.tables)
    differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    return [d for d in differences if _table_of(d) in own]


def _table_of(difference: Any) -> str | None:
    item = difference[0] if isinstance(difference, list) else difference
    if item[0] in ("add_table", "remove_table"):
        return str(item[1].name)
    if item[0] in ("add_index", "remove_index"):
        return str(item[1].table.name)
    if item[0] in ("add_column", "remove_column"):
        return str(item[2])
    if item[0].startswith("modify_"):
        return str(item[2])
    return None


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


# A message row as the gateway wrote it; {columns} and {values} add to it.
_INSERT = (
    "INSERT INTO messages (id, request_id, fingerprint, person_id, channel, template_id, status{columns}) "
    "VALUES (:id, :r, 'f', :p, 'email', 'cart', 'sent'{values})"
)


async def test_messages_stored_before_purposes_are_marketing_and_the_schema_matches_the_models(
    make_database: Callable[..., str],
) -> None:
    engine = create_engine(make_database("gateway_migrations"), application_name="omni-gateway-test")
    try:
        await migrate(engine, MIGRATIONS, "0001")
        async with engine.begin() as connection:
            await connection.execute(
                sa.text(_INSERT.format(columns="", values="")),
                {"id": new_id(), "r": "before-purposes", "p": new_id()},
            )

        await migrate(engine, MIGRATIONS)

        assert await current_revision(engine) == ScriptDirectory.from_config(_config()).get_current_head()
        async with engine.connect() as connection:
            assert await connection.run_sync(_differences) == []
            purposes = (await connection.scalars(sa.text("SELECT purpose FROM messages"))).all()
        assert purposes == [Purpose.MARKETING.value]
        with pytest.raises(IntegrityError, match="messages_purpose"):
            async with engine.begin() as connection:
                await connection.execute(
                    sa.text(_INSERT.format(columns=", purpose", values=", 'analytics'")),
                    {"id": new_id(), "r": "analytics", "p": new_id()},
                )

        async with engine.begin() as connection:
            await connection.run_sync(lambda c: command.downgrade(_config(c), "base"))
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
        assert tables <= {"alembic_version"}
    finally:
        await engine.dispose()
