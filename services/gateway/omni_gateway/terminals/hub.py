"""The tills connected to this replica and who is at each, and how every replica hears of a new message.

The map holds one entry per open stream and forgets it when the stream ends, so it is bounded by the open
streams (`terminal_max_streams`), never by persons or messages. A store message recorded on one replica must
reach a till whose stream is open on another: the recording replica publishes the person's id on a NATS core
subject (`<namespace>.live.gateway.terminal_waiting`, not the event log: nothing is kept), every replica
listens, and a replica where the person is at a till has that stream take the person's waiting messages from
the database. A notice lost (NATS down for a moment) delays nothing but the live push: the message still waits
in the table and goes down at the person's next identification.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Protocol

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from omni_gateway.terminals.store import Till
from omni_kit.errors import ResourceExhausted

log = logging.getLogger(__name__)

_ORIGIN = "Omni-Origin"


class Present(Protocol):
    """An open till stream as the hub sees it."""

    till: Till

    def superseded(self) -> None:
        """A newer stream of the same till opened: end this one."""
        ...

    def waiting(self, person_id: uuid.UUID) -> None:
        """A message for the person now at this till was recorded: take it."""
        ...


class TerminalHub:
    """The open till streams of this replica, by till and by the person identified at each."""

    def __init__(self, *, max_streams: int) -> None:
        self._max_streams = max_streams
        self._tills: dict[Till, Present] = {}
        self._persons: dict[uuid.UUID, set[Till]] = {}
        self._at: dict[Till, uuid.UUID] = {}
        self._origin = uuid.uuid4().hex
        self._nats: NatsClient | None = None
        self._subject = ""
        self._subscription: Subscription | None = None

    @property
    def open_streams(self) -> int:
        """How many till streams are open here."""
        return len(self._tills)

    def open(self, stream: Present) -> None:
        """Register a till's stream; a stream of the same till open before is superseded (ended)."""
        older = self._tills.get(stream.till)
        if older is None and len(self._tills) >= self._max_streams:
            raise ResourceExhausted(
                message=f"this gateway holds {self._max_streams} till streams already; try another or later",
                reason="TOO_MANY_TERMINAL_STREAMS",
            )
        if older is not None:
            self.close(older)
            older.superseded()
        self._tills[stream.till] = stream

    def close(self, stream: Present) -> None:
        """Forget a stream that ended (nothing if a newer stream of its till took its place)."""
        if self._tills.get(stream.till) is not stream:
            return
        del self._tills[stream.till]
        self.identify(stream, None)

    def identify(self, stream: Present, person_id: uuid.UUID | None) -> None:
        """Say who is at the stream's till now (None: nobody)."""
        till = stream.till
        before = self._at.pop(till, None)
        if before is not None:
            tills = self._persons.get(before)
            if tills is not None:
                tills.discard(till)
                if not tills:
                    del self._persons[before]
        if person_id is not None and self._tills.get(till) is stream:
            self._at[till] = person_id
            self._persons.setdefault(person_id, set()).add(till)

    def person_at(self, till: Till) -> uuid.UUID | None:
        """Who is at a till connected here."""
        return self._at.get(till)

    def _wake(self, person_id: uuid.UUID) -> None:
        for till in list(self._persons.get(person_id, ())):
            stream = self._tills.get(till)
            if stream is not None:
                stream.waiting(person_id)

    async def announce(self, person_id: uuid.UUID) -> None:
        """A message for the person was recorded (and committed): tills here and on other replicas where the
        person is now take it."""
        self._wake(person_id)
        if self._nats is not None and self._nats.is_connected:
            with contextlib.suppress(Exception):
                await self._nats.publish(self._subject, person_id.bytes, headers={_ORIGIN: self._origin})

    async def listen(self, client: NatsClient, subject: str) -> None:
        """Hear of messages recorded by other replicas."""
        self._nats = client
        self._subject = subject

        async def heard(message: Msg) -> None:
            if (message.headers or {}).get(_ORIGIN) == self._origin or len(message.data) != 16:
                return
            self._wake(uuid.UUID(bytes=message.data))

        self._subscription = await client.subscribe(subject, cb=heard)

    async def stop(self) -> None:
        """Stop listening."""
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
            self._subscription = None


def waiting_subject(namespace: str) -> str:
    """The NATS core subject replicas announce recorded store messages on."""
    return f"{namespace}.live.gateway.terminal_waiting"


Announce = Callable[[uuid.UUID], Awaitable[None]]
"""Tells the tills where a person is that a message for them was recorded."""

__all__ = ["Announce", "Present", "TerminalHub", "waiting_subject"]
