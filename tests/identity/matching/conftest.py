"""The identity server (IdentityService and MatchingService) started in-process on its own database."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from omni.identity.v1 import identity_pb2_grpc, matching_pb2_grpc
from omni_identity.main import Settings, start
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres

from .support import MatchingServer


@contextlib.asynccontextmanager
async def running_matching(
    postgres: EmbeddedPostgres, nats_server: EmbeddedNats, **matching: Any
) -> AsyncIterator[MatchingServer]:
    """Identity on a fresh database, serving on a free port; matching settings (e.g. link_threshold) as given."""
    database = f"matching_{uuid.uuid4().hex[:16]}"
    postgres.create_database(database)
    settings = Settings(
        database_url=postgres.url(database),
        nats_url=nats_server.url,
        grpc_host="127.0.0.1",
        grpc_port=0,
        event_namespace="t" + uuid.uuid4().hex[:10],
        migrate_on_start=True,
        outbox_poll_interval_s=0.05,
    )
    with pytest.MonkeyPatch.context() as patch:
        # The matcher's settings come from their own variables, read when the server starts.
        for name, value in matching.items():
            patch.setenv(f"OMNI_IDENTITY_MATCHING_{name.upper()}", str(value))
        runtime = await start(settings)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}")
    try:
        yield MatchingServer(
            runtime,
            matching_pb2_grpc.MatchingServiceStub(channel),
            identity_pb2_grpc.IdentityServiceStub(channel),
        )
    finally:
        await channel.close()
        await runtime.close()
        postgres.drop_database(database)


@pytest.fixture(scope="module")
async def server(postgres: EmbeddedPostgres, nats_server: EmbeddedNats) -> AsyncIterator[MatchingServer]:
    """The server with the default matching settings, for the whole module."""
    async with running_matching(postgres, nats_server) as running:
        yield running


async def count_rows(server: MatchingServer, table: str) -> int:
    """How many rows a table of the server's database holds."""
    async with server.runtime.engine.connect() as connection:
        return int(await connection.scalar(sa.text(f"SELECT count(*) FROM {table}")) or 0)
