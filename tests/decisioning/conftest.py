"""Decisioning started in-process for a test module, on its own database and event namespace."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import nats
import pytest
from nats.aio.msg import Msg

import omni_gateway.main as gateway_main
import omni_segmentation.main as segmentation_main
from omni.decisioning.v1 import decisioning_pb2_grpc
from omni.gateway.v1 import gateway_pb2_grpc
from omni.segmentation.v1 import segmentation_pb2_grpc
from omni_decisioning.main import Settings, start
from omni_kit.db import create_engine
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres

from .support import Decisioning, Published


def _neighbour_settings(postgres: EmbeddedPostgres, nats_server: EmbeddedNats, prefix: str) -> dict[str, Any]:
    """Settings of segmentation or the gateway on a database of its own, in a namespace of its own: they only
    answer decisioning's questions about segments and templates, and must not take its events."""
    database = f"{prefix}_{uuid.uuid4().hex[:16]}"
    postgres.create_database(database)
    return {
        "database_url": postgres.url(database),
        "nats_url": nats_server.url,
        "grpc_host": "127.0.0.1",
        "grpc_port": 0,
        "event_namespace": "t" + uuid.uuid4().hex[:10],
        "migrate_on_start": True,
        "shutdown_grace_s": 1.0,
    }


@pytest.fixture(scope="module")
async def decisioning(postgres: EmbeddedPostgres, nats_server: EmbeddedNats) -> AsyncIterator[Decisioning]:
    """Decisioning on a fresh database and namespace for the whole module, with a subscriber on its events,
    and the segmentation and gateway it asks whether a new journey's segment and template exist."""
    async for running in decisioning_with_neighbours(postgres, nats_server):
        yield running


async def decisioning_with_neighbours(
    postgres: EmbeddedPostgres, nats_server: EmbeddedNats, **extra: Any
) -> AsyncIterator[Decisioning]:
    """Decisioning (with `extra` settings) and the segmentation and gateway it asks at creates."""
    async with contextlib.AsyncExitStack() as stack:
        neighbours = []
        for prefix in ("dec_segmentation", "dec_gateway"):
            settings = _neighbour_settings(postgres, nats_server, prefix)
            neighbours.append(settings)
            stack.callback(postgres.drop_database, settings["database_url"].rsplit("/", 1)[1])
        segmentation = await segmentation_main.start(segmentation_main.Settings(**neighbours[0]))
        stack.push_async_callback(segmentation.close)
        gateway = await gateway_main.start(
            gateway_main.Settings(
                **neighbours[1],
                email_http_host="127.0.0.1",
                email_http_port=0,
                bounce_smtp_host="127.0.0.1",
                bounce_smtp_port=0,
            )
        )
        stack.push_async_callback(gateway.close)
        segmentation_channel = grpc.aio.insecure_channel(f"127.0.0.1:{segmentation.port}")
        stack.push_async_callback(segmentation_channel.close)
        gateway_channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
        stack.push_async_callback(gateway_channel.close)
        async for running in _decisioning(
            postgres,
            nats_server,
            segmentation_target=f"127.0.0.1:{segmentation.port}",
            gateway_target=f"127.0.0.1:{gateway.port}",
            **extra,
        ):
            running.segmentation = segmentation_pb2_grpc.SegmentationServiceStub(segmentation_channel)
            running.gateway = gateway_pb2_grpc.GatewayServiceStub(gateway_channel)
            yield running


async def _decisioning(
    postgres: EmbeddedPostgres,
    nats_server: EmbeddedNats,
    *,
    segmentation_target: str,
    gateway_target: str,
    **extra: Any,
) -> AsyncIterator[Decisioning]:
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
        segmentation_target=segmentation_target,
        gateway_target=gateway_target,
        **extra,
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
