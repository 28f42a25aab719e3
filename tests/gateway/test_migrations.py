"""The gateway's migrations build the tables the models describe, keep the messages stored before them, and
undo cleanly."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from omni_gateway.domain import Purpose
from omni_gateway.main import MIGRATIONS
from omni_gateway.models import Base
from omni_kit.db import create_engine, current_revision, migrate
from omni_kit.idempotency import idempotency_metadata
from omni_kit.ids import new_id
from omni_kit.lineage import lineage_metadata

from ..migrations import schema_differences


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
            assert await connection.run_sync(schema_differences, Base.metadata) == []
            assert await connection.run_sync(schema_differences, lineage_metadata) == []
            assert await connection.run_sync(schema_differences, idempotency_metadata) == []
            purposes = (await connection.scalars(sa.text("SELECT purpose FROM messages"))).all()
            versions = (
                await connection.scalars(sa.text("SELECT contact_verdict_version FROM messages"))
            ).all()
        assert purposes == [Purpose.MARKETING.value]
        assert versions == [0]  # decided by no particular verdicts: the gateway's own apply
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
