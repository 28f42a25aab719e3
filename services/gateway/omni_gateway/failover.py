"""Failover: handing a rendered message to a channel's providers in order until one takes it, and finding out
after a crash whether the provider an attempt was cut short at took the message.

Within one attempt a TRANSIENT failure or an open circuit moves on to the channel's next provider; a refusal
of the message (PERMANENT) or of the address (ADDRESS_INVALID) ends the attempt. The address each provider
would use is checked against the suppression list first; the provider is recorded on the message before it
is called (`attempt_provider`), so an attempt cut short there is known to the next one, which asks that
provider (`lookup`, where it has one) rather than sending again.
"""

from __future__ import annotations

import logging

from omni_gateway.domain import PermanentFailure, TransientFailure
from omni_gateway.models import Message
from omni_gateway.providers.base import (
    Accepted,
    Content,
    FailureKind,
    Outgoing,
    PersonContacts,
    ProviderFailure,
    RetrySchedule,
)
from omni_gateway.providers.registry import CircuitOpen, Registry
from omni_gateway.repository import Repository
from omni_gateway.suppression import AddressRefused, Suppressed, address_hash, blocking
from omni_kit.scheduler import Transaction

log = logging.getLogger(__name__)


class Failover:
    """Walks a channel's providers for one attempt (see the module's doc)."""

    def __init__(self, *, transaction: Transaction, repository: Repository, registry: Registry) -> None:
        self._transaction = transaction
        self._repository = repository
        self._registry = registry

    async def dispatch(
        self, message: Message, person: PersonContacts, content: Content
    ) -> tuple[Accepted, str]:
        """Hand the message to the channel's providers in order until one takes it (failover).

        A transient failure or an open circuit moves on to the next provider; a refusal of the message
        (PERMANENT) or of the address (ADDRESS_INVALID, which suppresses it) ends the attempt. The provider is
        recorded on the message before it is called, so an attempt cut short there is known to the next one.
        Raises TransientFailure when every provider failed for now, PermanentFailure when none can reach the
        person or the message is refused.
        """
        failures: list[str] = []
        hints: list[float] = []
        scheduled: list[float] = []
        reachable = False
        checked: dict[str, None] = {}
        for slot in self._registry.chain(message.channel):
            address = slot.provider.address_of(person)
            if not address:
                continue
            reachable = True
            if address not in checked:
                await self._check_suppression(message, address)
                checked[address] = None
            outgoing = Outgoing(
                message_id=message.id,
                person_id=person.person_id,
                channel=message.channel,
                purpose=message.purpose,
                address=address,
                content=content,
                attempt=message.attempt_count,
                locale=str(person.traits.get("locale") or ""),
            )
            async with self._transaction() as session:
                await self._repository.mark_attempt(
                    session, message.id, provider=slot.name, recipient=address
                )
            try:
                return await slot.send(outgoing), address
            except CircuitOpen as error:
                failures.append(str(error))
            except ProviderFailure as failure:
                detail = str(failure) if failure.provider else f"{slot.name}: {failure.detail}"
                if failure.kind is FailureKind.TRANSIENT:
                    failures.append(detail)
                    if failure.retry_after_s is not None:
                        hints.append(failure.retry_after_s)
                    if isinstance(slot.provider, RetrySchedule):
                        wait = slot.provider.retry_delay_s(message.attempt_count)
                        if wait is not None:
                            scheduled.append(wait)
                    continue
                if failure.kind is FailureKind.ADDRESS_INVALID:
                    raise AddressRefused(
                        detail, channel=message.channel, address=address, provider=slot.name
                    ) from failure
                raise PermanentFailure(detail) from failure
        if not reachable:
            raise PermanentFailure(f"no {message.channel.value} address")
        transient = TransientFailure("; ".join(failures))
        transient.retry_after_s = min(hints) if hints else None
        # The soonest a failing provider's own schedule tries again (None: the retry policy's backoff).
        transient.scheduled_s = min(scheduled) if scheduled else None
        raise transient

    async def _check_suppression(self, message: Message, address: str) -> None:
        async with self._transaction() as session:
            reasons = await self._repository.is_suppressed_for(
                session, message.channel.value, address_hash(message.channel, address)
            )
        reason = blocking(reasons, message.purpose)
        if reason is not None:
            raise Suppressed(reason)

    async def reconcile(self, message: Message) -> Accepted | None:
        """Ask the provider an unfinished attempt handed the message to whether it has it, where the provider
        can say (`lookup`); None: not taken, or no way to know (then it is sent again: see the README)."""
        slot = self._registry.get(message.attempt_provider)
        lookup = getattr(slot.provider, "lookup", None) if slot is not None else None
        if lookup is None:
            return None
        try:
            found: Accepted | None = await lookup(message.id)
        except ProviderFailure as failure:
            raise TransientFailure(
                f"{message.attempt_provider}: cannot look the message up: {failure.detail}"
            ) from failure
        return found
