"""The gRPC bootstrap over a real socket: health, reflection, error mapping, graceful shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from omni.common.v1 import common_pb2
from omni_kit.errors import (
    MAX_DETAILS_BYTES,
    MAX_FIELD_VIOLATIONS,
    FieldViolation,
    InvalidArgument,
    NotFound,
    status_details,
)
from omni_kit.grpc_server import GrpcServer

SERVICE = "omni.test.v1.TestService"


def _register(release: asyncio.Event) -> object:
    async def fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if request == b"missing":
            raise NotFound(message="no such thing", reason="THING_NOT_FOUND")
        if request == b"bad":
            raise InvalidArgument(message="bad", violations=[FieldViolation("thing.name", "required")])
        if request == b"many":
            # Long paths and descriptions, thousands of them: ~1.5 MB listed whole.
            raise InvalidArgument(
                message="é" * 1000,
                violations=[FieldViolation(f"things[{i}].{'n' * 200}", "é" * 300) for i in range(5000)],
            )
        if request == b"database":
            # What asyncpg raises when PostgreSQL is down (unwrapped by SQLAlchemy).
            raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
        raise RuntimeError("secret internals")

    async def slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await release.wait()
        return b"finished:" + request

    async def typed(request: common_pb2.Identifier, context: grpc.aio.ServicerContext) -> bytes:
        return request.type.encode()

    handlers = {
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "Typed": grpc.unary_unary_rpc_method_handler(
            typed, request_deserializer=common_pb2.Identifier.FromString
        ),
    }

    def register(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))

    return register


@pytest.fixture
async def served() -> AsyncIterator[tuple[GrpcServer, grpc.aio.Channel, asyncio.Event]]:
    release = asyncio.Event()
    server = GrpcServer(
        domain="omni.test",
        service_names=[SERVICE],
        register=_register(release),  # type: ignore[arg-type]
        host="127.0.0.1",
        port=0,
    )
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    yield server, channel, release
    release.set()
    await channel.close()
    await server.stop(0)


async def test_health_reports_serving_for_server_and_service(
    served: tuple[GrpcServer, grpc.aio.Channel, asyncio.Event],
) -> None:
    _, channel, _ = served
    stub = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE):
        response = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=2)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_services(
    served: tuple[GrpcServer, grpc.aio.Channel, asyncio.Event],
) -> None:
    _, channel, _ = served
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    async for response in responses:
        names = {s.name for s in response.list_services_response.service}
        assert {SERVICE, "grpc.health.v1.Health"} <= names
        break


async def test_domain_errors_become_status_with_details(
    served: tuple[GrpcServer, grpc.aio.Channel, asyncio.Event],
) -> None:
    _, channel, _ = served
    call = channel.unary_unary(f"/{SERVICE}/Fail")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(b"bad", timeout=2)
    details = status_details(raised.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == {"thing.name"}
    assert details.error_info is not None and details.error_info.domain == "omni.test"

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(b"missing", timeout=2)
    details = status_details(raised.value)
    assert details.code == grpc.StatusCode.NOT_FOUND
    assert details.error_info is not None and details.error_info.reason == "THING_NOT_FOUND"


async def test_thousands_of_violations_answer_invalid_argument_with_capped_details(
    served: tuple[GrpcServer, grpc.aio.Channel, asyncio.Event],
) -> None:
    _, channel, _ = served
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary(f"/{SERVICE}/Fail")(b"many", timeout=2)
    details = status_details(raised.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert 0 < len(details.field_violations) <= MAX_FIELD_VIOLATIONS
    assert details.field_violations[0].field.startswith("things[0].")
    assert details.omitted_violations == 5000 - len(details.field_violations)
    trailers = dict(raised.value.trailing_metadata() or ())
    assert len(trailers["grpc-status-details-bin"]) <= MAX_DETAILS_BYTES


async def test_unexpected_errors_are_internal_without_leaking(
    served: tuple[GrpcServer, grpc.aio.Channel, asyncio.Event],
) -> None:
    _, channel, _ = served
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary(f"/{SERVICE}/Fail")(b"boom", timeout=2)
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (raised.value.details() or "")


async def test_graceful_stop_finishes_in_flight_calls_and_reports_not_serving(
    served: tuple[GrpcServer, grpc.aio.Channel, asyncio.Event],
) -> None:
    server, channel, release = served
    in_flight = asyncio.ensure_future(channel.unary_unary(f"/{SERVICE}/Slow")(b"x", timeout=10))
    await asyncio.sleep(0.2)
    stopping = asyncio.create_task(server.stop(5))
    await asyncio.sleep(0.2)
    status = await server.health.Check(health_pb2.HealthCheckRequest(service=SERVICE), None)  # type: ignore[arg-type]
    assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
    release.set()
    assert await in_flight == b"finished:x"
    await stopping


async def test_bytes_that_are_not_the_request_type_are_invalid_argument(
    served: tuple[GrpcServer, grpc.aio.Channel, asyncio.Event],
) -> None:
    _, channel, _ = served
    call = channel.unary_unary(f"/{SERVICE}/Typed")
    good = common_pb2.Identifier(type="email", value="a@example.com").SerializeToString()
    assert await call(good, timeout=2) == b"email"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(b"\x0a\xff\xff\xff\xff", timeout=2)
    details = status_details(raised.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == {"request"}
    assert details.error_info is not None and details.error_info.reason == "MALFORMED_REQUEST"


async def test_an_unreachable_database_is_unavailable_not_internal(
    served: tuple[GrpcServer, grpc.aio.Channel, asyncio.Event],
) -> None:
    _, channel, _ = served
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary(f"/{SERVICE}/Fail")(b"database", timeout=2)
    details = status_details(raised.value)
    assert details.code == grpc.StatusCode.UNAVAILABLE
    assert details.error_info is not None and details.error_info.reason == "DATABASE_UNAVAILABLE"
    assert "5432" not in details.message


async def test_a_server_started_before_its_services_is_not_serving_and_refuses_their_calls() -> None:
    release = asyncio.Event()
    release.set()
    server = GrpcServer(domain="omni.test", host="127.0.0.1", port=0)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    health = health_pb2_grpc.HealthStub(channel)
    try:
        status = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
        # Alive all the same: a liveness probe must not restart a service that waits for its database.
        status = await health.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=2)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await channel.unary_unary(f"/{SERVICE}/Slow")(b"early", timeout=2)
        details = status_details(raised.value)
        assert details.code == grpc.StatusCode.UNAVAILABLE
        assert details.error_info is not None and details.error_info.reason == "STARTING"

        server.add_services([SERVICE], _register(release))  # type: ignore[arg-type]
        await server.set_serving(True)
        for name in ("", SERVICE):
            status = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=2)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
        assert await channel.unary_unary(f"/{SERVICE}/Slow")(b"now", timeout=2) == b"finished:now"
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await channel.unary_unary(f"/{SERVICE}/Missing")(b"", timeout=2)
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        async for response in reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        ):
            assert SERVICE in {s.name for s in response.list_services_response.service}
            break

        await server.set_serving(False)
        status = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=2)
        assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await channel.close()
        await server.stop(0)


async def test_a_stopping_server_refuses_new_calls_while_the_one_in_flight_finishes(
    served: tuple[GrpcServer, grpc.aio.Channel, asyncio.Event],
) -> None:
    server, channel, release = served
    call = channel.unary_unary(f"/{SERVICE}/Slow")
    in_flight = asyncio.ensure_future(call(b"first", timeout=10))
    await asyncio.sleep(0.2)
    stopping = asyncio.create_task(server.stop(5))
    await asyncio.sleep(0.2)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(b"late", timeout=2)
    details = status_details(raised.value)
    assert details.code == grpc.StatusCode.UNAVAILABLE
    assert details.error_info is not None and details.error_info.reason == "STOPPING"
    assert not stopping.done()
    release.set()
    assert await in_flight == b"finished:first"
    await stopping
