"""Rate limits per client (omni_kit.ratelimit): token buckets, and a service's runtime with authorisation on
refusing an authenticated client over its limit with RESOURCE_EXHAUSTED and a RetryInfo, while other clients,
clients given their own rate, and health checks go on."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from omni.identity.v1 import identity_pb2
from omni_kit.embedded import EmbeddedNats
from omni_kit.errors import status_details
from omni_kit.ratelimit import RATE_LIMITED, TokenBuckets
from omni_kit.runtime import Runtime
from omni_kit.settings import ServiceSettings
from tests.tokens import AUDIENCE, ISSUER, Issuer

GET_PERSON = "/omni.identity.v1.IdentityService/GetPerson"


def test_a_bucket_lets_a_burst_through_then_its_rate() -> None:
    now = [0.0]
    buckets = TokenBuckets(2.0, 3, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(3)] == [None, None, None]
    assert buckets.take("a") == pytest.approx(0.5)
    assert buckets.take("b") is None, "each key has its own bucket"
    now[0] += 0.5
    assert buckets.take("a") is None
    assert buckets.take("a") == pytest.approx(0.5)


@pytest.fixture
async def limited(
    make_database: Callable[..., str], nats_server: EmbeddedNats, tmp_path: Path
) -> AsyncIterator[tuple[Any, Issuer, grpc.aio.Channel]]:
    issuer = Issuer.create(tmp_path)
    settings = ServiceSettings(
        database_url=make_database("ratelimit"),
        nats_url=nats_server.url,
        grpc_host="127.0.0.1",
        auth_enabled=True,
        auth_jwks_file=issuer.jwks_file,
        auth_jwt_issuer=ISSUER,
        auth_jwt_audience=AUDIENCE,
        rate_limit_per_s=1.0,
        rate_limit_burst=2,
        rate_limits={"batch-importer": 0},
    )
    runtime = Runtime("ratelimit", settings)

    async def get_person(request: Any, context: Any) -> identity_pb2.GetPersonResponse:
        return identity_pb2.GetPersonResponse()

    def register(server: grpc.aio.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(
            get_person,
            request_deserializer=identity_pb2.GetPersonRequest.FromString,
            response_serializer=identity_pb2.GetPersonResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "omni.identity.v1.IdentityService", {"GetPerson": handler}
                ),
            )
        )

    await runtime.open()
    await runtime.serve(service_names=["omni.identity.v1.IdentityService"], register=register)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}")
    call = channel.unary_unary(
        GET_PERSON,
        request_serializer=identity_pb2.GetPersonRequest.SerializeToString,
        response_deserializer=identity_pb2.GetPersonResponse.FromString,
    )
    yield call, issuer, channel
    await channel.close()
    await runtime.close()


async def test_a_client_over_its_limit_is_told_when_to_retry_and_others_go_on(
    limited: tuple[Any, Issuer, grpc.aio.Channel],
) -> None:
    call, issuer, channel = limited
    request = identity_pb2.GetPersonRequest(person_id="0190a3f0-0000-7000-8000-000000000001")
    alice = issuer.bearer(["identity.persons:read"], subject="alice")
    for _ in range(2):
        await call(request, metadata=alice, timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(request, metadata=alice, timeout=5)
    details = status_details(refused.value)
    assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.error_info is not None and details.error_info.reason == RATE_LIMITED
    assert details.error_info.metadata["client"] == "alice"
    assert details.retry_delay_s is not None and 0 < details.retry_delay_s <= 1.0

    # Another client has its own bucket; a client given rate 0 is not limited; health is never limited.
    await call(request, metadata=issuer.bearer(["identity.persons:read"], subject="bob"), timeout=5)
    importer = issuer.bearer(["identity.persons:read"], subject="batch-importer")
    for _ in range(10):
        await call(request, metadata=importer, timeout=5)
    health = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
    for _ in range(5):
        answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
