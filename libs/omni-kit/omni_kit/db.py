"""Database access: one engine factory, sessions, Alembic migrations applied by command or at start, what
counts as the database being unreachable, and running a transaction again when PostgreSQL aborted it for a
concurrent one (serialization failure, deadlock)."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import orjson
import sqlalchemy.exc
import stamina
from alembic import command
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from omni_kit.errors import Aborted

log = logging.getLogger(__name__)

T = TypeVar("T")


def json_text(value: Any) -> str:
    """Compact JSON text of a value, for JSONB parameters: orjson, several times faster than the json
    module on the documents ingestion writes for every event (properties, identifiers, computed state)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


RANDOM_PAGE_COST = "1.1"
"""The planner's price of a random page read relative to a sequential one, for SSD or cached storage."""

# A fixed key for pg_advisory_lock so that replicas starting together migrate one at a time.
_MIGRATION_LOCK_KEY = 7_310_611_042

CONNECT_TIMEOUT_S = 10.0
"""How long opening a connection may take: an unreachable host then fails a call in seconds, not asyncpg's
default minute."""


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
            "timeout": CONNECT_TIMEOUT_S,
            "server_settings": {
                "application_name": application_name,
                "statement_timeout": str(statement_timeout_ms),
                "idle_in_transaction_session_timeout": str(max(statement_timeout_ms * 2, 60_000)),
                # The default (4) prices a random read as on a spinning disk: batch statements looking up
                # hundreds of keys by primary key (ANY(array), JOIN unnest) were planned as scans of the
                # whole table, which grow with every customer (90 ms at 100,000 profiles, 3 ms with this).
                "random_page_cost": RANDOM_PAGE_COST,
            },
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


# Alembic keeps the migration being run in module globals (alembic.context, alembic.op): two services
# migrating at once in one process (tests start several) would run each other's operations.
_migrating: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


async def migrate(engine: AsyncEngine, script_location: Path, revision: str = "head") -> None:
    """Apply the service's Alembic migrations up to revision, holding an advisory lock meanwhile."""

    def upgrade(connection: Connection) -> None:
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        command.upgrade(_alembic_config(script_location, connection), revision)

    lock = _migrating.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with lock, engine.begin() as connection:
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


# SQLSTATEs that say the server cannot serve now rather than that the statement is wrong: class 08
# (connection exception) is matched by its prefix; 57P01-57P03 a server shutting down, crashed or starting;
# 53300 too many connections.
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})


def database_unavailable(error: BaseException) -> bool:
    """Whether error says the database cannot be reached now (down, shutting down or starting, refusing
    connections, a connection cut, no pooled connection free in time), which a later attempt may not meet.

    The error is looked at with its causes: SQLAlchemy wraps the driver's error, and asyncpg's "connection
    closed in the middle of an operation" carries the administrator shutdown that closed it.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError | sqlalchemy.exc.TimeoutError):
            # Refused, reset or timed out connecting (asyncpg raises these unwrapped); the pool's checkout
            # timeout (SQLAlchemy's TimeoutError is not an OSError).
            return True
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, asyncpg.InterfaceError) and "connection is closed" in str(current):
            # A pooled connection the server closed (a shutdown), used before anyone noticed.
            return True
        sqlstate = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if isinstance(sqlstate, str) and (sqlstate.startswith("08") or sqlstate in _UNAVAILABLE_SQLSTATES):
            return True
        current = current.__cause__ or current.__context__
    return False


async def retry_while_unavailable(
    work: Callable[[], Awaitable[T]],
    *,
    name: str,
    timeout_s: float,
    wait_initial_s: float = 0.2,
    wait_max_s: float = 2.0,
) -> T:
    """Run work (a whole transaction: it opens, commits or rolls back its own) again while it fails because the
    database cannot be reached (database_unavailable), for at most `timeout_s` seconds; return what it returns.

    For work that must not be lost to a short outage but cannot wait for ever, e.g. recording what already
    happened outside the database before a lease on it runs out. A transaction whose commit was cut off may
    have committed: the work must be safe to run again (check state, as an UPDATE ... WHERE status does).
    Any other error, and the last unavailability after `timeout_s`, is raised as it is; `name` says in the log
    whose work waited.
    """
    if timeout_s <= 0:
        return await work()

    def retryable(error: BaseException) -> bool:
        if not database_unavailable(error):
            return False
        log.warning("%s: the database does not answer; trying again: %s", name, error)
        return True

    async for attempt in stamina.retry_context(
        on=retryable,
        attempts=None,
        timeout=timeout_s,
        wait_initial=wait_initial_s,
        wait_max=wait_max_s,
        wait_jitter=wait_initial_s / 2,
    ):
        with attempt:
            return await work()
    raise AssertionError("unreachable: the last attempt returns or raises")


CONFLICT_SQLSTATES = frozenset({"40001", "40P01"})
"""serialization_failure, deadlock_detected: PostgreSQL undid the transaction because of a concurrent one; run
again, it usually succeeds."""


def sqlstate_of(error: BaseException) -> str | None:
    """The SQLSTATE of a database error (SQLAlchemy's or the driver's), else None."""
    orig = error.orig if isinstance(error, sqlalchemy.exc.DBAPIError) else error
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code if isinstance(code, str) else None


async def retry_transaction(
    work: Callable[[], Awaitable[T]],
    *,
    name: str,
    attempts: int = 5,
    sqlstates: Collection[str] = CONFLICT_SQLSTATES,
    conflicts: tuple[type[Exception], ...] = (),
    exhausted: Callable[[Exception], Exception] | None = None,
) -> T:
    """Run work (a whole transaction: it opens, commits or rolls back its own) up to `attempts` times while it
    fails for a concurrent transaction, and return what it returns.

    Retried: database errors with one of `sqlstates` (by default serialization failures and deadlocks; a
    caller whose locks make a unique violation a race may add 23505), after a short backoff with jitter; and
    the caller's own `conflicts` (e.g. "a concurrent merge moved the person"), at once, since the next run
    sees what overtook this one. When the last attempt fails that way, `exhausted(error)` is raised
    (by default Aborted: the caller may send the request again); any other error is raised as it is.
    `name` says in the log whose transaction was run again.
    """

    def retryable(error: BaseException) -> bool | float:
        if isinstance(error, conflicts):
            log.debug("%s: overtaken by a concurrent change, running it again: %s", name, error)
            return 0.0
        sqlstate = sqlstate_of(error)
        if sqlstate is not None and sqlstate in sqlstates:
            log.warning("%s: the database aborted the transaction (SQLSTATE %s)", name, sqlstate)
            return True
        return False

    try:
        async for attempt in stamina.retry_context(
            on=retryable,
            attempts=attempts,
            timeout=None,
            wait_initial=0.01,
            wait_max=0.2,
            wait_jitter=0.05,
        ):
            with attempt:
                return await work()
    except Exception as error:
        if not isinstance(error, conflicts) and sqlstate_of(error) not in sqlstates:
            raise
        if exhausted is not None:
            raise exhausted(error) from error
        raise Aborted(
            message=f"{name} conflicted with concurrent work {attempts} times; nothing was written, try again"
        ) from error
    raise AssertionError("unreachable: the last attempt returns or raises")
