"""A gateway that stops gracefully gives back the leases of the attempts it did not finish: the messages are
due again at once, for the next gateway, instead of waiting for the lease to run out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from omni.gateway.v1 import gateway_pb2

from .support import (
    Gateway,
    Neighbours,
    StartGateway,
    create_cart_template,
    create_person,
    send_request,
    unique,
)


@pytest.fixture
async def stalling_smtp(down_port: int) -> AsyncIterator[asyncio.Event]:
    """An SMTP server on down_port that takes connections and never says a word, started when the test sets
    the event (until then nothing listens there)."""
    go = asyncio.Event()
    connections: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    async def serve() -> asyncio.Server:
        await go.wait()
        return await asyncio.start_server(hold, "127.0.0.1", down_port)

    starting = asyncio.create_task(serve())
    yield go
    if starting.done():
        server = starting.result()
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()
    else:
        starting.cancel()


async def _lease(gateway: Gateway, message_id: str) -> sa.Row[tuple[int, bool, bool]]:
    """The message's attempts, whether an attempt holds it, and whether its scheduled attempt is due."""
    async with gateway.database.connect() as connection:
        return (
            await connection.execute(
                sa.text(
                    "SELECT m.attempt_count, coalesce(m.claimed_until > now(), false) AS leased,"
                    " j.due_at <= now() AS due"
                    " FROM messages AS m JOIN scheduled_jobs AS j"
                    " ON j.kind = 'gateway.delivery_attempt' AND j.key = m.id::text"
                    " WHERE m.id = CAST(:id AS uuid)"
                ),
                {"id": message_id},
            )
        ).one()


async def test_a_stopping_gateway_gives_back_the_lease_of_an_attempt_in_progress(
    start_gateway: StartGateway, neighbours: Neighbours, down_port: int, stalling_smtp: asyncio.Event
) -> None:
    gateway = await start_gateway(
        smtp_port=down_port, smtp_timeout_s=60, retry_first_delay_s=0.2, attempt_lease_s=120
    )
    person_id = await create_person(neighbours, f"{unique('stop-')}@example.com", consent=True)
    request = send_request(person_id, await create_cart_template(gateway))
    queued = (await gateway.stub.SendMessage(request)).message  # nobody listens yet: queued for a retry
    assert queued.status == gateway_pb2.MESSAGE_STATUS_QUEUED

    # Its scheduled attempt takes it up against a server that never answers: the attempt holds the lease.
    stalling_smtp.set()
    async with asyncio.timeout(10):
        while True:
            lease = await _lease(gateway, queued.id)
            if lease.attempt_count == 2 and lease.leased:
                break
            await asyncio.sleep(0.05)

    await gateway.runtime.close()

    lease = await _lease(gateway, queued.id)
    assert not lease.leased
    assert lease.due
