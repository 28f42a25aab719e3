"""gRPC clients: a deadline on every call and retries for idempotent methods, set by service config."""

from __future__ import annotations

import json
from collections.abc import Sequence

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from omni_kit.telemetry import tracing_enabled


def channel(
    target: str,
    *,
    service: str,
    idempotent_methods: Sequence[str] = (),
    timeout_s: float = 5.0,
    max_attempts: int = 4,
) -> grpc.aio.Channel:
    """Open a channel to `service` (its full name) at target.

    Every method gets a default deadline of timeout_s; the idempotent ones are retried on UNAVAILABLE with
    exponential backoff. Calls carry the trace context in their metadata.
    """
    method_config: list[dict[str, object]] = [{"name": [{"service": service}], "timeout": f"{timeout_s}s"}]
    if idempotent_methods:
        method_config.insert(
            0,
            {
                "name": [{"service": service, "method": m} for m in idempotent_methods],
                "timeout": f"{timeout_s}s",
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
    interceptors = aio_client_interceptors() if tracing_enabled() else None
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
