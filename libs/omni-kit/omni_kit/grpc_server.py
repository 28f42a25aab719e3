"""gRPC server bootstrap on grpc.aio: health, reflection, telemetry and error interceptors, graceful stop."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from omni_kit.errors import FieldViolation, InvalidArgument, OmniError, internal_status, to_status
from omni_kit.grpc_client import adopt_caller_deadline
from omni_kit.telemetry import tracing_enabled

log = logging.getLogger(__name__)

_KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns domain errors into statuses with details, and unexpected ones into INTERNAL; records each
    call's deadline for the calls made while serving it (grpc_client.call_timeout)."""

    def __init__(self, domain: str) -> None:
        self._domain = domain

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method  # type: ignore[attr-defined]
        domain = self._domain

        deserialize = _tolerant(handler.request_deserializer)

        async def abort(context: grpc.aio.ServicerContext, error: Exception) -> None:
            if isinstance(error, OmniError):
                await context.abort_with_status(to_status(error, domain))
            log.exception("unexpected error in %s", method, exc_info=error)
            await context.abort_with_status(internal_status())

        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                adopt_caller_deadline(context)
                try:
                    return await inner_uu(_decoded(request), context)
                except grpc.aio.AbortError:
                    raise
                except Exception as error:
                    await abort(context, error)

            return grpc.unary_unary_rpc_method_handler(unary_unary, deserialize, handler.response_serializer)
        if handler.stream_unary:
            inner_su = handler.stream_unary

            async def stream_unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                adopt_caller_deadline(context)
                try:
                    return await inner_su(_decoded_stream(requests), context)
                except grpc.aio.AbortError:
                    raise
                except Exception as error:
                    await abort(context, error)

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, deserialize, handler.response_serializer
            )
        if handler.unary_stream:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                adopt_caller_deadline(context)
                try:
                    async for item in inner_us(_decoded(request), context):
                        yield item
                except grpc.aio.AbortError:
                    raise
                except Exception as error:
                    await abort(context, error)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, deserialize, handler.response_serializer
            )
        if handler.stream_stream:
            inner_ss = handler.stream_stream

            async def stream_stream(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                adopt_caller_deadline(context)
                try:
                    async for item in inner_ss(_decoded_stream(requests), context):
                        yield item
                except grpc.aio.AbortError:
                    raise
                except Exception as error:
                    await abort(context, error)

            return grpc.stream_stream_rpc_method_handler(
                stream_stream, deserialize, handler.response_serializer
            )
        return handler


@dataclass(frozen=True)
class _Undecodable:
    """What a request that is not a valid protobuf of its type deserialises to."""

    error: str


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """Wrap a request deserializer so that bad bytes reach the handler as _Undecodable instead of failing the
    call with UNKNOWN; the handler wrapper then answers INVALID_ARGUMENT."""
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as error:
            return _Undecodable(str(error) or "malformed protobuf")

    return deserialize


def _decoded(request: Any) -> Any:
    if isinstance(request, _Undecodable):
        raise InvalidArgument(
            message="the request is not a valid protobuf message of its type",
            reason="MALFORMED_REQUEST",
            violations=[FieldViolation("request", request.error)],
        )
    return request


async def _decoded_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _decoded(request)


class GrpcServer:
    """A service's gRPC server with health checking and reflection for its full service names."""

    def __init__(
        self,
        *,
        domain: str,
        service_names: Sequence[str],
        register: Callable[[grpc.aio.Server], None],
        host: str = "0.0.0.0",
        port: int = 0,
    ) -> None:
        self.service_names = list(service_names)
        self.health = health.aio.HealthServicer()
        interceptors: list[grpc.aio.ServerInterceptor] = [ErrorInterceptor(domain)]
        if tracing_enabled():
            interceptors.insert(0, aio_server_interceptor())
        self._server = grpc.aio.server(
            interceptors=interceptors,
            options=_KEEPALIVE_OPTIONS,
        )
        register(self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            [
                *self.service_names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self._server,
        )
        self.port = self._server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise RuntimeError(f"could not bind {host}:{port}")

    async def start(self) -> None:
        """Start serving and report SERVING for the server and each service."""
        await self._server.start()
        for name in ["", *self.service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace_s: float) -> None:
        """Report NOT_SERVING, refuse new calls and let in-flight ones finish within grace_s."""
        await self.health.enter_graceful_shutdown()
        await self._server.stop(grace_s)

    async def wait_for_termination(self) -> None:
        """Block until the server stops."""
        await self._server.wait_for_termination()
