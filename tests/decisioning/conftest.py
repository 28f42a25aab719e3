"""Decisioning started in-process for a test module, on its own database and event namespace."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import nats
import pytest
from nats.aio.msg import Msg

from omni.decisioning.v1 import decisioning_pb2_grpc
from omni_decisioning.main import Settings, start
from omni_kit.db import create_engine
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres

from .support import Decisioning, Published


@pytest.fixture(scope="module")
async def decisioning(postgres: EmbeddedPostgres, nats_server: EmbeddedNats) -> AsyncIterator[Decisioning]:
    """Decisioning on a fresh database and namespace for the whole module, with a subscriber on its events."""
    database = f"decisioning_{uuid.uuid4().hex[:16]}"
    await asyncio.to_thread(postgres.create_database, database)
    namespace = "t" + uuid.uuid4().hex[:10]
    published = Published()
    client = await nats.connect(nats_server.url)

    async def collect(message: Msg) -> None:
        published.on_message(message)

    await client.subscribe(f"{namespace}.events.decisioning.>", cb=collect)
    await client.flush()
    settings = Settings(
        database_url=postgres.url(database),
        nats_url=nats_server.url,
        grpc_host="127.0.0.1",
        grpc_port=0,
        event_namespace=namespace,
        migrate_on_start=True,
        outbox_poll_interval_s=0.05,
    )
    runtime = await start(settings)
    engine = create_engine(settings.database_url, application_name="omni-test-decisioning")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}")
    try:
        yield Decisioning(
            runtime=runtime,
            stub=decisioning_pb2_grpc.DecisioningServiceStub(channel),
            namespace=namespace,
            engine=engine,
            nats=client,
            js=client.jetstream(),
            published=published,
        )
    finally:
        await channel.close()
        await runtime.close()
        await engine.dispose()
        await client.drain()
        await asyncio.to_thread(postgres.drop_database, database)
