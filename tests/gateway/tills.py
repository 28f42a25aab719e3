"""Helpers of the store-terminal tests: a gateway serving tills (with decisioning beside it, and a recording
receipt sink), a till as a client of ConnectTerminal, and a second "replica" recording store messages the
way the delivery flow hands them to the terminal provider."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias, cast

import grpc
import nats
from sqlalchemy.ext.asyncio import AsyncEngine

from omni.common.v1 import common_pb2
from omni.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from omni.identity.v1 import identity_pb2
from omni_gateway.domain import Channel, Purpose
from omni_gateway.providers.base import Outgoing, Receipt, TerminalContent
from omni_gateway.providers.terminal import ANY_STORE, TerminalProvider
from omni_gateway.terminals.hub import TerminalHub, waiting_subject
from omni_gateway.terminals.store import TerminalMessages
from omni_kit.db import session_factory
from omni_kit.ids import new_id

from .support import Neighbours, unique

Frame: TypeAlias = gateway_pb2.ConnectTerminalResponse


class TillClient:
    """A till's end of ConnectTerminal: frames it sends go up in order; frames that come down are collected
    by a task of their own, so a test can wait for the next one or check that none came."""

    def __init__(self, stub: Any, *first: gateway_pb2.ConnectTerminalRequest) -> None:
        self._up: asyncio.Queue[gateway_pb2.ConnectTerminalRequest | None] = asyncio.Queue()
        for frame in first:
            self._up.put_nowait(frame)
        self.down: asyncio.Queue[Frame] = asyncio.Queue()
        self.call = stub.ConnectTerminal(self._frames())
        self._reader = asyncio.create_task(self._read())

    async def _frames(self) -> AsyncIterator[gateway_pb2.ConnectTerminalRequest]:
        while (frame := await self._up.get()) is not None:
            yield frame

    async def _read(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for frame in self.call:
                self.down.put_nowait(frame)

    def identify(self, kind: int, value: str, request_id: str = "") -> None:
        self.send(
            customer_identified=gateway_pb2.CustomerIdentified(
                identifier_type=cast(Any, kind), identifier_value=value, request_id=request_id
            )
        )

    def ack(self, *message_ids: str) -> None:
        self.send(ack=gateway_pb2.TerminalAck(message_ids=list(message_ids)))

    def send(self, **frame: Any) -> None:
        self._up.put_nowait(gateway_pb2.ConnectTerminalRequest(**frame))

    async def next(self, within: float = 5.0) -> Frame:
        """The next frame down."""
        async with asyncio.timeout(within):
            return await self.down.get()

    async def quiet(self, for_s: float = 0.3) -> None:
        """Assert no frame comes down for a while."""
        await asyncio.sleep(for_s)
        assert self.down.empty(), self.down.get_nowait()

    async def status(self, within: float = 5.0) -> grpc.StatusCode:
        """How the stream ended."""
        async with asyncio.timeout(within):
            await self._reader
            return cast(grpc.StatusCode, await self.call.code())

    async def hang_up(self) -> None:
        """The till goes away (the network breaks): the call is cancelled."""
        self.call.cancel()
        with contextlib.suppress(BaseException):
            await self._reader


@dataclass
class Tills:
    """A gateway serving tills of STORE (and OTHER_STORE), the receipts it reported, and what tests need."""

    stub: Any
    database: AsyncEngine
    neighbours: Neighbours
    receipts: list[Receipt]
    other_replica: TerminalProvider
    namespace: str
    nats_url: str
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def connect(
        self, terminal: str | None = None, *, store: str = "", key: str = "", acked: tuple[str, ...] = ()
    ) -> TillClient:
        store = store or STORE
        hello = gateway_pb2.TerminalHello(
            store_id=store,
            terminal_id=terminal or unique("till-"),
            terminal_key=key or KEYS.get(store, "x" * 20),
            acked_message_ids=list(acked),
        )
        return TillClient(self.stub, gateway_pb2.ConnectTerminalRequest(hello=hello))

    def open(self, *first: gateway_pb2.ConnectTerminalRequest) -> TillClient:
        """A stream that starts with these frames (no hello of its own)."""
        return TillClient(self.stub, *first)

    async def hello(self, till: TillClient) -> gateway_pb2.TerminalHelloOk:
        frame = await till.next()
        assert frame.WhichOneof("frame") == "hello_ok", frame
        return frame.hello_ok

    async def record(
        self, person_id: str, text: str, *, store: str = ANY_STORE, provider: TerminalProvider | None = None
    ) -> str:
        """A store message for the person, as the delivery flow hands it to the terminal provider (here the
        provider of another replica: the gateway hears of it over NATS)."""
        message_id = new_id()
        await (provider or self.other_replica).send(
            Outgoing(
                message_id=message_id,
                person_id=uuid.UUID(person_id),
                channel=Channel.STORE,
                purpose=Purpose.MARKETING,
                address=store,
                content=TerminalContent(text),
            )
        )
        return str(message_id)

    def receipts_of(self, message_id: str) -> list[Receipt]:
        return [r for r in self.receipts if str(r.message_id) == message_id]


STORE = "berlin-1"
OTHER_STORE = "hamburg-2"
KEYS = {STORE: "berlin-terminal-key-0001", OTHER_STORE: "hamburg-terminal-key-0002"}
STORES = {STORE: {"key": KEYS[STORE], "region": "DE"}, OTHER_STORE: {"key": KEYS[OTHER_STORE]}}
OFFER = "double-points-at-the-till"


async def customer(neighbours: Neighbours, *identifiers: tuple[str, str]) -> str:
    """A person known to identity by these identifiers (a loyalty card by default)."""
    found = identifiers or (("loyalty_card", unique("LC-")),)
    response = await neighbours.identity.ResolvePerson(
        identity_pb2.ResolvePersonRequest(
            identifiers=[common_pb2.Identifier(type=t, value=v) for t, v in found], source="app"
        )
    )
    return str(response.resolution.person_id)


@contextlib.asynccontextmanager
async def other_replica(
    database: AsyncEngine, nats_url: str, namespace: str, *, ttl_s: float = 3600.0
) -> AsyncIterator[TerminalProvider]:
    """A terminal provider on the gateway's database, announcing on NATS like another replica would."""
    client = await nats.connect(nats_url)
    hub = TerminalHub(max_streams=1)
    await hub.listen(client, waiting_subject(namespace))
    sessions = session_factory(database)

    @contextlib.asynccontextmanager
    async def transaction() -> AsyncIterator[Any]:
        async with sessions() as session, session.begin():
            yield session

    try:
        yield TerminalProvider(
            transaction=transaction, messages=TerminalMessages(), announce=hub.announce, ttl_s=ttl_s
        )
    finally:
        await hub.stop()
        await client.drain()


async def eventually(condition: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    """Wait until an asynchronous condition holds, checking every 50 ms."""
    async with asyncio.timeout(within):
        for _ in itertools.count():
            if await condition():
                return
            await asyncio.sleep(0.05)


def stub_of(channel: grpc.aio.Channel) -> Any:
    return gateway_pb2_grpc.GatewayServiceStub(channel)
