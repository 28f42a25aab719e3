"""A provider kind kept outside the gateway's package (kind "tests.gateway.ledger_provider"), with the
optional `lookup`: its "remote side" is a ledger in this process that records what it took, by message id,
as a provider with idempotency keys does. `stall` makes it take a message and then never answer, as a
process that dies between the provider's acceptance and the outcome being recorded."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omni_gateway.domain import Channel
from omni_gateway.providers.base import Accepted, Outgoing, PersonContacts, ReceiptSink


@dataclass
class Ledger:
    """What the remote side took (message id → how often), and the addresses after which it stalls."""

    taken: dict[uuid.UUID, int] = field(default_factory=dict)
    stall: set[str] = field(default_factory=set)


LEDGERS: dict[str, Ledger] = {}


class LedgerProvider:
    """An email provider whose remote side is a Ledger (LEDGERS[options["ledger"]])."""

    channel = Channel.EMAIL

    def __init__(self, name: str, ledger: Ledger) -> None:
        self.name = name
        self._ledger = ledger

    def address_of(self, person: PersonContacts) -> str | None:
        return person.first("email")

    async def start(self, receipts: ReceiptSink) -> None:
        return None

    async def send(self, outgoing: Outgoing) -> Accepted:
        taken = self._ledger.taken
        taken[outgoing.message_id] = taken.get(outgoing.message_id, 0) + 1
        if outgoing.address in self._ledger.stall:
            await asyncio.Event().wait()
        return Accepted(provider=self.name, provider_message_id=f"ledger-{outgoing.message_id}")

    async def lookup(self, message_id: uuid.UUID) -> Accepted | None:
        if message_id not in self._ledger.taken:
            return None
        return Accepted(
            provider=self.name, provider_message_id=f"ledger-{message_id}", details={"found": True}
        )

    async def close(self) -> None:
        return None


def create(name: str, options: Mapping[str, Any], defaults: Mapping[str, Any]) -> LedgerProvider:
    """The provider of the ledger named in options["ledger"] (made on first use)."""
    return LedgerProvider(name, LEDGERS.setdefault(str(options["ledger"]), Ledger()))
