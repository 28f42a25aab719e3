"""The store channel's provider: a message for a person waits until the person is at a till.

`send` talks to no device: it records the message in terminal_messages (for any store, or for the store its
address names) with its expiry, tells the tills where the person is now (TerminalHub.announce, across
replicas), and answers Accepted. The till the person is identified at gets it over ConnectTerminal; the till's
acknowledgement is the DELIVERED receipt; a message no till acknowledged before it expired gets a FAILED
receipt ("expired") from a recurring job of omni-kit's scheduler (`gateway.terminal_expiry`).

Receipts are handed to the sink inside the transaction that records them, before it commits, with a provider
event id of their own (`terminal:acked:<id>`, `terminal:expired:<id>`): a commit that fails after the sink
took one repeats it, never loses it, and the sink's deduplication by event id keeps one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from omni_gateway.domain import Channel
from omni_gateway.providers.base import (
    Accepted,
    FailureKind,
    Outgoing,
    PersonContacts,
    ProviderFailure,
    Receipt,
    ReceiptKind,
    ReceiptSink,
    TerminalContent,
)
from omni_gateway.terminals.hub import Announce
from omni_gateway.terminals.store import Acked, TerminalMessages
from omni_kit.lineage import PERSON_LINEAGE
from omni_kit.runtime import Runtime
from omni_kit.scheduler import Backoff, Job, Transaction, schedule

log = logging.getLogger(__name__)

ANY_STORE = "*"
"""The address of a store message any of the retailer's stores may show."""

MAX_TEXT = 4096
"""The longest text a till is sent (characters): a coupon or a receipt's lines, not a letter."""

EXPIRY_JOB = "gateway.terminal_expiry"
"""The recurring job that ends messages past their expiry."""
EXPIRY_BATCH = 1000
_EXPIRY_KEY = "terminal_messages"
_STORE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class TerminalProvider:
    """ChannelProvider for Channel.STORE: store messages wait in the gateway's database for a till."""

    name = "terminal"
    channel = Channel.STORE

    def __init__(
        self, *, transaction: Transaction, messages: TerminalMessages, announce: Announce, ttl_s: float
    ) -> None:
        self._transaction = transaction
        self._messages = messages
        self._announce = announce
        self._ttl_s = ttl_s
        self._receipts: ReceiptSink | None = None

    def address_of(self, person: PersonContacts) -> str | None:
        """Every person can be met at a till: any store."""
        return ANY_STORE

    async def start(self, receipts: ReceiptSink) -> None:
        """Keep the sink acknowledgements and expiries are reported to."""
        self._receipts = receipts

    async def send(self, outgoing: Outgoing) -> Accepted:
        """Record the message as waiting for its person (once per message id) and tell the tills."""
        content = outgoing.content
        if not isinstance(content, TerminalContent):
            raise ProviderFailure(FailureKind.PERMANENT, "not a terminal message", provider=self.name)
        if not content.text.strip():
            raise ProviderFailure(FailureKind.PERMANENT, "the terminal text is empty", provider=self.name)
        if len(content.text) > MAX_TEXT:
            raise ProviderFailure(
                FailureKind.PERMANENT, f"the terminal text is over {MAX_TEXT} characters", provider=self.name
            )
        address = content.store_id or outgoing.address or ANY_STORE
        if address != ANY_STORE and not _STORE.match(address):
            raise ProviderFailure(
                FailureKind.ADDRESS_INVALID, f"not a store id: {address!r}", provider=self.name
            )
        store_id = None if address == ANY_STORE else address
        async with self._transaction() as session:
            # The person the id leads to now, so a till where the survivor is identified hears of it at once.
            person_id = (await PERSON_LINEAGE.current(session, [outgoing.person_id]))[outgoing.person_id]
            await self._messages.record(
                session, outgoing.message_id, person_id, store_id, content.text, self._ttl_s
            )
        await self._announce(person_id)
        return Accepted(
            provider=self.name, provider_message_id=str(outgoing.message_id), details={"store_id": address}
        )

    async def acknowledged(self, acked: Sequence[Acked]) -> None:
        """Report messages a till acknowledged as DELIVERED (called in the transaction that marks them)."""
        for one in acked:
            await self._report(
                Receipt(
                    provider=self.name,
                    kind=ReceiptKind.DELIVERED,
                    provider_event_id=f"terminal:acked:{one.message_id}",
                    occurred_at=one.acked_at,
                    message_id=one.message_id,
                    provider_message_id=str(one.message_id),
                )
            )

    async def expire(self, session: AsyncSession, limit: int = EXPIRY_BATCH) -> int:
        """End at most `limit` messages past their expiry, each with a FAILED receipt ('expired'); return
        how many."""
        expired = await self._messages.expire(session, limit)
        for one in expired:
            await self._report(
                Receipt(
                    provider=self.name,
                    kind=ReceiptKind.FAILED,
                    provider_event_id=f"terminal:expired:{one.message_id}",
                    occurred_at=one.expired_at,
                    message_id=one.message_id,
                    provider_message_id=str(one.message_id),
                    detail="expired",
                )
            )
        return len(expired)

    async def _report(self, receipt: Receipt) -> None:
        if self._receipts is None:
            # Started by the delivery flow with its sink; a receipt before that would be lost, so refuse it
            # (the transaction rolls back and the acknowledgement or expiry is tried again).
            raise RuntimeError("the terminal provider was not started with a receipt sink")
        await self._receipts(receipt)

    async def close(self) -> None:
        """Nothing is held open: tills connect to the gateway, not the other way round."""


class _Expiry:
    """The expiry job's handler: one batch, then the next run (at once while there is more)."""

    def __init__(self, provider: TerminalProvider, every: timedelta) -> None:
        self._provider = provider
        self._every = every

    async def __call__(self, session: AsyncSession, jobs: Sequence[Job]) -> None:
        count = await self._provider.expire(session, EXPIRY_BATCH)
        next_in = timedelta(0) if count >= EXPIRY_BATCH else self._every
        await schedule(session, EXPIRY_JOB, _EXPIRY_KEY, next_in, replace=True)


async def keep_terminal_messages_expiring(
    runtime: Runtime, provider: TerminalProvider, every: timedelta
) -> None:
    """Have the job worker end expired store messages every `every`, and schedule the first run (each
    replica asks, one job results)."""
    runtime.add_job_kind(
        EXPIRY_JOB,
        _Expiry(provider, every),
        batch_size=1,
        lease=timedelta(minutes=5),
        max_attempts=1_000_000,
        backoff=Backoff(first_s=5, max_s=max(every.total_seconds(), 5)),
    )

    async def schedule_first() -> None:
        async with runtime.transaction() as session:
            await schedule(session, EXPIRY_JOB, _EXPIRY_KEY)

    await runtime.when_database_answers(schedule_first)
