"""Helpers of the store-terminal tests: a gateway serving tills (with decisioning beside it), a till as a
client of ConnectTerminal, store messages sent with SendMessage (a template with a terminal variant), their
receipts as the gateway recorded them, and a second "replica" on the same database and NATS, to check that a
till hears of a message recorded elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias, cast

import grpc
import sqlalchemy as sa
from google.protobuf import struct_pb2
from sqlalchemy.ext.asyncio import AsyncEngine

from omni.common.v1 import common_pb2
from omni.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from omni.identity.v1 import identity_pb2
from omni.profile.v1 import profile_pb2
from omni_gateway.providers.terminal import ANY_STORE

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


@dataclass(frozen=True)
class StoredReceipt:
    """A receipt as the gateway recorded it (its `receipts` table)."""

    kind: str
    provider: str
    provider_event_id: str
    detail: str


@dataclass
class Tills:
    """A gateway serving tills of STORE (and OTHER_STORE), a store template, and what tests need."""

    stub: Any
    database: AsyncEngine
    neighbours: Neighbours
    template_id: str
    other_replica: Any
    """A client of another gateway replica on the same database and NATS."""
    namespace: str
    settings: Any
    """The gateway's settings (omni_gateway.main.Settings)."""
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

    async def record(self, person_id: str, text: str, *, store: str = ANY_STORE, stub: Any = None) -> str:
        """A store message for the person, sent with SendMessage on the store channel (transactional: a
        receipt or a coupon bought); its id. `stub`: another gateway on the same database sends it."""
        variables = struct_pb2.Struct()
        variables.update({"text": text, "store_id": store})
        response = await (stub or self.stub).SendMessage(
            gateway_pb2.SendMessageRequest(
                request_id=unique("till-req-"),
                person_id=person_id,
                channel=common_pb2.CHANNEL_STORE,
                template_id=self.template_id,
                purpose=profile_pb2.CONSENT_PURPOSE_TRANSACTIONAL,
                variables=variables,
            )
        )
        message = response.message
        assert message.status == gateway_pb2.MESSAGE_STATUS_SENT, message
        return str(message.id)

    async def receipts_of(self, message_id: str) -> list[StoredReceipt]:
        """The receipts the gateway recorded for a message, oldest first."""
        async with self.database.connect() as connection:
            rows = await connection.execute(
                sa.text(
                    "SELECT kind, provider, provider_event_id, detail FROM receipts "
                    "WHERE message_id = :m ORDER BY occurred_at"
                ),
                {"m": uuid.UUID(message_id)},
            )
            return [StoredReceipt(*row) for row in rows]

    async def until_receipts(self, message_id: str, within: float = 10.0) -> list[StoredReceipt]:
        """Wait until the message has a receipt; its receipts."""
        found: list[StoredReceipt] = []

        async def recorded() -> bool:
            found[:] = await self.receipts_of(message_id)
            return bool(found)

        await eventually(recorded, within)
        return found


async def store_template(stub: Any) -> str:
    """A template with a terminal variant whose text and store come from the variables; its id."""
    template_id = unique("till-")
    await stub.CreateTemplate(
        gateway_pb2.CreateTemplateRequest(
            template=gateway_pb2.Template(
                id=template_id,
                variants=[
                    gateway_pb2.TemplateVariant(
                        terminal=gateway_pb2.TerminalVariant(
                            text="{{ variables.text }}", store_id="{{ variables.store_id }}"
                        )
                    )
                ],
            )
        )
    )
    return template_id


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


async def eventually(condition: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    """Wait until an asynchronous condition holds, checking every 50 ms."""
    async with asyncio.timeout(within):
        for _ in itertools.count():
            if await condition():
                return
            await asyncio.sleep(0.05)


def stub_of(channel: grpc.aio.Channel) -> Any:
    return gateway_pb2_grpc.GatewayServiceStub(channel)
