"""One till's ConnectTerminal stream: hello and its key, then identifications, acknowledgements and departures
up; the customer's offers and messages down.

The stream's reader handles the till's frames one at a time, in order; what goes down is queued and written
by the call. A message pushed while the customer is at the till (TerminalHub) takes the same lock as an
identification, so a customer's `customer` frame always comes before the messages pushed for them.

Nothing is lost and nothing is shown twice, as long as the till shows each message id once per stream and
acknowledges what it showed: a message goes down one stream once (when the person is identified, or pushed
while they are at the till); a till that reconnects is sent again what it was delivered and did not
acknowledge (acknowledgements it names in its hello count first), and never what it acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeAlias

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.ext.asyncio import AsyncConnection

from omni.gateway.v1 import gateway_pb2
from omni_gateway.providers.terminal import TerminalProvider
from omni_gateway.terminals.hub import TerminalHub
from omni_gateway.terminals.identify import Recognition, identifier_of
from omni_gateway.terminals.settings import TerminalSettings
from omni_gateway.terminals.store import TerminalMessages, Till, WaitingMessage
from omni_kit import validation
from omni_kit.errors import (
    Aborted,
    FieldViolation,
    InvalidArgument,
    OmniError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Violations,
)
from omni_kit.scheduler import Transaction

log = logging.getLogger(__name__)

Frame: TypeAlias = gateway_pb2.ConnectTerminalResponse

Autocommit = Callable[[], AbstractAsyncContextManager[AsyncConnection]]
"""Opens a database connection whose statements each commit by themselves."""

# Compared against when the store is unknown, so an unknown store takes as long as a wrong key.
_NO_KEY = b"\x00" * 32

MAX_QUEUED_FRAMES = 1000
"""Frames waiting to go down one stream; a till that sends but does not read is cut off beyond it."""

DRAIN_FRAMES = 1000
DRAIN_S = 1.0
"""How much of what a till is still sending is read (and dropped) before its stream ends with an error."""


async def drain(requests: AsyncIterator[Any]) -> None:
    """Read what the till is still sending, up to DRAIN_FRAMES frames or DRAIN_S seconds, dropping it.

    A gRPC client that is still writing when the server ends the call reads INTERNAL ("Internal error from
    Core") rather than the status the server sent, so a stream that ends with a refusal first lets the till
    finish what it had on the way (a till that keeps sending is ended all the same)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(DRAIN_S):
            count = 0
            async for _ in requests:
                count += 1
                if count >= DRAIN_FRAMES:
                    return


def _timestamp(value: Any) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def message_frame(message: WaitingMessage) -> gateway_pb2.TerminalMessage:
    """A waiting message as the till is sent it."""
    return gateway_pb2.TerminalMessage(
        message_id=str(message.message_id),
        person_id=str(message.person_id),
        text=message.text,
        create_time=_timestamp(message.create_time),
        expire_time=_timestamp(message.expires_at),
        resent=message.resent,
    )


def _rejected(error: OmniError, request_id: str = "") -> Frame:
    violations = getattr(error, "violations", [])
    return Frame(
        rejected=gateway_pb2.TerminalRejection(
            request_id=request_id,
            reason=error.reason,
            message=error.message,
            violations=[
                gateway_pb2.TerminalFieldViolation(field=v.field, description=v.description)
                for v in violations
            ],
        )
    )


class TerminalStreams:
    """Serves ConnectTerminal: authenticates tills and runs each one's conversation."""

    def __init__(
        self,
        *,
        settings: TerminalSettings,
        transaction: Transaction,
        autocommit: Autocommit,
        messages: TerminalMessages,
        hub: TerminalHub,
        recognition: Recognition,
        provider: TerminalProvider,
    ) -> None:
        self.settings = settings
        self.transaction = transaction
        self.autocommit = autocommit
        self.messages = messages
        self.hub = hub
        self.recognition = recognition
        self.provider = provider

    def authenticate(self, hello: gateway_pb2.TerminalHello) -> None:
        """Raise Unauthenticated unless the hello carries its store's key (compared in constant time)."""
        store = self.settings.terminal_stores.get(hello.store_id)
        expected = store.key.get_secret_value().encode() if store is not None else _NO_KEY
        # Digests, so that the comparison does not depend on the length of either key either.
        matches = hmac.compare_digest(
            hashlib.sha256(expected).digest(), hashlib.sha256(hello.terminal_key.encode()).digest()
        )
        if store is None or not matches:
            raise Unauthenticated(
                message="unknown store or wrong terminal key",
                reason="TERMINAL_KEY_REJECTED",
                metadata={"store_id": hello.store_id},
            )

    async def _hello(
        self, requests: AsyncIterator[gateway_pb2.ConnectTerminalRequest]
    ) -> gateway_pb2.TerminalHello:
        try:
            async with asyncio.timeout(self.settings.terminal_hello_timeout_s):
                first = await anext(requests)
        except (StopAsyncIteration, TimeoutError):
            raise InvalidArgument(
                message=f"a till's stream starts with a hello, within {self.settings.terminal_hello_timeout_s} s",
                violations=[FieldViolation("hello", "required")],
            ) from None
        try:
            violations = validation.check(first)
            if not violations and first.WhichOneof("frame") != "hello":
                violations.add("hello", "the first frame must be a hello")
            violations.raise_if_any("the hello is not valid")
            self.authenticate(first.hello)
        except OmniError:
            await drain(requests)
            raise
        return first.hello

    async def connect(
        self, requests: AsyncIterator[gateway_pb2.ConnectTerminalRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Frame]:
        """The ConnectTerminal call: hello, resume, then the conversation until the till hangs up."""
        hello = await self._hello(requests)
        till = Till(hello.store_id, hello.terminal_id)
        conversation = _Conversation(self, till)
        async with self.transaction() as session:
            acked = await self.messages.ack(session, till, [uuid.UUID(i) for i in hello.acked_message_ids])
            await self.provider.acknowledged(acked)
            last = await self.messages.last_ack(session, till)
            resent = await self.messages.resume(session, till, self.settings.terminal_messages_per_visit)
        self.hub.open(conversation)
        reader = asyncio.create_task(
            conversation.read(requests), name=f"terminal {till.store_id}/{till.terminal_id}"
        )
        try:
            ok = gateway_pb2.TerminalHelloOk(resent_count=len(resent))
            if last is not None:
                ok.last_acked_message_id = str(last.message_id)
                ok.last_ack_time.CopyFrom(_timestamp(last.acked_at))
            yield Frame(hello_ok=ok)
            for message in resent:
                yield Frame(message=message_frame(message))
            async for frame in conversation.frames():
                yield frame
        except OmniError:
            # Superseded, not reading, its database gone: the reader stops handling the till's frames and
            # reads what is still on its way before the stream ends with the error (see `drain`).
            conversation.ending = True
            with contextlib.suppress(BaseException):
                async with asyncio.timeout(DRAIN_S):
                    await asyncio.shield(reader)
            raise
        finally:
            self.hub.close(conversation)
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader


_END = object()


class _Conversation:
    """The server side of one till's stream."""

    def __init__(self, streams: TerminalStreams, till: Till) -> None:
        self._streams = streams
        self.till = till
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._lock = asyncio.Lock()
        self._pushes: set[asyncio.Task[None]] = set()
        self._person: uuid.UUID | None = None
        self.ending = False
        """Set when the stream ends with an error: the till's frames are read but no longer handled."""

    async def frames(self) -> AsyncIterator[Frame]:
        """What goes down, until the till hangs up (or a newer stream of the till takes over)."""
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _put(self, frame: Frame) -> None:
        if self._queue.qsize() >= MAX_QUEUED_FRAMES:
            self._queue.put_nowait(
                ResourceExhausted(
                    message=f"over {MAX_QUEUED_FRAMES} frames wait for the till to read them",
                    reason="TERMINAL_NOT_READING",
                )
            )
            return
        self._queue.put_nowait(frame)

    def superseded(self) -> None:
        self._queue.put_nowait(
            Aborted(message="a newer stream of this till took over", reason="TERMINAL_RECONNECTED")
        )

    def waiting(self, person_id: uuid.UUID) -> None:
        task = asyncio.create_task(self._push(person_id))
        self._pushes.add(task)
        task.add_done_callback(self._pushes.discard)

    async def _push(self, person_id: uuid.UUID) -> None:
        async with self._lock:
            if self._person != person_id:
                return
            try:
                found = await self._claim(person_id)
            except Exception:
                # The message waits in the table; the person's next identification takes it.
                log.exception("pushing store messages to %s failed", self.till)
                return
            for message in found:
                self._put(Frame(message=message_frame(message)))

    async def _claim(self, person_id: uuid.UUID) -> list[WaitingMessage]:
        # One statement, committed by itself: one round trip on the till's path rather than three (BEGIN,
        # the statement, COMMIT).
        streams = self._streams
        async with streams.autocommit() as connection:
            return await streams.messages.claim(
                connection, person_id, self.till, streams.settings.terminal_messages_per_visit
            )

    async def read(self, requests: AsyncIterator[gateway_pb2.ConnectTerminalRequest]) -> None:
        """Handle the till's frames in order until it hangs up."""
        try:
            async for request in requests:
                if not self.ending:
                    await self._handle(request)
            self._queue.put_nowait(_END)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # an undecodable frame, the database gone: the stream ends with it
            self.ending = True
            await drain(requests)
            self._queue.put_nowait(error)
        finally:
            for task in list(self._pushes):
                task.cancel()

    async def _handle(self, request: gateway_pb2.ConnectTerminalRequest) -> None:
        kind = request.WhichOneof("frame")
        violations = validation.check(request)
        if kind == "hello":
            violations.add("hello", "the stream said hello already")
        request_id = request.customer_identified.request_id if kind == "customer_identified" else ""
        try:
            if kind == "customer_identified":
                await self._identified(request.customer_identified, violations)
            else:
                violations.raise_if_any("the frame is not valid")
                if kind == "ack":
                    await self._acked([uuid.UUID(i) for i in request.ack.message_ids])
                elif kind == "customer_left":
                    await self._left()
        except (InvalidArgument, Unavailable) as error:
            # A bad frame or identity not answering in time: the till hears why, and the stream goes on.
            self._put(_rejected(error, request_id))

    async def _identified(self, found: gateway_pb2.CustomerIdentified, violations: Violations) -> None:
        streams = self._streams
        identifier = identifier_of(found, streams.settings.store_region(self.till.store_id), violations)
        violations.raise_if_any("the identification is not valid")
        if identifier is None:
            raise InvalidArgument(message="the identification is not valid")
        async with self._lock:
            person_id = await streams.recognition.person_of(identifier)
            self._person = person_id
            streams.hub.identify(self, person_id)
            if person_id is None:
                self._put(
                    Frame(customer=gateway_pb2.TerminalCustomer(request_id=found.request_id, known=False))
                )
                return
            decision, waiting = await asyncio.gather(
                streams.recognition.decide(person_id, self.till.store_id, self.till.terminal_id),
                self._claim(person_id),
            )
            self._put(
                Frame(
                    customer=gateway_pb2.TerminalCustomer(
                        request_id=found.request_id,
                        known=True,
                        person_id=str(person_id),
                        decision_id=decision.decision_id,
                        actions=decision.actions,
                        decision_error=decision.error,
                        messages=[message_frame(m) for m in waiting],
                    )
                )
            )

    async def _acked(self, message_ids: Sequence[uuid.UUID]) -> None:
        streams = self._streams
        async with streams.transaction() as session:
            acked = await streams.messages.ack(session, self.till, message_ids)
            await streams.provider.acknowledged(acked)

    async def _left(self) -> None:
        streams = self._streams
        async with self._lock:
            self._person = None
            streams.hub.identify(self, None)
            async with streams.transaction() as session:
                await streams.messages.release(session, self.till)
