"""Identity and profile started for real, in-process, per test module, and gateways wired to them.

Each module gets its own event namespace and databases; `start_gateway` starts a gateway with any setting
changed (an SMTP server that is down, quick retries), `gateway` is the module's one, delivering to the
session's SMTP sink; `down_port` and `late_sink` stand for an SMTP server that is down until the test
starts it.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import nats
import pytest
from nats.js import JetStreamContext

import omni_gateway.main as gateway_main
import omni_identity.main as identity_main
import omni_profile.main as profile_main
from omni.gateway.v1 import gateway_pb2_grpc
from omni.identity.v1 import identity_pb2_grpc
from omni.profile.v1 import profile_pb2_grpc
from omni_kit.db import create_engine
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres, SmtpSink, free_port

from ..events import recording
from .email_support import SECRET
from .support import EventLog, Gateway, Neighbours, StartGateway, Verdicts, verdicts_reached

EMAIL_ENDPOINTS_ANYWHERE: dict[str, Any] = {
    "email_http_host": "127.0.0.1",
    "email_http_port": 0,
    "bounce_smtp_host": "127.0.0.1",
    "bounce_smtp_port": 0,
    "email_token_secret": SECRET,
}
"""The gateway's HTTP and bounce endpoints on free ports (several gateways run at once in a test), and the
secret of its email links, so a test can read a tracked link (email_support.email_links)."""


def _common(
    postgres: EmbeddedPostgres,
    nats_server: EmbeddedNats,
    stack: contextlib.AsyncExitStack,
    prefix: str,
    namespace: str,
) -> dict[str, Any]:
    """Settings every service of the test shares, on a fresh database dropped when the stack closes."""
    database = f"{prefix}_{uuid.uuid4().hex[:16]}"
    postgres.create_database(database)
    stack.callback(postgres.drop_database, database)
    return {
        "database_url": postgres.url(database),
        "nats_url": nats_server.url,
        "grpc_host": "127.0.0.1",
        "grpc_port": 0,
        "event_namespace": namespace,
        "migrate_on_start": True,
        "outbox_poll_interval_s": 0.05,
        "shutdown_grace_s": 1.0,
    }


@pytest.fixture(scope="module")
async def neighbours(postgres: EmbeddedPostgres, nats_server: EmbeddedNats) -> AsyncIterator[Neighbours]:
    """Identity and profile on fresh databases, sharing a new event namespace, for the whole module."""
    namespace = "t" + uuid.uuid4().hex[:10]
    async with contextlib.AsyncExitStack() as stack:
        identity = await identity_main.start(
            identity_main.Settings(
                **_common(postgres, nats_server, stack, "gw_identity", namespace),
                # Subscriptions of the local push service (tests/gateway/push_service.py) are http.
                web_push_http_loopback=True,
            )
        )
        stack.push_async_callback(identity.close)
        identity_target = f"127.0.0.1:{identity.port}"
        profile = await profile_main.start(
            profile_main.Settings(
                **_common(postgres, nats_server, stack, "gw_profile", namespace),
                identity_target=identity_target,
            )
        )
        stack.push_async_callback(profile.close)
        profile_target = f"127.0.0.1:{profile.port}"
        identity_channel = grpc.aio.insecure_channel(identity_target)
        stack.push_async_callback(identity_channel.close)
        profile_channel = grpc.aio.insecure_channel(profile_target)
        stack.push_async_callback(profile_channel.close)
        verdicts = await stack.enter_async_context(recording(Verdicts(), nats_server.url, namespace))
        yield Neighbours(
            namespace=namespace,
            identity=cast(Any, identity_pb2_grpc.IdentityServiceStub(identity_channel)),
            profile=cast(Any, profile_pb2_grpc.ProfileServiceStub(profile_channel)),
            identity_target=identity_target,
            profile_target=profile_target,
            verdicts=verdicts,
        )


@contextlib.asynccontextmanager
async def _gateways(
    postgres: EmbeddedPostgres, nats_server: EmbeddedNats, neighbours: Neighbours
) -> AsyncIterator[StartGateway]:
    async with contextlib.AsyncExitStack() as stack:

        async def start(**overrides: Any) -> Gateway:
            settings = gateway_main.Settings(
                **{
                    **_common(postgres, nats_server, stack, "gw_gateway", neighbours.namespace),
                    "identity_target": neighbours.identity_target,
                    "profile_target": neighbours.profile_target,
                    "smtp_host": "127.0.0.1",
                    "smtp_timeout_s": 5.0,
                    **EMAIL_ENDPOINTS_ANYWHERE,
                    "jobs_poll_interval_s": 0.1,
                    # Each gateway of a test has its own database, so its own copy of the verdicts.
                    "verdicts_durable": f"contact-verdicts-{uuid.uuid4().hex[:8]}",
                    **overrides,
                }
            )
            runtime = await gateway_main.start(settings)
            stack.push_async_callback(runtime.close)
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}")
            stack.push_async_callback(channel.close)
            database = create_engine(settings.database_url, application_name="omni-test-gateway")
            stack.push_async_callback(database.dispose)
            gateway = Gateway(runtime, cast(Any, gateway_pb2_grpc.GatewayServiceStub(channel)), database)
            # It reads the verdicts announced so far before the test relies on them, and every later consent
            # answer waits for it (set_consent).
            await verdicts_reached(gateway, neighbours.verdicts.versions())
            neighbours.gateways.append(gateway)
            stack.callback(neighbours.gateways.remove, gateway)
            return gateway

        yield start


@pytest.fixture(scope="module")
async def gateway(
    postgres: EmbeddedPostgres, nats_server: EmbeddedNats, neighbours: Neighbours, smtp_sink: SmtpSink
) -> AsyncIterator[Gateway]:
    """The module's gateway, delivering to the session's SMTP sink."""
    async with _gateways(postgres, nats_server, neighbours) as start:
        yield await start(smtp_port=smtp_sink.port)


@pytest.fixture
async def start_gateway(
    postgres: EmbeddedPostgres, nats_server: EmbeddedNats, neighbours: Neighbours
) -> AsyncIterator[StartGateway]:
    """Start gateways with settings of the test's choosing; they stop when the test ends."""
    async with _gateways(postgres, nats_server, neighbours) as start:
        yield start


@pytest.fixture
async def events(neighbours: Neighbours, nats_server: EmbeddedNats) -> AsyncIterator[EventLog]:
    """Every event published on the module's namespace during the test."""
    async with recording(EventLog(), nats_server.url, neighbours.namespace) as log:
        yield log


@pytest.fixture
async def js(nats_server: EmbeddedNats) -> AsyncIterator[JetStreamContext]:
    """A JetStream client, to publish events as other services would."""
    client = await nats.connect(nats_server.url)
    try:
        yield client.jetstream()
    finally:
        await client.drain()


@pytest.fixture
def down_port() -> int:
    """A port no SMTP server listens on (yet)."""
    return free_port("127.0.0.1")


@pytest.fixture
def late_sink(tmp_path: Path, down_port: int) -> Iterator[SmtpSink]:
    """An SMTP sink for down_port, started by the test when the server should come back."""
    sink = SmtpSink(tmp_path / "late-mail", port=down_port)
    yield sink
    sink.stop()
