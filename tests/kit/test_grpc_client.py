"""Deadlines of the channels omni_kit opens, over real sockets: the configured one on every call, and no more
than the call being served has left (a servicer calling another service)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest

from omni_kit import grpc_client
from omni_kit.grpc_server import GrpcServer

DOWNSTREAM = "omni.test.v1.Downstream"
UPSTREAM = "omni.test.v1.Upstream"


@dataclass
class Downstream:
    """A server whose one method waits delay_s and records the time each call had left on arrival."""

    delay_s: float = 0.0
    time_left: list[float | None] = field(default_factory=list)

    def handler(self) -> grpc.GenericRpcHandler:
        async def wait(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.time_left.append(context.time_remaining())
            await asyncio.sleep(self.delay_s)
            return request

        return grpc.method_handlers_generic_handler(
            DOWNSTREAM, {"Wait": grpc.unary_unary_rpc_method_handler(wait)}
        )


@pytest.fixture
async def downstream() -> AsyncIterator[tuple[Downstream, str]]:
    state = Downstream()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((state.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield state, f"127.0.0.1:{port}"
    await server.stop(0)


async def test_every_call_carries_the_configured_deadline(downstream: tuple[Downstream, str]) -> None:
    state, target = downstream
    state.delay_s = 3.0
    # Under 2 s, the service config's timeout made grpcio fail every call at once; from 2 s on it sent none.
    for timeout_s in (1.0, 2.0):
        channel = grpc_client.channel(
            target, service=DOWNSTREAM, idempotent_methods=("Wait",), timeout_s=timeout_s
        )
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await channel.unary_unary(f"/{DOWNSTREAM}/Wait")(b"x")
        waited = time.monotonic() - started
        await channel.close()
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert timeout_s - 0.05 < waited < timeout_s + 0.5
        left = state.time_left.pop()
        assert left is not None and timeout_s - 0.5 < left <= timeout_s + 0.05


async def test_a_served_calls_deadline_caps_the_calls_it_makes(downstream: tuple[Downstream, str]) -> None:
    state, target = downstream
    onward = grpc_client.channel(target, service=DOWNSTREAM, timeout_s=5.0)

    async def relay(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return bytes(await onward.unary_unary(f"/{DOWNSTREAM}/Wait")(request))

    server = GrpcServer(
        domain="omni.test",
        service_names=[UPSTREAM],
        register=lambda s: s.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    UPSTREAM, {"Relay": grpc.unary_unary_rpc_method_handler(relay)}
                ),
            )
        ),
        host="127.0.0.1",
        port=0,
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            call = channel.unary_unary(f"/{UPSTREAM}/Relay")
            await call(b"x", timeout=0.8)
            await call(b"x", timeout=60)
            await call(b"x")
    finally:
        await server.stop(0)
        await onward.close()
    short, long, unbounded = state.time_left
    assert short is not None and 0.2 < short <= 0.81
    assert long is not None and unbounded is not None and 4.5 < long <= 5.05 and 4.5 < unbounded <= 5.05


def test_outside_a_served_call_the_configured_timeout_applies() -> None:
    assert grpc_client.call_timeout(2.5) == 2.5
