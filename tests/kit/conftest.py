"""Fixtures of the event-log and scheduler tests: a database with the bus and job tables and a scratch table,
and a JetStream context on a namespace of its own."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import nats
import pytest
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine

from omni_kit.bus import bus_metadata, ensure_streams
from omni_kit.db import create_engine
from omni_kit.scheduler import jobs_metadata

from .support import test_metadata


@pytest.fixture
async def engine(make_database: Callable[..., Any]) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(make_database("bus"), application_name="omni-test-bus")
    async with engine.begin() as connection:
        await connection.run_sync(bus_metadata.create_all)
        await connection.run_sync(jobs_metadata.create_all)
        await connection.run_sync(test_metadata.create_all)
    yield engine
    await engine.dispose()


@pytest.fixture
async def js(nats_server: Any) -> AsyncIterator[tuple[JetStreamContext, str]]:
    client = await nats.connect(nats_server.url)
    namespace = "t" + uuid.uuid4().hex[:10]
    context = client.jetstream()
    await ensure_streams(context, namespace=namespace)
    yield context, namespace
    await client.drain()
