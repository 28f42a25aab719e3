"""Listening to what the services publish: every envelope on a namespace's event subjects, as it arrives."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Protocol, TypeVar

import nats
from nats.aio.msg import Msg

from omni.events.v1 import envelope_pb2
from omni_kit.bus import envelopes_in


class Log(Protocol):
    """What a test's event log keeps: the envelopes in arrival order, and a signal that more arrived."""

    envelopes: list[envelope_pb2.Envelope]
    arrived: asyncio.Event


L = TypeVar("L", bound=Log)


@contextlib.asynccontextmanager
async def recording(log: L, nats_url: str, namespace: str) -> AsyncIterator[L]:
    """Fill `log` with every envelope published on the namespace while the block runs (batches opened)."""
    client = await nats.connect(nats_url)

    async def received(message: Msg) -> None:
        log.envelopes.extend(envelopes_in(message.data, message.headers))
        log.arrived.set()

    await client.subscribe(f"{namespace}.events.>", cb=received)
    await client.flush()
    try:
        yield log
    finally:
        await client.drain()
