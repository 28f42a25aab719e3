"""gRPC server bootstrap on grpc.aio: health, reflection, telemetry and error interceptors, readiness while
the service starts, and a graceful stop that lets calls in flight finish."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from omni_kit.db import database_unavailable
from omni_kit.errors import (
    FieldViolation,
    InvalidArgument,
    OmniError,
    Unavailable,
    internal_status,
    to_status,
)
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


class Admission:
    """Which calls a server takes: none of its services' before they are registered (UNAVAILABLE, "starting"),
    none once it drains for a stop (UNAVAILABLE, "stopping"); it counts the calls in flight and notes when
    the last one arrived or ended, so a stop can wait for them and for the calls their callers send next.
    Health checks and reflection are always answered and never counted (a health Watch lasts as long as its
    client)."""

    def __init__(self) -> None:
        self.draining = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.last_activity = 0.0

    @property
    def in_flight(self) -> int:
        """Calls of the services being handled now."""
        return self._in_flight

    def arrived(self) -> None:
        """Note that a call arrived (admitted or refused)."""
        self.last_activity = asyncio.get_running_loop().time()

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """Count one call while it is handled."""
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            self.last_activity = asyncio.get_running_loop().time()
            if self._in_flight == 0:
                self._idle.set()

    async def settle(self, *, quiet_s: float, deadline: float) -> bool:
        """Wait until no call is in flight and none arrived or ended for quiet_s, at most until deadline (loop
        time); whether that happened."""
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._idle.wait()
            now = loop.time()
            if self._in_flight == 0 and now - self.last_activity >= quiet_s:
                return True
            if now >= deadline:
                return False
            await asyncio.sleep(min(quiet_s - (now - self.last_activity), deadline - now, quiet_s))


_ALWAYS_ANSWERED = ("/grpc.health.v1.Health/", "/grpc.reflection.")

LIVENESS = "liveness"
"""The health-check name that answers SERVING while the process runs, whatever its database does: what a
liveness probe asks (the server as a whole, "", is what readiness asks)."""

_QUIET_BEFORE_CLOSE_S = 0.2
"""How long no call may have arrived before a stopping server closes (within its grace period)."""


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """The one place a call's failure becomes its status: domain errors with their details, the database
    being unreachable as UNAVAILABLE (the caller may retry), anything else as INTERNAL. It also applies the
    server's admission: calls refused while starting or stopping are answered UNAVAILABLE, nothing done; and
    records each call's deadline for the calls made while serving it (grpc_client.call_timeout)."""

    def __init__(
        self,
        domain: str,
        admission: Admission | None = None,
        on_database_unavailable: Callable[[], None] | None = None,
    ) -> None:
        self._domain = domain
        self._admission = admission or Admission()
        self._on_database_unavailable = on_database_unavailable

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        domain = self._domain
        admission = self._admission
        always = method.startswith(_ALWAYS_ANSWERED)
        on_database_unavailable = self._on_database_unavailable

        deserialize = _tolerant(handler.request_deserializer)

        async def abort(context: grpc.aio.ServicerContext, error: Exception) -> None:
            if isinstance(error, OmniError):
                await context.abort_with_status(to_status(error, domain))
            if database_unavailable(error):
                log.warning("%s: the database is unreachable: %s", method, error)
                if on_database_unavailable is not None:
                    on_database_unavailable()
                await context.abort_with_status(
                    to_status(
                        Unavailable(
                            message="the database is unreachable; try again", reason="DATABASE_UNAVAILABLE"
                        ),
                        domain,
                    )
                )
            log.exception("unexpected error in %s", method, exc_info=error)
            await context.abort_with_status(internal_status())

        @contextlib.asynccontextmanager
        async def admitted(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
            if always:
                yield
                return
            admission.arrived()
            if admission.draining:
                await context.abort_with_status(to_status(_STOPPING, domain))
            with admission.call():
                yield

        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                adopt_caller_deadline(context)
                async with admitted(context):
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
                async with admitted(context):
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
                async with admitted(context):
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
                async with admitted(context):
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


_STOPPING = Unavailable(message="the service is stopping; try again", reason="STOPPING")


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


class _Services(grpc.GenericRpcHandler):
    """The server's services, registered after it started: the server answers health checks (NOT_SERVING)
    from the moment its port is bound, while the service waits for its database; calls to a service before
    its registration are answered UNAVAILABLE ("starting"), and unknown methods after it UNIMPLEMENTED."""

    def __init__(self) -> None:
        self._methods: dict[str, grpc.RpcMethodHandler] = {}
        self._generic: list[grpc.GenericRpcHandler] = []
        self.registered = False

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        handler = self._methods.get(method)
        if handler is not None:
            return handler
        for generic in self._generic:
            found = generic.service(handler_call_details)
            if found is not None:
                return found
        return None if self.registered else _starting_handler

    # What the generated add_*Servicer_to_server functions and reflection call on a server.

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        """Add handlers that find a method by its name."""
        self._generic.extend(generic_rpc_handlers)

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        """Add one service's method handlers by method name."""
        for name, handler in method_handlers.items():
            self._methods[f"/{service_name}/{name}"] = handler


async def _starting(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    raise Unavailable(message="the service is starting; try again", reason="STARTING")
    yield b""  # a generator, so it serves calls of any kind


_starting_handler = grpc.stream_stream_rpc_method_handler(_starting)


class GrpcServer:
    """A service's gRPC server with health checking, reflection for its full service names, the error
    interceptor and a graceful stop; TLS when given credentials (omni_kit.security.server_tls), and more
    interceptors inside the error interceptor (the runtime's: audit, then authorisation).

    Bound at construction, it may start before its services are registered (`add_services`): it then
    answers health checks NOT_SERVING and other calls UNAVAILABLE, so a service waiting for its database is
    seen as up but not ready. `set_serving` reports readiness; `stop` drains.
    """

    def __init__(
        self,
        *,
        domain: str,
        service_names: Sequence[str] = (),
        register: Callable[[grpc.aio.Server], None] | None = None,
        host: str = "0.0.0.0",
        port: int = 0,
        on_database_unavailable: Callable[[], None] | None = None,
        credentials: grpc.ServerCredentials | None = None,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        health_port: int | None = None,
    ) -> None:
        self.service_names: list[str] = []
        self.health = health.aio.HealthServicer()
        self.admission = Admission()
        self._serving = False
        self._services = _Services()
        # The others run inside the error interceptor: a refusal of theirs becomes its status there.
        chain: list[grpc.aio.ServerInterceptor] = [
            ErrorInterceptor(domain, self.admission, on_database_unavailable),
            *interceptors,
        ]
        if tracing_enabled():
            chain.insert(0, aio_server_interceptor())
        self._server = grpc.aio.server(
            interceptors=chain,
            options=_KEEPALIVE_OPTIONS,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self._server.add_generic_rpc_handlers((self._services,))
        if credentials is None:
            self.port = self._server.add_insecure_port(f"{host}:{port}")
        else:
            self.port = self._server.add_secure_port(f"{host}:{port}", credentials)
        if self.port == 0:
            raise RuntimeError(f"could not bind {host}:{port}")
        # Kubernetes' built-in gRPC probes speak plaintext only: with TLS on, they can ask a port of their
        # own that answers nothing but health checks (the same health states).
        self._health_server: grpc.aio.Server | None = None
        self.health_port: int | None = None
        if health_port is not None:
            self._health_server = grpc.aio.server(options=_KEEPALIVE_OPTIONS)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_server)
            self.health_port = self._health_server.add_insecure_port(f"{host}:{health_port}")
            if self.health_port == 0:
                raise RuntimeError(f"could not bind {host}:{health_port}")
        if register is not None:
            self.add_services(service_names, register)

    def add_services(self, service_names: Sequence[str], register: Callable[[grpc.aio.Server], None]) -> None:
        """Register the service's servicers (register(server) as the generated add_*_to_server expect) and
        reflection for them; calls reach them from now on."""
        self.service_names = list(service_names)
        # The generated code and reflection only call the two registration methods _Services has.
        server = cast(grpc.aio.Server, self._services)
        register(server)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(
                [
                    *self.service_names,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                ]
            ),
            server,
        )
        self._services.registered = True

    async def start(self) -> None:
        """Start answering: SERVING for the server and each service if the services are registered, else
        NOT_SERVING until set_serving(True); SERVING for "liveness" until the stop."""
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        await self.set_serving(self._services.registered)
        await self._server.start()
        if self._health_server is not None:
            await self._health_server.start()

    @property
    def serving(self) -> bool:
        """Whether health reports SERVING."""
        return self._serving

    async def set_serving(self, serving: bool) -> None:
        """Report SERVING or NOT_SERVING for the server and each service (no effect once stopping)."""
        if self.admission.draining:
            return
        self._serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def stop(self, grace_s: float) -> None:
        """Stop gracefully: report NOT_SERVING and answer new calls UNAVAILABLE (a client retries them
        elsewhere or later), let the calls in flight finish within grace_s, then close; calls still running
        then are cancelled.

        The server refuses new calls itself, and closes only once no call arrived for a moment: gRPC's own
        shutdown cancels the calls it has received but not yet handed to the service (under load, many), and
        a client that was just answered sends its next call at once.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        self.admission.draining = True
        self._serving = False
        await self.health.enter_graceful_shutdown()
        settled = await self.admission.settle(quiet_s=_QUIET_BEFORE_CLOSE_S, deadline=deadline)
        if not settled and self.admission.in_flight:
            log.warning(
                "%d calls still running after the %.1f s grace period; cancelling them",
                self.admission.in_flight,
                grace_s,
            )
        await self._server.stop(max(deadline - loop.time(), 0.0))
        if self._health_server is not None:
            await self._health_server.stop(0)

    async def wait_for_termination(self) -> None:
        """Block until the server stops."""
        await self._server.wait_for_termination()
