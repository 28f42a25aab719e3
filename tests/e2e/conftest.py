"""All five services started for real, in this process, on one PostgreSQL and one NATS.

They run in-process (each with its own database, gRPC server on a free port and event consumers) so that one
in-memory span exporter sees the spans of all of them: that is how the stories check one trace end to end.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
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
from omni_kit.grpc_client import channel
from omni_kit.runtime import Runtime
from omni_kit.security import ClientSecurity
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
    """Stubs of the five running services, and the services themselves by name ("identity", "profile" …)."""

    identity: identity_pb2_grpc.IdentityServiceStub
    matching: matching_pb2_grpc.MatchingServiceStub
    profile: profile_pb2_grpc.ProfileServiceStub
    segmentation: segmentation_pb2_grpc.SegmentationServiceStub
    decisioning: decisioning_pb2_grpc.DecisioningServiceStub
    gateway: gateway_pb2_grpc.GatewayServiceStub
    namespace: str
    databases: dict[str, str] = field(default_factory=dict)
    """Each service's database URL, by service name, for checking what a service holds."""
    runtimes: dict[str, Runtime] = field(default_factory=dict)
    channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def running_omni(
    make_database: Callable[[str], str],
    nats_server: EmbeddedNats,
    smtp_sink: SmtpSink,
    *,
    shared_events: bool = True,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    client_security: ClientSecurity | None = None,
) -> AsyncIterator[Omni]:
    """Identity, profile, segmentation, decisioning and gateway, calling each other over gRPC.

    They share one event namespace, so each follows what the others publish; with ``shared_events=False``
    each has a namespace of its own (``Omni.namespace`` + its name), so what a service writes comes only from
    the calls it is sent. ``settings`` overrides settings by service name; the test's own channels use
    ``client_security`` (TLS, certificate, token) when given.
    """
    namespace = "e2e" + uuid.uuid4().hex[:8]
    databases: dict[str, str] = {}

    def configure(service: str, **specific: Any) -> dict[str, Any]:
        databases[service] = make_database(f"e2e_{service}")
        return {
            "database_url": databases[service],
            "nats_url": nats_server.url,
            "grpc_host": "127.0.0.1",
            "grpc_port": 0,
            "event_namespace": namespace if shared_events else f"{namespace}{service}",
            "migrate_on_start": True,
            "outbox_poll_interval_s": 0.05,
            "shutdown_grace_s": 1.0,
            **specific,
            **(settings or {}).get(service, {}),
        }

    runtimes: dict[str, Runtime] = {}
    channels: dict[str, grpc.aio.Channel] = {}

    def connect(name: str) -> grpc.aio.Channel:
        target = f"127.0.0.1:{runtimes[name].port}"
        if client_security is None:
            channels[name] = grpc.aio.insecure_channel(target)
        else:
            channels[name] = channel(target, service=name, timeout_s=30, security=client_security)
        return channels[name]

    try:
        identity = runtimes["identity"] = await identity_main.start(
            identity_main.Settings(**configure("identity"))
        )
        profile = runtimes["profile"] = await profile_main.start(
            profile_main.Settings(**configure("profile", identity_target=f"127.0.0.1:{identity.port}"))
        )
        runtimes["segmentation"] = await segmentation_main.start(
            segmentation_main.Settings(**configure("segmentation", jobs_poll_interval_s=0.2))
        )
        runtimes["gateway"] = await gateway_main.start(
            gateway_main.Settings(
                **configure(
                    "gateway",
                    identity_target=f"127.0.0.1:{identity.port}",
                    profile_target=f"127.0.0.1:{profile.port}",
                    smtp_host="127.0.0.1",
                    smtp_port=smtp_sink.port,
                    smtp_from="shop@omni.test",
                    email_http_host="127.0.0.1",
                    email_http_port=0,
                    bounce_smtp_host="127.0.0.1",
                    bounce_smtp_port=0,
                )
            )
        )
        runtimes["decisioning"] = await decisioning_main.start(
            decisioning_main.Settings(
                **configure(
                    "decisioning",
                    segmentation_target=f"127.0.0.1:{runtimes['segmentation'].port}",
                    gateway_target=f"127.0.0.1:{runtimes['gateway'].port}",
                    profile_target=f"127.0.0.1:{profile.port}",
                )
            )
        )
        identity_channel = connect("identity")
        yield Omni(
            identity=identity_pb2_grpc.IdentityServiceStub(identity_channel),
            matching=matching_pb2_grpc.MatchingServiceStub(identity_channel),
            profile=profile_pb2_grpc.ProfileServiceStub(connect("profile")),
            segmentation=segmentation_pb2_grpc.SegmentationServiceStub(connect("segmentation")),
            decisioning=decisioning_pb2_grpc.DecisioningServiceStub(connect("decisioning")),
            gateway=gateway_pb2_grpc.GatewayServiceStub(connect("gateway")),
            namespace=namespace,
            databases=databases,
            runtimes=runtimes,
            channels=channels,
        )
    finally:
        for open_channel in channels.values():
            await open_channel.close()
        for runtime in reversed(runtimes.values()):
            await runtime.close()


@pytest.fixture
async def omni(
    make_database: Callable[..., str],
    nats_server: EmbeddedNats,
    smtp_sink: SmtpSink,
    span_exporter: InMemorySpanExporter,
) -> AsyncIterator[Omni]:
    """Start identity, profile, segmentation, decisioning and gateway, wired to each other."""
    async with running_omni(make_database, nats_server, smtp_sink) as running:
        yield running
