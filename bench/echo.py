"""The bare gRPC baseline: a grpc.aio server with one generic unary method that answers its bytes back.

No Omni code, no interceptors, no protobuf: what one Python gRPC call costs on this machine.
"""

from __future__ import annotations

import grpc

METHOD = "/bench.Echo/Echo"


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def start_echo_server(host: str = "127.0.0.1") -> tuple[grpc.aio.Server, int]:
    """Start the echo server on a free port of ``host``; return it and the port."""
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"{host}:0")
    await server.start()
    return server, port


def echo_callable(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable:
    """A client callable of the echo method, bytes in and out."""
    return channel.unary_unary(METHOD)
