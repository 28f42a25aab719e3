"""The migrations build exactly the tables the models describe, and undo cleanly."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from omni.identity.v1 import identity_pb2
from omni_identity.main import MIGRATIONS
from omni_identity.models import Base
from omni_kit.db import create_engine, current_revision, migrate, session_factory
from omni_kit.errors import AlreadyExists
from omni_kit.idempotency import forget_answers, idempotent

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
            assert {"outbox", "inbox", "idempotency_keys", *Base.metadata.tables} <= tables

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


async def test_operator_answers_stored_before_the_idempotency_store_are_replayed_after_it(
    make_database: Callable[..., str],
) -> None:
    """0005 moves identity's own operations table into omni_kit's idempotency store: a merge answered
    before the upgrade is answered the same after it, and its request id still cannot be reused."""
    engine = create_engine(make_database("identity_idempotency"), application_name="omni-identity-test")
    request = identity_pb2.MergePersonsRequest(
        request_id="op-1", survivor_person_id=str(uuid.uuid4()), merged_person_id=str(uuid.uuid4())
    )
    answered = identity_pb2.MergePersonsResponse(person=identity_pb2.Person(id=request.survivor_person_id))
    shown = uuid.uuid4()
    try:
        await migrate(engine, MIGRATIONS, "0004")
        async with engine.begin() as connection:
            await connection.execute(
                sa.text(
                    "INSERT INTO operations (request_id, kind, fingerprint, response, person_ids, created_at)"
                    " VALUES ('op-1', 'merge', :fingerprint, :response, :persons, now())"
                ),
                {
                    "fingerprint": hashlib.sha256(
                        b"merge" + request.SerializeToString(deterministic=True)
                    ).digest(),
                    "response": answered.SerializeToString(),
                    "persons": [shown],
                },
            )
        await migrate(engine, MIGRATIONS)

        async def never() -> identity_pb2.MergePersonsResponse:
            raise AssertionError("a stored answer must be replayed, not recomputed")

        async with session_factory(engine).begin() as session:
            replayed = await idempotent(
                session, "merge", "op-1", request, identity_pb2.MergePersonsResponse, never, scope="operator"
            )
        assert replayed == answered
        with pytest.raises(AlreadyExists):
            async with session_factory(engine).begin() as session:
                await idempotent(
                    session,
                    "forget",
                    "op-1",
                    request,
                    identity_pb2.MergePersonsResponse,
                    never,
                    scope="operator",
                )
        async with session_factory(engine).begin() as session:
            await forget_answers(session, [shown])
        async with engine.connect() as connection:
            left = (await connection.execute(sa.text("SELECT count(*) FROM idempotency_keys"))).scalar()
        assert left == 0
    finally:
        await engine.dispose()
