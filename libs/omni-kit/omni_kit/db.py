"""Database access: one engine factory, sessions, and Alembic migrations applied by command or at start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine


def json_text(value: Any) -> str:
    """Compact JSON text of a value, for JSONB parameters: orjson, several times faster than the json
    module on the documents ingestion writes for every event (properties, identifiers, computed state)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


RANDOM_PAGE_COST = "1.1"
"""The planner's price of a random page read relative to a sequential one, for SSD or cached storage."""

# A fixed key for pg_advisory_lock so that replicas starting together migrate one at a time.
_MIGRATION_LOCK_KEY = 7_310_611_042


def create_engine(
    url: str,
    *,
    application_name: str,
    pool_size: int = 10,
    statement_timeout_ms: int = 30_000,
) -> AsyncEngine:
    """Create the service's async engine (asyncpg), naming its connections and bounding statements."""
    return create_async_engine(
        url,
        pool_size=pool_size,
        # No overflow: connections beyond the pool would be opened and closed per checkout, which under
        # load costs more than waiting for a pooled one (the wait is the service's admission control).
        max_overflow=0,
        pool_timeout=10,
        pool_recycle=1800,
        json_serializer=json_text,
        json_deserializer=orjson.loads,
        connect_args={
            "server_settings": {
                "application_name": application_name,
                "statement_timeout": str(statement_timeout_ms),
                "idle_in_transaction_session_timeout": str(max(statement_timeout_ms * 2, 60_000)),
                # The default (4) prices a random read as on a spinning disk: batch statements looking up
                # hundreds of keys by primary key (ANY(array), JOIN unnest) were planned as scans of the
                # whole table, which grow with every customer (90 ms at 100,000 profiles, 3 ms with this).
                "random_page_cost": RANDOM_PAGE_COST,
            }
        },
    )


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


def _alembic_config(script_location: Path, connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.attributes["connection"] = connection
    return config


async def migrate(engine: AsyncEngine, script_location: Path, revision: str = "head") -> None:
    """Apply the service's Alembic migrations up to revision, holding an advisory lock meanwhile."""

    def upgrade(connection: Connection) -> None:
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        command.upgrade(_alembic_config(script_location, connection), revision)

    async with engine.begin() as connection:
        await connection.run_sync(upgrade)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at, or None before the first migration."""
    async with engine.connect() as connection:
        exists = await connection.scalar(text("SELECT to_regclass('alembic_version') IS NOT NULL"))
        if not exists:
            return None
        value = await connection.scalar(text("SELECT version_num FROM alembic_version"))
        return str(value) if value is not None else None


def run_alembic_env(context: EnvironmentContext, target_metadata: Any = None) -> None:
    """Body of every service's migrations/env.py: migrate on the connection `migrate` hands over."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations with `omni migrate <service>`, which provides the connection")
    context.configure(connection=connection, target_metadata=target_metadata, transaction_per_migration=False)
    with context.begin_transaction():
        context.run_migrations()
