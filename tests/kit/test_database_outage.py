"""The five services without their database: at start they answer health checks NOT_SERVING and calls
UNAVAILABLE, waiting with backoff until it answers; when it goes away under them they answer UNAVAILABLE
(which clients retry, unlike INTERNAL) and report NOT_SERVING, and serve again when it is back.

The PostgreSQL here is this module's own, on a fixed port, so stopping it disturbs no other test."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from omni.common.v1 import common_pb2
from omni.decisioning.v1 import decisioning_pb2, decisioning_pb2_grpc
from omni.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from omni.identity.v1 import identity_pb2, identity_pb2_grpc
from omni.profile.v1 import profile_pb2, profile_pb2_grpc
from omni.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc
from omni_decisioning import main as decisioning_main
from omni_gateway import main as gateway_main
from omni_identity import main as identity_main
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres, SmtpSink, free_port
from omni_kit.errors import status_details
from omni_kit.runtime import Runtime
from omni_profile import main as profile_main
from omni_segmentation import main as segmentation_main

SERVICES = ("identity", "profile", "segmentation", "decisioning", "gateway")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this module's own, on a fixed port so that it comes back where the services look."""
    server = EmbeddedPostgres(tmp_path_factory.mktemp("outage-pg"), free_port(), durable=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Five:
    """Where the five services listen and how to call them."""

    ports: dict[str, int]
    channels: dict[str, grpc.aio.Channel]

    async def health(self, service: str) -> Any:
        stub = health_pb2_grpc.HealthStub(self.channels[service])
        return (await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)).status

    async def wait_for_health(self, status: Any, within: float = 20.0) -> None:
        """Wait until all five report status."""
        async with asyncio.timeout(within):
            while True:
                if [await self.health(s) for s in SERVICES] == [status] * len(SERVICES):
                    return
                await asyncio.sleep(0.1)

    def calls(self) -> dict[str, Callable[[], Awaitable[Any]]]:
        """One call per service that needs its database."""
        identity = identity_pb2_grpc.IdentityServiceStub(self.channels["identity"])
        profile = profile_pb2_grpc.ProfileServiceStub(self.channels["profile"])
        segmentation = segmentation_pb2_grpc.SegmentationServiceStub(self.channels["segmentation"])
        decisioning = decisioning_pb2_grpc.DecisioningServiceStub(self.channels["decisioning"])
        gateway = gateway_pb2_grpc.GatewayServiceStub(self.channels["gateway"])
        email = common_pb2.Identifier(type="email", value=f"{uuid.uuid4().hex[:8]}@example.com")
        return {
            "identity": lambda: identity.ResolvePerson(
                identity_pb2.ResolvePersonRequest(identifiers=[email]), timeout=15
            ),
            "profile": lambda: profile.ListComputedTraits(
                profile_pb2.ListComputedTraitsRequest(), timeout=15
            ),
            "segmentation": lambda: segmentation.ListSegments(
                segmentation_pb2.ListSegmentsRequest(), timeout=15
            ),
            "decisioning": lambda: decisioning.ListJourneys(
                decisioning_pb2.ListJourneysRequest(), timeout=15
            ),
            "gateway": lambda: gateway.GetMessage(
                gateway_pb2.GetMessageRequest(message_id=str(uuid.uuid4())), timeout=15
            ),
        }


def _settings(
    postgres: EmbeddedPostgres, nats_server: EmbeddedNats, smtp_sink: SmtpSink, ports: dict[str, int]
) -> dict[str, Any]:
    namespace = "outage" + uuid.uuid4().hex[:8]
    databases = {service: f"{service}_{uuid.uuid4().hex[:12]}" for service in SERVICES}
    for database in databases.values():
        postgres.create_database(database)

    def common(service: str) -> dict[str, Any]:
        return {
            "database_url": postgres.url(databases[service]),
            "nats_url": nats_server.url,
            "grpc_host": "127.0.0.1",
            "grpc_port": ports[service],
            "event_namespace": namespace,
            "migrate_on_start": True,
            "shutdown_grace_s": 1.0,
            "db_health_interval_s": 0.2,
        }

    return {
        "identity": identity_main.Settings(**common("identity")),
        "profile": profile_main.Settings(
            identity_target=f"127.0.0.1:{ports['identity']}", **common("profile")
        ),
        "segmentation": segmentation_main.Settings(**common("segmentation")),
        "decisioning": decisioning_main.Settings(**common("decisioning")),
        "gateway": gateway_main.Settings(
            identity_target=f"127.0.0.1:{ports['identity']}",
            profile_target=f"127.0.0.1:{ports['profile']}",
            smtp_port=smtp_sink.port,
            email_http_host="127.0.0.1",
            email_http_port=0,
            bounce_smtp_host="127.0.0.1",
            bounce_smtp_port=0,
            **common("gateway"),
        ),
    }


MAINS: dict[str, Any] = {
    "identity": identity_main,
    "profile": profile_main,
    "segmentation": segmentation_main,
    "decisioning": decisioning_main,
    "gateway": gateway_main,
}


@pytest.fixture
async def five(
    own_postgres: EmbeddedPostgres, nats_server: EmbeddedNats, smtp_sink: SmtpSink
) -> AsyncIterator[tuple[Five, list[asyncio.Task[Runtime]], dict[str, Any]]]:
    """Where the five will listen, and a list to put their start tasks in; closes whatever started."""
    ports = {service: free_port() for service in SERVICES}
    settings = _settings(own_postgres, nats_server, smtp_sink, ports)
    channels = {s: grpc.aio.insecure_channel(f"127.0.0.1:{ports[s]}") for s in SERVICES}
    starts: list[asyncio.Task[Runtime]] = []
    try:
        yield Five(ports, channels), starts, settings
    finally:
        if not own_postgres.is_running():
            own_postgres.start()
        for channel in channels.values():
            await channel.close()
        for task in starts:
            if not task.done():
                task.cancel()
        for result in await asyncio.gather(*starts, return_exceptions=True):
            if isinstance(result, Runtime):
                await result.close()


async def _code_of(call: Callable[[], Awaitable[Any]]) -> grpc.StatusCode:
    try:
        await call()
    except grpc.aio.AioRpcError as error:
        code: grpc.StatusCode = error.code()
        return code
    return grpc.StatusCode.OK


async def test_every_service_starts_without_its_database_not_serving_and_serves_once_it_answers(
    own_postgres: EmbeddedPostgres,
    five: tuple[Five, list[asyncio.Task[Runtime]], dict[str, Any]],
) -> None:
    services, starts, settings = five
    own_postgres.stop()
    starts += [asyncio.create_task(MAINS[s].start(settings[s]), name=f"start-{s}") for s in SERVICES]

    await services.wait_for_health(NOT_SERVING)
    await asyncio.sleep(1.5)  # several attempts to reach the database have failed by now
    assert [task.done() for task in starts] == [False] * len(SERVICES), "a service gave up starting"
    await services.wait_for_health(NOT_SERVING, within=2)
    for service, call in services.calls().items():
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call()
        details = status_details(refused.value)
        assert details.code == grpc.StatusCode.UNAVAILABLE, service
        assert details.error_info is not None and details.error_info.reason == "STARTING", service

    own_postgres.start()
    async with asyncio.timeout(60):
        await asyncio.gather(*starts)
    await services.wait_for_health(SERVING, within=5)
    codes = {service: await _code_of(call) for service, call in services.calls().items()}
    assert codes == {**dict.fromkeys(SERVICES, grpc.StatusCode.OK), "gateway": grpc.StatusCode.NOT_FOUND}


async def test_a_database_outage_answers_unavailable_and_not_serving_then_recovers(
    own_postgres: EmbeddedPostgres,
    five: tuple[Five, list[asyncio.Task[Runtime]], dict[str, Any]],
) -> None:
    services, starts, settings = five
    starts += [asyncio.create_task(MAINS[s].start(settings[s]), name=f"start-{s}") for s in SERVICES]
    async with asyncio.timeout(60):
        await asyncio.gather(*starts)
    await services.wait_for_health(SERVING, within=5)

    own_postgres.stop()
    for service, call in services.calls().items():
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call()
        details = status_details(refused.value)
        assert details.code == grpc.StatusCode.UNAVAILABLE, (service, details)
        assert details.error_info is not None, service
        assert details.error_info.reason == "DATABASE_UNAVAILABLE", service
    await services.wait_for_health(NOT_SERVING, within=5)
    for service in SERVICES:  # alive all the same: no liveness probe restarts them for an outage
        stub = health_pb2_grpc.HealthStub(services.channels[service])
        alive = await stub.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=2)
        assert alive.status == SERVING, service

    own_postgres.start()
    await services.wait_for_health(SERVING, within=10)
    codes = {service: await _code_of(call) for service, call in services.calls().items()}
    assert codes == {**dict.fromkeys(SERVICES, grpc.StatusCode.OK), "gateway": grpc.StatusCode.NOT_FOUND}
