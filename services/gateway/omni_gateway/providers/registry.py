"""Which providers serve each channel, in which order, and what guards each: a circuit breaker (purgatory) and a
token bucket (aiolimiter) per provider instance.

Providers are configured as a list (OMNI_GATEWAY_PROVIDERS, JSON): each entry names an instance (`name`,
unique), its `kind` (the module under `omni_gateway.providers` that implements it: "smtp" is
`providers/smtp.py`), its `channel`, the guards (`rate_per_s`, `burst`, `breaker_failures`,
`breaker_reset_s`: `providers/circuit.py`, one trial call through a half-open circuit) and the kind's own settings (any other key, handed to the module's `create`). Several
instances of one kind are allowed ("smtp" and "smtp-backup"). A channel's providers are tried in the order
of the list, or in the order OMNI_GATEWAY_PROVIDER_ORDER gives ({"email": ["smtp-backup", "smtp"]}).

Adding a provider is one module with `create(name, options, defaults) -> ChannelProvider`; nothing here
changes.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict

from aiolimiter import AsyncLimiter
from pydantic import BaseModel, ConfigDict, Field

from omni_gateway.domain import Channel
from omni_gateway.providers.base import Accepted, ChannelProvider, ReceiptSink
from omni_gateway.providers.circuit import CircuitOpen, Circuits

log = logging.getLogger(__name__)

__all__ = ["CircuitOpen", "ProviderDefaults", "ProviderSlot", "ProviderSpec", "Registry", "build_registry"]


class ProviderDefaults(TypedDict, total=False):
    """What the gateway hands every kind's `create` besides its own options."""

    sender: str
    """The default sender (an email From)."""
    identity: Any
    """Identity's gRPC stub (IdentityServiceAsyncStub): SMS keywords find the person by number."""
    profile: Any
    """Profile's gRPC stub (ProfileServiceAsyncStub): SMS keywords change the person's SMS consent."""
    email_links: Any
    """The EmailLinks (List-Unsubscribe, tracking, VERP return paths) the SMTP providers put in emails."""
    dkim: Any
    """The DKIM signer of the SMTP providers (None: unsigned)."""
    email_tracking: bool
    """Whether the SMTP providers track marketing emails' opens and clicks."""


class ProviderSpec(BaseModel):
    """One provider instance, as configured."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(
        pattern=r"^[a-z][a-z0-9_-]{0,39}$", description="Unique; recorded on the messages it takes."
    )
    kind: str = Field(
        pattern=r"^[a-z][a-z0-9_.-]{0,199}$",
        description="The module implementing it: a name under omni_gateway.providers, or a dotted module path "
        "(a provider kept outside the gateway's package).",
    )
    channel: Channel
    rate_per_s: float | None = Field(None, gt=0, description="Sends per second at most; none: unlimited.")
    burst: int = Field(1, ge=1, description="Sends the bucket holds (taken at once after a pause).")
    breaker_failures: int = Field(5, ge=1, description="Transient failures in a row that open the circuit.")
    breaker_reset_s: float = Field(30.0, gt=0, description="How long an open circuit stays open.")

    @property
    def options(self) -> dict[str, Any]:
        """The kind's own settings (the keys this model does not know)."""
        return dict(self.model_extra or {})


class _Factory(Protocol):
    def __call__(
        self, name: str, options: Mapping[str, Any], defaults: Mapping[str, Any]
    ) -> ChannelProvider: ...


@dataclass
class ProviderSlot:
    """A provider instance with its guards."""

    provider: ChannelProvider
    spec: ProviderSpec
    breakers: Circuits
    limiter: AsyncLimiter | None

    @property
    def name(self) -> str:
        return self.provider.name

    @property
    def own_breakers(self) -> bool:
        """Whether the provider keeps circuit breakers of its own (`own_circuit_breakers`, e.g. one per webhook
        destination): then it gets none around it, or one dead destination would open the circuit of all."""
        return bool(getattr(self.provider, "own_circuit_breakers", False))

    async def send(self, outgoing: Any) -> Accepted:
        """Send through the provider, within its rate and circuit: raise CircuitOpen without calling it when
        the circuit is open, ProviderFailure when it does not take the message. Only transient failures count
        against the circuit; a refused message or address says nothing about the provider's health."""
        if self.own_breakers:
            await self._take_rate()
            return await self.provider.send(outgoing)
        async with self.breakers.guard(
            self.name, threshold=self.spec.breaker_failures, ttl=self.spec.breaker_reset_s
        ):
            await self._take_rate()
            return await self.provider.send(outgoing)

    async def _take_rate(self) -> None:
        if self.limiter is not None:
            async with self.limiter:
                pass

    async def circuit_state(self) -> str:
        """ "closed", "opened" or "half-opened" ("closed" for a provider keeping its own breakers)."""
        if self.own_breakers:
            return "closed"
        return await self.breakers.state(
            self.name, threshold=self.spec.breaker_failures, ttl=self.spec.breaker_reset_s
        )


def _counted(error: BaseException) -> bool:
    return bool(getattr(error, "transient", True))


class Registry:
    """Every configured provider instance, and per channel the ordered list of those that serve it."""

    def __init__(self, slots: Sequence[ProviderSlot], order: Mapping[Channel, Sequence[str]]) -> None:
        self._slots = {slot.name: slot for slot in slots}
        self._chains: dict[Channel, list[ProviderSlot]] = {
            channel: [self._slots[name] for name in names] for channel, names in order.items() if names
        }

    @property
    def channels(self) -> frozenset[Channel]:
        """The channels that have a provider: the channels the gateway delivers on."""
        return frozenset(self._chains)

    def chain(self, channel: Channel) -> list[ProviderSlot]:
        """The channel's providers, in the order they are tried."""
        return list(self._chains.get(channel, []))

    def get(self, name: str) -> ProviderSlot | None:
        """A provider instance by name."""
        return self._slots.get(name)

    async def start(self, receipts: ReceiptSink) -> None:
        """Start every provider, handing it the sink of its receipts."""
        for slot in self._slots.values():
            await slot.provider.start(receipts)

    async def close(self) -> None:
        """Close every provider (their sends in flight end first)."""
        for slot in self._slots.values():
            try:
                await slot.provider.close()
            except Exception:
                log.exception("closing provider %s failed", slot.name)


def build_registry(
    specs: Sequence[ProviderSpec],
    *,
    order: Mapping[str, Sequence[str]] | None = None,
    defaults: Mapping[str, Any] | None = None,
    providers: Mapping[str, ChannelProvider] | None = None,
) -> Registry:
    """Create the providers of `specs` (each by its kind's module) with their guards.

    `order` (channel value → provider names) overrides the order of the list for a channel; `defaults` are
    handed to every kind's `create` (e.g. the sender); `providers` are instances made already (by name), used
    instead of creating one. Raises ValueError for a duplicate name, an unknown kind, or an order naming a
    provider that is not configured for that channel.
    """
    # Only transient failures count against a circuit; a cancelled call says nothing about the provider.
    breakers = Circuits(_counted)
    slots: list[ProviderSlot] = []
    chains: dict[Channel, list[str]] = {}
    for spec in specs:
        if any(slot.name == spec.name for slot in slots):
            raise ValueError(f"provider {spec.name!r} is configured twice")
        provider = (providers or {}).get(spec.name) or _factory(spec.kind)(
            spec.name, spec.options, defaults or {}
        )
        if provider.channel != spec.channel:
            raise ValueError(f"provider {spec.name!r} ({spec.kind}) delivers on {provider.channel.value}")
        limiter = (
            AsyncLimiter(spec.burst, spec.burst / spec.rate_per_s) if spec.rate_per_s is not None else None
        )
        slots.append(ProviderSlot(provider, spec, breakers, limiter))
        chains.setdefault(spec.channel, []).append(spec.name)
    for channel_value, names in (order or {}).items():
        channel = Channel(channel_value)
        for name in names:
            if name not in chains.get(channel, []):
                raise ValueError(f"the order of {channel.value} names {name!r}, not a provider of it")
        chains[channel] = list(names)
    return Registry(slots, chains)


def _factory(kind: str) -> _Factory:
    path = kind if "." in kind else f"omni_gateway.providers.{kind.replace('-', '_')}"
    try:
        module = importlib.import_module(path)
    except ModuleNotFoundError as error:
        raise ValueError(f"no provider kind {kind!r} (no module {path})") from error
    create = getattr(module, "create", None)
    if create is None:
        raise ValueError(f"provider kind {kind!r} has no create()")
    return create  # type: ignore[no-any-return]
