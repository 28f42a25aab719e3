"""gRPC clients: a deadline on every call, and retries for idempotent methods (set by service config).

Deadlines are propagated: a call made while serving one (a servicer calling another service) gets the
configured deadline or the time the served call has left, whichever is less (call_timeout), so that a
caller who gives up after 300 ms does not leave work running for seconds behind it. The gRPC server
(grpc_server) records the served call's deadline with adopt_caller_deadline; every channel opened here
applies it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from omni_kit.security import ClientSecurity, ReloadingChannel, TokenInterceptor, channel_credentials
from omni_kit.telemetry import tracing_enabled

_CALLER_DEADLINE: ContextVar[float | None] = ContextVar("omni_caller_deadline", default=None)
"""When the call being served in this task must be answered (time.monotonic()); None outside a call or for
a call without a deadline."""

_LEAST_TIMEOUT_S = 0.001
"""What a call gets when the served call's time is up: it fails at once with DEADLINE_EXCEEDED."""


def adopt_caller_deadline(context: grpc.aio.ServicerContext) -> None:
    """Record the deadline of the call being served, for the calls made while serving it (in this task and
    the tasks it starts). A task that serves other callers too should not be started from a call's task
    (it would inherit that call's deadline): start it with a fresh contextvars.Context."""
    remaining = context.time_remaining()
    _CALLER_DEADLINE.set(None if remaining is None else time.monotonic() + remaining)


def call_timeout(configured_s: float) -> float:
    """The deadline (seconds from now) of an outgoing call: the configured one, or the time the call being
    served has left when that is less."""
    deadline = _CALLER_DEADLINE.get()
    if deadline is None:
        return configured_s
    return max(_LEAST_TIMEOUT_S, min(configured_s, deadline - time.monotonic()))


class _PropagatedDeadline(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    """Gives every call of a channel call_timeout of its own timeout (the channel's when it set none)."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        configured = self._timeout_s if details.timeout is None else details.timeout
        return grpc.aio.ClientCallDetails(
            details.method,
            call_timeout(configured),
            details.metadata,
            details.credentials,
            details.wait_for_ready,
        )

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)

    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)

    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


def channel(
    target: str,
    *,
    service: str,
    idempotent_methods: Sequence[str] = (),
    timeout_s: float = 5.0,
    max_attempts: int = 4,
    security: ClientSecurity | None = None,
) -> grpc.aio.Channel:
    """Open a channel to `service` (its full name) at target.

    Every method gets a deadline of timeout_s, or less when the call being served has less time left
    (call_timeout); the idempotent ones are retried on UNAVAILABLE with exponential backoff, within that
    deadline. Calls carry the trace context in their metadata.

    With security (a service passes runtime.client_security): TLS verifying the server, presenting the
    service's certificate when it has one (a new channel when the files change), and its bearer token on
    every call when it has one. Without: plaintext, as the laptop run.
    """
    # The deadline is set on each call (_PropagatedDeadline), not as the service config's "timeout": grpcio
    # (1.85) sends no deadline for a configured timeout of 2 s or more, and fails every call at once with
    # DEADLINE_EXCEEDED for one under 2 s.
    method_config: list[dict[str, object]] = [{"name": [{"service": service}]}]
    if idempotent_methods:
        method_config.insert(
            0,
            {
                "name": [{"service": service, "method": m} for m in idempotent_methods],
                "retryPolicy": {
                    "maxAttempts": max_attempts,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            },
        )
    options = [
        ("grpc.service_config", json.dumps({"methodConfig": method_config})),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ]
    interceptors: list[Any] = [_PropagatedDeadline(timeout_s)]
    if tracing_enabled():
        interceptors = [*aio_client_interceptors(), *interceptors]
    if security is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    if security.token is not None:
        interceptors.append(TokenInterceptor(security.token))
    if not security.secure:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)

    def secure() -> grpc.aio.Channel:
        credentials = channel_credentials(security.tls, security.ca_file)
        return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)

    if security.tls is None:
        return secure()
    return ReloadingChannel(secure, security.tls, check_interval_s=security.reload_interval_s)
