"""The segmentation service started in-process per test module, on its own database and event namespace."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import nats
import pytest

from omni.segmentation.v1 import segmentation_pb2_grpc
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres
from omni_segmentation.main import start

from ..events import recording
from .support import EventLog, Segmentation, new_service_settings


@pytest.fixture(scope="module")
async def segmentation(postgres: EmbeddedPostgres, nats_server: EmbeddedNats) -> AsyncIterator[Segmentation]:
    """Segmentation on a fresh database, with a fast clock, serving on a free port, for the whole module."""
    settings, database = new_service_settings(postgres, nats_server)
    runtime = await start(settings)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}")
    client = await nats.connect(nats_server.url)
    try:
        yield Segmentation(
            runtime,
            segmentation_pb2_grpc.SegmentationServiceStub(channel),
            settings.event_namespace,
            client.jetstream(),
        )
    finally:
        await client.drain()
        await channel.close()
        await runtime.close()
        postgres.drop_database(database)


@pytest.fixture
async def events(segmentation: Segmentation, nats_server: EmbeddedNats) -> AsyncIterator[EventLog]:
    """Every event published on the module's namespace during the test."""
    async with recording(EventLog(), nats_server.url, segmentation.namespace) as log:
        yield log
