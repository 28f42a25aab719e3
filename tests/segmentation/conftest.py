"""The segmentation service started in-process per test module, on its own database and event namespace."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import nats
import pytest
from nats.aio.msg import Msg

from omni.segmentation.v1 import segmentation_pb2_grpc
from omni_kit.bus import envelopes_in
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres
from omni_segmentation.main import Settings, start

from .support import EventLog, Segmentation


@pytest.fixture(scope="module")
async def segmentation(postgres: EmbeddedPostgres, nats_server: EmbeddedNats) -> AsyncIterator[Segmentation]:
    """Segmentation on a fresh database, with a fast clock, serving on a free port, for the whole module."""
    database = f"segmentation_{uuid.uuid4().hex[:16]}"
    postgres.create_database(database)
    namespace = "t" + uuid.uuid4().hex[:10]
    settings = Settings(
        database_url=postgres.url(database),
        nats_url=nats_server.url,
        grpc_host="127.0.0.1",
        grpc_port=0,
        event_namespace=namespace,
        migrate_on_start=True,
        outbox_poll_interval_s=0.05,
        clock_interval_s=0.1,
    )
    runtime = await start(settings)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}")
    client = await nats.connect(nats_server.url)
    try:
        yield Segmentation(
            runtime, segmentation_pb2_grpc.SegmentationServiceStub(channel), namespace, client.jetstream()
        )
    finally:
        await client.drain()
        await channel.close()
        await runtime.close()
        postgres.drop_database(database)


@pytest.fixture
async def events(segmentation: Segmentation, nats_server: EmbeddedNats) -> AsyncIterator[EventLog]:
    """Every event published on the module's namespace during the test."""
    client = await nats.connect(nats_server.url)
    log = EventLog()

    async def received(message: Msg) -> None:
        log.envelopes.extend(envelopes_in(message.data, message.headers))
        log.arrived.set()

    await client.subscribe(f"{segmentation.namespace}.events.>", cb=received)
    await client.flush()
    try:
        yield log
    finally:
        await client.drain()
