"""All five services started for real, in this process, on one PostgreSQL and one NATS.

They run in-process (each with its own database, gRPC server on a free port and event consumers) so that one
in-memory span exporter sees the spans of all of them: that is how the stories check one trace end to end.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from omni.decisioning.v1 import decisioning_pb2_grpc
from omni.gateway.v1 import gateway_pb2_grpc
from omni.identity.v1 import identity_pb2_grpc, matching_pb2_grpc
from omni.profile.v1 import profile_pb2_grpc
from omni.segmentation.v1 import segmentation_pb2_grpc
from omni_decisioning import main as decisioning_main
from omni_gateway import main as gateway_main
from omni_identity import main as identity_main
from omni_kit.embedded import EmbeddedNats, SmtpSink
from omni_kit.runtime import Runtime
from omni_profile import main as profile_main
from omni_segmentation import main as segmentation_main

_exporter = InMemorySpanExporter()


@pytest.fixture(scope="session")
def span_exporter() -> Iterator[InMemorySpanExporter]:
    """The in-memory exporter behind this process's tracer provider (installed once per process)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(_exporter))
    yield _exporter


@dataclass
class Omni:
    """Stubs of the five running services."""

    identity: identity_pb2_grpc.IdentityServiceStub
    matching: matching_pb2_grpc.MatchingServiceStub
    profile: profile_pb2_grpc.ProfileServiceStub
    segmentation: segmentation_pb2_grpc.SegmentationServiceStub
    decisioning: decisioning_pb2_grpc.DecisioningServiceStub
    gateway: gateway_pb2_grpc.GatewayServiceStub
    namespace: str
    databases: dict[str, str] = field(default_factory=dict)
    """Each service's database URL, by service name, for checking what a service holds."""


@pytest.fixture
async def omni(
    make_database: Callable[..., str],
    nats_server: EmbeddedNats,
    smtp_sink: SmtpSink,
    span_exporter: InMemorySpanExporter,
) -> AsyncIterator[Omni]:
    """Start identity, profile, segmentation, decisioning and gateway, wired to each other."""
    namespace = "e2e" + uuid.uuid4().hex[:8]
    common: dict[str, Any] = {
        "nats_url": nats_server.url,
        "grpc_host": "127.0.0.1",
        "grpc_port": 0,
        "event_namespace": namespace,
        "migrate_on_start": True,
        "outbox_poll_interval_s": 0.05,
        "shutdown_grace_s": 1.0,
    }
    runtimes: list[Runtime] = []
    channels: list[grpc.aio.Channel] = []
    databases: dict[str, str] = {}

    def database(service: str) -> str:
        databases[service] = make_database(f"e2e_{service}")
        return databases[service]

    def connect(runtime: Runtime) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}")
        channels.append(channel)
        return channel

    try:
        identity = await identity_main.start(
            identity_main.Settings(database_url=database("identity"), **common)
        )
        runtimes.append(identity)
        profile = await profile_main.start(
            profile_main.Settings(
                database_url=database("profile"),
                identity_target=f"127.0.0.1:{identity.port}",
                **common,
            )
        )
        runtimes.append(profile)
        segmentation = await segmentation_main.start(
            segmentation_main.Settings(
                database_url=database("segmentation"), jobs_poll_interval_s=0.2, **common
            )
        )
        runtimes.append(segmentation)
        gateway = await gateway_main.start(
            gateway_main.Settings(
                database_url=database("gateway"),
                identity_target=f"127.0.0.1:{identity.port}",
                profile_target=f"127.0.0.1:{profile.port}",
                smtp_host="127.0.0.1",
                smtp_port=smtp_sink.port,
                smtp_from="shop@omni.test",
                **common,
            )
        )
        runtimes.append(gateway)
        decisioning = await decisioning_main.start(
            decisioning_main.Settings(
                database_url=database("decisioning"),
                segmentation_target=f"127.0.0.1:{segmentation.port}",
                gateway_target=f"127.0.0.1:{gateway.port}",
                **common,
            )
        )
        runtimes.append(decisioning)
        identity_channel = connect(identity)
        yield Omni(
            identity=identity_pb2_grpc.IdentityServiceStub(identity_channel),
            matching=matching_pb2_grpc.MatchingServiceStub(identity_channel),
            profile=profile_pb2_grpc.ProfileServiceStub(connect(profile)),
            segmentation=segmentation_pb2_grpc.SegmentationServiceStub(connect(segmentation)),
            decisioning=decisioning_pb2_grpc.DecisioningServiceStub(connect(decisioning)),
            gateway=gateway_pb2_grpc.GatewayServiceStub(connect(gateway)),
            namespace=namespace,
            databases=databases,
        )
    finally:
        for channel in channels:
            await channel.close()
        for runtime in reversed(runtimes):
            await runtime.close()
