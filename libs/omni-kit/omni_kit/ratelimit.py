"""Rate limits per client: a token bucket per authenticated identity, for the gRPC servers (an interceptor the
runtime adds when `rate_limit_per_s` is set) and the HTTP endpoints (profile's intake, per write key's source).

A client may make `rate` calls a second on average and `burst` at once. A call over its limit is refused with
RESOURCE_EXHAUSTED (ErrorInfo reason RATE_LIMITED, the client in its metadata, and a google.rpc.RetryInfo of
when a call will be let through again); over HTTP with 429 and Retry-After. The client is the authenticated
caller (omni_kit.security.current_principal: the token's subject or the certificate's name), or the peer's
address when authorisation is off. Health checks and reflection are never limited.

Buckets live in the process: with N replicas a client gets up to N times its rate in all, which is what
limits per replica of the stateless services mean; the limit protects each process from one noisy client.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc

from omni_kit.errors import ResourceExhausted
from omni_kit.security.auth import HEALTH_PREFIX, REFLECTION_PREFIX, current_principal, wrap_handler

RATE_LIMITED = "RATE_LIMITED"
"""ErrorInfo reason of a call refused by its client's rate limit."""


class TokenBuckets:
    """A token bucket per key, refilled at `rate` a second up to `burst`; at most `max_keys` kept (the least
    recently used forgotten first, starting full when they come back)."""

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float | None:
        """Take a token for key: None when there was one, else the seconds until there is."""
        now = self._clock()
        tokens, at = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        wait = None
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return wait


class RateLimits:
    """Buckets per client: the default limit, and per-client overrides (a rate of 0: unlimited)."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        overrides: Mapping[str, float] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        def buckets(per_s: float) -> TokenBuckets:
            return TokenBuckets(per_s, burst if burst is not None else max(1.0, per_s), clock=clock)

        self._default = buckets(rate)
        self._overrides = {name: buckets(r) if r > 0 else None for name, r in (overrides or {}).items()}

    def wait_for(self, client: str) -> float | None:
        """Take a call of client: None when allowed, else the seconds to wait."""
        if client in self._overrides:
            special = self._overrides[client]
            return None if special is None else special.take(client)
        return self._default.take(client)


def refusal(client: str, wait_s: float) -> ResourceExhausted:
    """RESOURCE_EXHAUSTED for a client over its limit, with when to try again."""
    return ResourceExhausted(
        message=f"{client} is over its rate limit; retry in {wait_s:.3f} s",
        reason=RATE_LIMITED,
        metadata={"client": client},
        retry_after_s=wait_s,
    )


def retry_after_header(wait_s: float) -> str:
    """Retry-After's value (whole seconds, at least 1) for a wait."""
    return str(max(1, math.ceil(wait_s)))


def _client(context: grpc.aio.ServicerContext) -> str:
    principal = current_principal()
    if principal is not None:
        return principal.name
    peer = context.peer() or "unknown"
    # ipv4:127.0.0.1:5555, ipv6:[::1]:5555: the address without the port.
    address = peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer
    return f"peer {address}"


class RateLimitInterceptor(grpc.aio.ServerInterceptor):
    """Refuses the calls of a client over its limit (see the module's docstring). Runs inside the
    authorisation interceptor, so the caller is known."""

    def __init__(self, limits: RateLimits) -> None:
        self._limits = limits

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None or method.startswith((HEALTH_PREFIX, REFLECTION_PREFIX)):
            return handler
        limits = self._limits

        def check(context: Any) -> None:
            client = _client(context)
            wait = limits.wait_for(client)
            if wait is not None:
                raise refusal(client, wait)

        return wrap_handler(handler, check, None)
