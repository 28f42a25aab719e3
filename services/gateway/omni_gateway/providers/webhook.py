"""Webhooks: a message's JSON payload POSTed to one of the retailer's endpoints, signed per the Standard
Webhooks specification (https://www.standardwebhooks.com) with its `standardwebhooks` package.

A message's address is a destination's name (`WebhookSettings`); its body is the rendered payload as JSON.
Each attempt carries `webhook-id` (the message id, the same on every attempt, so the receiver drops
repeats), `webhook-timestamp` (this attempt's time, in seconds) and `webhook-signature`: one `v1,<base64>`
per active secret, separated by spaces, so that during a rotation a receiver that knows either secret
verifies it.

The endpoint's answer decides: 2xx taken; 410 Gone means the endpoint is disabled (ADDRESS_INVALID: the
destination is suppressed until an operator enables it again); 408, 429, 5xx, a timeout or no connection may
pass later (TRANSIENT, with the endpoint's Retry-After); any other answer (4xx, a redirect, which is not
followed) is final (PERMANENT). Each destination has its own connection pool, rate and circuit breaker
(purgatory, as the registry's: one named `<provider>:<destination>` per destination): a destination that
keeps failing is not called for a while, its sends failing at once instead of each waiting for a timeout, so
the others go on at full speed. How often a failed message is
tried again is `retry_schedule` (Svix's: up to eight attempts over about a day), which the delivery flow's
retry policy reads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiolimiter
import httpx
import orjson
from opentelemetry import trace
from standardwebhooks import Webhook

from omni_gateway.domain import Channel
from omni_gateway.providers.base import (
    Accepted,
    FailureKind,
    Outgoing,
    PersonContacts,
    ProviderFailure,
    ReceiptSink,
    WebhookContent,
)
from omni_gateway.providers.circuit import CircuitOpen, Circuits
from omni_gateway.providers.retry_after import retry_after_seconds
from omni_gateway.providers.webhook_settings import WebhookDestination, WebhookSettings, secret_key
from omni_kit.errors import without_control_characters

__all__ = ["NAME", "WebhookProvider", "build_webhook_provider", "classify_answer", "create"]

NAME = "webhook"
tracer = trace.get_tracer("omni_gateway.providers.webhook")

_MAX_ANSWER_QUOTED = 200
"""How much of an endpoint's answer a failure quotes."""
_MAX_ANSWER_READ = 64 * 1024
"""How much of an endpoint's answer is read at most (an answer is an acknowledgement, not a download)."""
_TRANSIENT_STATUSES = frozenset({408, 429})


def classify_answer(status: int, *, retry_after: str | None, detail: str, provider: str) -> ProviderFailure:
    """The failure a non-2xx answer of an endpoint means (410 gone, 408/429/5xx later, the rest never).
    `detail` quotes the endpoint, so its control characters are replaced (it is stored on the message)."""
    detail = without_control_characters(detail)
    if status == 410:
        return ProviderFailure(FailureKind.ADDRESS_INVALID, detail, provider=provider)
    if status in _TRANSIENT_STATUSES or status >= 500:
        wait = retry_after_seconds(retry_after)
        return ProviderFailure(FailureKind.TRANSIENT, detail, provider=provider, retry_after_s=wait)
    return ProviderFailure(FailureKind.PERMANENT, detail, provider=provider)


class _AtRate(ProviderFailure):
    """A send that waited too long for its destination's rate: the endpoint was not called, so it says
    nothing about the endpoint's health (not counted by its circuit)."""


def _counted(error: BaseException) -> bool:
    """Whether a failure counts against the circuit: not a refusal, which shows the endpoint alive (a 4xx,
    a 410), nor a send held back by the destination's rate."""
    if isinstance(error, ProviderFailure):
        return not isinstance(error, _AtRate) and error.transient
    return True


@dataclass
class _Endpoint:
    """A destination with what calling it needs: signers, a connection pool, a rate and its breaker's name."""

    destination: WebhookDestination
    signers: tuple[Webhook, ...]
    breaker: str
    limiter: aiolimiter.AsyncLimiter | None
    client: httpx.AsyncClient | None = None


class WebhookProvider:
    """Delivers the webhook channel's messages to the configured destinations (a ChannelProvider)."""

    channel = Channel.WEBHOOK
    own_circuit_breakers = True
    """It keeps a circuit breaker per destination: a provider-wide breaker around it must not be used (nor
    count its failures), or one dead endpoint would open the circuit of all of them."""

    def __init__(self, settings: WebhookSettings, *, name: str = NAME) -> None:
        self.name = name
        self.settings = settings
        self.retry_schedule: tuple[float, ...] = settings.retry_schedule_s
        """The waits between a message's attempts: attempt n + 1 comes `retry_schedule[n - 1]` seconds after
        attempt n fails (or the endpoint's Retry-After, if later), and after len + 1 attempts the message
        fails. The delivery flow's retry policy reads it (`retry_delay_s`)."""
        # Only transient failures count against a destination's circuit; a cancelled call says nothing.
        self._breakers = Circuits(_counted)
        self._endpoints = {d.name: self._endpoint(d) for d in settings.destinations}

    def _endpoint(self, destination: WebhookDestination) -> _Endpoint:
        rate = destination.rate_per_s
        limiter = None
        if rate is not None:
            # aiolimiter takes whole calls per period: under one a second is one call per 1/rate seconds.
            limiter = aiolimiter.AsyncLimiter(max(1.0, rate), max(1.0, rate) / rate)
        return _Endpoint(
            destination=destination,
            signers=tuple(Webhook(secret_key(s.get_secret_value())) for s in destination.secrets),
            breaker=f"{self.name}:{destination.name}",
            limiter=limiter,
        )

    @property
    def max_attempts(self) -> int:
        """Attempts in all before a message fails."""
        return len(self.retry_schedule) + 1

    def retry_delay_s(self, attempt: int) -> float | None:
        """The wait after failed attempt number `attempt` (1-based), or None when it was the last."""
        if attempt < 1 or attempt > len(self.retry_schedule):
            return None
        return self.retry_schedule[attempt - 1]

    def breaker_name(self, destination: str) -> str | None:
        """The name of a destination's circuit breaker (`<provider>:<destination>`)."""
        endpoint = self._endpoints.get(destination)
        return endpoint.breaker if endpoint else None

    async def circuit_state(self, destination: str) -> str:
        """ "closed", "opened" or "half-opened": the state of a destination's circuit (health, tests)."""
        return await self._breakers.state(
            self._endpoints[destination].breaker,
            threshold=self.settings.breaker_failures,
            ttl=self.settings.breaker_reset_s,
        )

    def address_of(self, person: PersonContacts) -> str | None:
        """A webhook does not reach the person: its address is the destination a message naming none goes
        to (the default, or the only one)."""
        return self.settings.fallback_destination

    async def start(self, receipts: ReceiptSink) -> None:
        """Open a connection pool per destination. Webhooks report no later outcome, so receipts are unused."""
        for endpoint in self._endpoints.values():
            if endpoint.client is not None:
                continue
            destination = endpoint.destination
            endpoint.client = httpx.AsyncClient(
                timeout=httpx.Timeout(destination.timeout_s),
                limits=httpx.Limits(
                    max_connections=destination.max_connections,
                    max_keepalive_connections=destination.max_connections,
                ),
                follow_redirects=False,
                headers={"user-agent": self.settings.user_agent},
            )

    async def close(self) -> None:
        """Close the pools (calls in flight end with a connection error)."""
        for endpoint in self._endpoints.values():
            if endpoint.client is not None:
                await endpoint.client.aclose()
                endpoint.client = None

    def sign(self, destination: str, message_id: str, at: datetime, body: bytes) -> str:
        """The webhook-signature header of a body: a `v1,<base64>` per active secret, space-separated."""
        return " ".join(signer.sign(message_id, at, body) for signer in self._endpoints[destination].signers)

    async def send(self, outgoing: Outgoing) -> Accepted:
        """POST the message to its destination; raise ProviderFailure when it is not taken."""
        endpoint = self._endpoints.get(outgoing.address)
        if endpoint is None:
            raise ProviderFailure(
                FailureKind.ADDRESS_INVALID,
                f"no webhook destination named {outgoing.address!r}",
                provider=self.name,
            )
        if not isinstance(outgoing.content, WebhookContent):
            raise ProviderFailure(
                FailureKind.PERMANENT, "a webhook carries a JSON payload (WebhookContent)", provider=self.name
            )
        if endpoint.client is None:
            raise ProviderFailure(
                FailureKind.TRANSIENT, "the webhook provider is not started", provider=self.name
            )
        destination = endpoint.destination
        body = _body(outgoing.content.payload, provider=self.name)
        if len(body) > destination.max_payload_bytes:
            raise ProviderFailure(
                FailureKind.PERMANENT,
                f"payload of {len(body)} bytes is over destination {destination.name}'s "
                f"{destination.max_payload_bytes}",
                provider=self.name,
            )
        with tracer.start_as_current_span(
            "webhook send",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "omni.message_id": str(outgoing.message_id),
                "omni.webhook.destination": destination.name,
                "omni.attempt": outgoing.attempt,
                "server.address": destination.url.host or "",
            },
        ) as span:
            try:
                accepted = await self._deliver(endpoint, outgoing, body, span)
            except ProviderFailure as failure:
                span.set_status(trace.Status(trace.StatusCode.ERROR, failure.detail))
                span.set_attribute("omni.delivery.error", failure.kind.value)
                raise
            return accepted

    async def _deliver(
        self, endpoint: _Endpoint, outgoing: Outgoing, body: bytes, span: trace.Span
    ) -> Accepted:
        """The call within the destination's circuit: refused at once while it is open; a transient failure
        counts against it, an answer of any other kind closes it again."""
        try:
            async with self._breakers.guard(
                endpoint.breaker, threshold=self.settings.breaker_failures, ttl=self.settings.breaker_reset_s
            ):
                return await self._call(endpoint, outgoing, body, span)
        except CircuitOpen as open_circuit:
            wait = open_circuit.retry_after_s
            raise ProviderFailure(
                FailureKind.TRANSIENT,
                f"destination {endpoint.destination.name} is not called for now: its circuit opened after "
                f"{self.settings.breaker_failures} failures in a row; next try in {wait:.1f} s"
                if wait
                else f"destination {endpoint.destination.name} is not called for now: its circuit is "
                "half-open and its trial call is under way",
                provider=self.name,
                retry_after_s=wait or 1.0,
            ) from None

    async def _call(self, endpoint: _Endpoint, outgoing: Outgoing, body: bytes, span: trace.Span) -> Accepted:
        destination = endpoint.destination
        await self._take_rate(endpoint)
        message_id = str(outgoing.message_id)
        now = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self.sign(destination.name, message_id, now, body),
        }
        assert endpoint.client is not None
        started = time.monotonic()
        try:
            async with asyncio.timeout(destination.timeout_s):
                request = endpoint.client.build_request(
                    "POST", str(destination.url), content=body, headers=headers
                )
                response = await endpoint.client.send(request, stream=True)
                try:
                    answer = await _start_of(response)
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.TimeoutException) as error:
            raise ProviderFailure(
                FailureKind.TRANSIENT,
                f"destination {destination.name} did not answer within {destination.timeout_s:g} s",
                provider=self.name,
            ) from error
        except httpx.HTTPError as error:
            raise ProviderFailure(
                FailureKind.TRANSIENT,
                without_control_characters(
                    f"destination {destination.name} cannot be reached: {type(error).__name__}: {error}"
                ),
                provider=self.name,
            ) from error
        status = response.status_code
        span.set_attribute("http.response.status_code", status)
        if 200 <= status < 300:
            return Accepted(
                provider=self.name,
                provider_message_id=message_id,
                details={
                    "destination": destination.name,
                    "status": status,
                    "duration_ms": round((time.monotonic() - started) * 1000, 1),
                },
            )
        # A transient answer counts against the circuit; any other shows the endpoint alive.
        raise classify_answer(
            status,
            retry_after=response.headers.get("retry-after"),
            detail=f"destination {destination.name} answered {status} {response.reason_phrase}"
            + (f": {answer}" if answer else ""),
            provider=self.name,
        )

    async def _take_rate(self, endpoint: _Endpoint) -> None:
        limiter = endpoint.limiter
        if limiter is None:
            return
        try:
            async with asyncio.timeout(self.settings.rate_wait_s):
                await limiter.acquire()
        except TimeoutError:
            rate = endpoint.destination.rate_per_s or 1.0
            raise _AtRate(
                FailureKind.TRANSIENT,
                f"destination {endpoint.destination.name} is at its rate of {rate:g}/s",
                provider=self.name,
                retry_after_s=1.0 / rate,
            ) from None


def _mapping_as_dict(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def _body(payload: Mapping[str, Any], *, provider: str) -> bytes:
    try:
        return orjson.dumps(payload if isinstance(payload, dict) else dict(payload), default=_mapping_as_dict)
    except TypeError as error:
        raise ProviderFailure(
            FailureKind.PERMANENT, f"the payload is not JSON: {error}", provider=provider
        ) from error


async def _start_of(response: httpx.Response) -> str:
    """The start of an answer's body, fit to quote. A body read to its end (up to `_MAX_ANSWER_READ`) lets
    the connection go back to the pool; a longer one is cut off and its connection closed."""
    read = bytearray()
    async for chunk in response.aiter_raw():
        read += chunk
        if len(read) > _MAX_ANSWER_READ:
            break
    text = bytes(read[:_MAX_ANSWER_QUOTED]).decode("utf-8", errors="replace")
    return without_control_characters(" ".join(text.split()))


def build_webhook_provider(settings: WebhookSettings, *, name: str = NAME) -> WebhookProvider | None:
    """The provider of the webhook channel from its settings; None when no destination is configured."""
    if not settings.destinations:
        return None
    return WebhookProvider(settings, name=name)


def create(name: str, options: Mapping[str, Any], defaults: Mapping[str, Any]) -> WebhookProvider:
    """The provider from a registry's configuration: `options` are `WebhookSettings` as a mapping (the
    destinations, ...); `defaults` are not used. Raises pydantic.ValidationError (a ValueError) naming what is
    wrong, never a secret, and ValueError when no destination is configured."""
    provider = build_webhook_provider(WebhookSettings.model_validate(dict(options)), name=name)
    if provider is None:
        raise ValueError(f"webhook provider {name!r} has no destinations")
    return provider
