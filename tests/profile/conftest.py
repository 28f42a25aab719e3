"""Identity and profile started in-process for a test module, on fresh databases and their own namespace."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import nats
import pytest
from nats.aio.msg import Msg

from omni.identity.v1 import identity_pb2_grpc
from omni.profile.v1 import profile_pb2_grpc
from omni_identity import main as identity_main
from omni_kit.bus import envelopes_in
from omni_kit.db import create_engine
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres
from omni_profile import main as profile_main

from .support import COMMON, EventLog, Services, close_runtime


@pytest.fixture(scope="module")
async def services(postgres: EmbeddedPostgres, nats_server: EmbeddedNats) -> AsyncIterator[Services]:
    """The real identity service and profile wired to it, for the whole module; torn down afterwards."""
    # New computed traits are backfilled after one refresh: keep it short for the tests.
    async with running_services(postgres, nats_server, computed_traits_refresh_s=0.2) as running:
        yield running


WRITE_KEY = "wk_tests"
"""The write key of the tracking endpoint `tracked` runs (source "web")."""


@pytest.fixture(scope="module")
async def tracked(postgres: EmbeddedPostgres, nats_server: EmbeddedNats) -> AsyncIterator[Services]:
    """Identity and profile with its Segment-compatible endpoint on a free port (services.http), for the whole
    module."""
    async with running_services(
        postgres, nats_server, http_host="127.0.0.1", http_port=0, write_keys={WRITE_KEY: "web"}
    ) as running:
        yield running


@contextlib.asynccontextmanager
async def running_services(
    postgres: EmbeddedPostgres, nats_server: EmbeddedNats, **profile_settings: Any
) -> AsyncIterator[Services]:
    """Identity and profile on fresh databases and their own namespace, profile with these settings."""
    namespace = "t" + uuid.uuid4().hex[:10]
    identity_db = f"identity_{uuid.uuid4().hex[:16]}"
    profile_db = f"profile_{uuid.uuid4().hex[:16]}"
    postgres.create_database(identity_db)
    postgres.create_database(profile_db)
    shared = {**COMMON, "nats_url": nats_server.url, "event_namespace": namespace}
    identity_runtime = await identity_main.start(
        identity_main.Settings.model_validate({**shared, "database_url": postgres.url(identity_db)})
    )
    profile_runtime = await profile_main.start(
        profile_main.Settings.model_validate(
            {
                **shared,
                "database_url": postgres.url(profile_db),
                "identity_target": f"127.0.0.1:{identity_runtime.port}",
                **profile_settings,
            }
        )
    )
    client = await nats.connect(nats_server.url)
    log = EventLog()

    async def received(message: Msg) -> None:
        log.envelopes.extend(envelopes_in(message.data, message.headers))
        log.arrived.set()

    await client.subscribe(f"{namespace}.events.>", cb=received)
    await client.flush()
    database = create_engine(postgres.url(profile_db), application_name="omni-test-profile")
    profile_channel = grpc.aio.insecure_channel(f"127.0.0.1:{profile_runtime.port}")
    identity_channel = grpc.aio.insecure_channel(f"127.0.0.1:{identity_runtime.port}")
    http = profile_runtime.http
    try:
        yield Services(
            profile_runtime=profile_runtime,
            identity_runtime=identity_runtime,
            profile=profile_pb2_grpc.ProfileServiceStub(profile_channel),
            identity=identity_pb2_grpc.IdentityServiceStub(identity_channel),
            namespace=namespace,
            database=database,
            js=client.jetstream(),
            events=log,
            http_url=None if http is None else f"http://127.0.0.1:{http.port}",
        )
    finally:
        await profile_channel.close()
        await identity_channel.close()
        await database.dispose()
        await client.drain()
        await close_runtime(profile_runtime)
        await close_runtime(identity_runtime)
        postgres.drop_database(profile_db)
        postgres.drop_database(identity_db)
