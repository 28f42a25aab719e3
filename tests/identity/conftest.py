"""The identity service started in-process for a test module, on its own database and event namespace."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from omni.identity.v1 import identity_pb2_grpc
from omni_identity.main import Settings, start
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres

from ..events import recording
from .support import EventLog, Identity


@contextlib.asynccontextmanager
async def running_identity(
    postgres: EmbeddedPostgres, nats_server: EmbeddedNats, **overrides: Any
) -> AsyncIterator[Identity]:
    """Identity on a fresh database and event namespace, serving on a free port; settings may be overridden."""
    database = f"identity_{uuid.uuid4().hex[:16]}"
    postgres.create_database(database)
    namespace = "t" + uuid.uuid4().hex[:10]
    settings = Settings(
        **{
            "database_url": postgres.url(database),
            "nats_url": nats_server.url,
            "grpc_host": "127.0.0.1",
            "grpc_port": 0,
            "event_namespace": namespace,
            "migrate_on_start": True,
            "outbox_poll_interval_s": 0.05,
            "db_pool_size": 30,
            **overrides,
        }
    )
    runtime = await start(settings)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}")
    try:
        yield Identity(runtime, identity_pb2_grpc.IdentityServiceStub(channel), namespace)
    finally:
        await channel.close()
        await runtime.close()
        postgres.drop_database(database)


@pytest.fixture(scope="module")
async def identity(postgres: EmbeddedPostgres, nats_server: EmbeddedNats) -> AsyncIterator[Identity]:
    """Identity with the default settings on a fresh database, serving on a free port, for the whole module."""
    async with running_identity(postgres, nats_server) as running:
        yield running


@pytest.fixture
async def events(identity: Identity, nats_server: EmbeddedNats) -> AsyncIterator[EventLog]:
    """Every event identity publishes during the test (a plain subscription to the namespace's events)."""
    async with recording(EventLog(), nats_server.url, identity.namespace) as log:
        yield log
