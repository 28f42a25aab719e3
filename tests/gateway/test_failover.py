"""Failover between two real SMTP servers (aiosmtpd), configured as two instances of the smtp provider: the
primary down or refusing for now sends through the secondary; both down keeps the message queued until one
is back; the primary's circuit opens after failures in a row and closes once it answers again; and across a
gateway stopped in the middle of a batch and started again, no message reaches the servers twice."""

from __future__ import annotations

import asyncio
import collections
import email
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from nats.js import JetStreamContext

from omni.gateway.v1 import gateway_pb2
from omni_kit.embedded import free_port

from .ledger_provider import LEDGERS
from .support import (
    Gateway,
    Neighbours,
    StartGateway,
    create_cart_template,
    create_person,
    publish,
    send_request,
    send_requested,
    unique,
    until,
)


@dataclass
class CountingServer:
    """A real SMTP server that counts what it accepted (by the email's X-Omni-Message-Id) and how often it was
    asked while refusing; `refusal` (an SMTP reply) makes it refuse every recipient, `delay_s` slows DATA."""

    port: int = field(default_factory=lambda: free_port("127.0.0.1"))
    refusal: str | None = None
    delay_s: float = 0.0
    accepted: list[str] = field(default_factory=list)
    asked: int = 0
    in_flight: int = 0
    most_in_flight: int = 0
    _controller: Controller | None = None

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        self.asked += 1
        if self.refusal is not None:
            return self.refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1
        content = envelope.original_content or envelope.content or b""
        parsed = email.message_from_bytes(content if isinstance(content, bytes) else content.encode())
        self.accepted.append(str(parsed["X-Omni-Message-Id"]))
        return "250 OK"

    def start(self) -> None:
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port, server_hostname="counting")
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


@pytest.fixture
def servers() -> Iterator[tuple[CountingServer, CountingServer]]:
    """A primary and a secondary SMTP server, not started."""
    primary, secondary = CountingServer(), CountingServer()
    yield primary, secondary
    primary.stop()
    secondary.stop()


def _providers(primary: CountingServer, secondary: CountingServer, **guards: Any) -> list[dict[str, Any]]:
    return [
        {"name": "smtp", "kind": "smtp", "channel": "email", "host": "127.0.0.1", "port": primary.port,
         "timeout_s": 5, **guards},
        {"name": "smtp-backup", "kind": "smtp", "channel": "email", "host": "127.0.0.1",
         "port": secondary.port, "timeout_s": 5, **guards},
    ]  # fmt: skip


async def _send(gateway: Gateway, neighbours: Neighbours) -> gateway_pb2.Message:
    person_id = await create_person(neighbours, f"{unique('fo-')}@example.com", consent=True)
    request = send_request(person_id, await create_cart_template(gateway))
    return (await gateway.stub.SendMessage(request)).message


async def test_with_the_primary_down_the_secondary_takes_the_message(
    start_gateway: StartGateway, neighbours: Neighbours, servers: tuple[CountingServer, CountingServer]
) -> None:
    primary, secondary = servers
    secondary.start()
    gateway = await start_gateway(providers=_providers(primary, secondary))

    message = await _send(gateway, neighbours)

    assert message.status == gateway_pb2.MESSAGE_STATUS_SENT
    assert message.provider == "smtp-backup"
    assert message.provider_message_id.startswith(f"<{message.id}@")
    assert secondary.accepted == [message.id]


async def test_with_the_primary_refusing_for_now_the_secondary_takes_the_message(
    start_gateway: StartGateway, neighbours: Neighbours, servers: tuple[CountingServer, CountingServer]
) -> None:
    primary, secondary = servers
    primary.refusal = "451 4.3.0 try again later"
    primary.start()
    secondary.start()
    gateway = await start_gateway(providers=_providers(primary, secondary))

    message = await _send(gateway, neighbours)

    assert message.status == gateway_pb2.MESSAGE_STATUS_SENT
    assert message.provider == "smtp-backup"
    assert primary.asked == 1 and primary.accepted == []
    assert secondary.accepted == [message.id]


async def test_the_order_of_a_channel_s_providers_is_configurable(
    start_gateway: StartGateway, neighbours: Neighbours, servers: tuple[CountingServer, CountingServer]
) -> None:
    primary, secondary = servers
    primary.start()
    secondary.start()
    gateway = await start_gateway(
        providers=_providers(primary, secondary), provider_order={"email": ["smtp-backup", "smtp"]}
    )

    message = await _send(gateway, neighbours)

    assert message.provider == "smtp-backup"
    assert secondary.accepted == [message.id] and primary.accepted == []


async def test_with_both_down_the_message_waits_and_goes_once_one_is_back(
    start_gateway: StartGateway, neighbours: Neighbours, servers: tuple[CountingServer, CountingServer]
) -> None:
    primary, secondary = servers
    gateway = await start_gateway(providers=_providers(primary, secondary), retry_first_delay_s=0.3)

    queued = await _send(gateway, neighbours)
    assert queued.status == gateway_pb2.MESSAGE_STATUS_QUEUED
    assert queued.error.startswith("smtp: cannot reach the server")
    assert "; smtp-backup: cannot reach the server" in queued.error

    secondary.start()

    async with asyncio.timeout(15):
        while True:
            found = (
                await gateway.stub.GetMessage(gateway_pb2.GetMessageRequest(message_id=queued.id))
            ).message
            if found.status == gateway_pb2.MESSAGE_STATUS_SENT:
                break
            await asyncio.sleep(0.05)
    assert found.provider == "smtp-backup"
    assert found.error == ""
    await asyncio.sleep(0.5)
    assert secondary.accepted == [queued.id]


async def test_the_primary_s_circuit_opens_after_failures_in_a_row_and_closes_when_it_answers_again(
    start_gateway: StartGateway, neighbours: Neighbours, servers: tuple[CountingServer, CountingServer]
) -> None:
    primary, secondary = servers
    primary.refusal = "421 4.3.2 shutting down"
    primary.start()
    secondary.start()
    gateway = await start_gateway(
        providers=_providers(primary, secondary, breaker_failures=2, breaker_reset_s=1.5)
    )

    first, second = await _send(gateway, neighbours), await _send(gateway, neighbours)
    assert primary.asked == 2
    third = await _send(gateway, neighbours)  # open: the primary is not asked
    assert primary.asked == 2
    assert [m.provider for m in (first, second, third)] == ["smtp-backup"] * 3

    primary.refusal = None
    await asyncio.sleep(1.6)  # the circuit half-opens: the next message tries the primary, which answers
    fourth = await _send(gateway, neighbours)
    fifth = await _send(gateway, neighbours)

    assert [fourth.provider, fifth.provider] == ["smtp", "smtp"]
    assert primary.accepted == [fourth.id, fifth.id]
    assert secondary.accepted == [first.id, second.id, third.id]


async def test_a_half_open_circuit_lets_one_trial_send_through_and_the_others_fail_over(
    start_gateway: StartGateway, neighbours: Neighbours, servers: tuple[CountingServer, CountingServer]
) -> None:
    primary, secondary = servers
    primary.refusal = "421 4.3.2 shutting down"
    primary.start()
    secondary.start()
    gateway = await start_gateway(
        providers=_providers(primary, secondary, breaker_failures=2, breaker_reset_s=1.0)
    )
    await _send(gateway, neighbours)
    await _send(gateway, neighbours)
    assert primary.asked == 2  # open now
    template_id = await create_cart_template(gateway)
    requests = [
        send_request(
            await create_person(neighbours, f"{unique('ho-')}@example.com", consent=True), template_id
        )
        for _ in range(6)
    ]
    primary.refusal = None
    primary.delay_s = 0.5  # the trial takes a while: the other sends come while it is under way
    await asyncio.sleep(1.1)

    sent = await asyncio.gather(*(gateway.stub.SendMessage(r) for r in requests))

    providers = sorted(answer.message.provider for answer in sent)
    assert providers == ["smtp"] + ["smtp-backup"] * 5, providers
    assert primary.asked == 3  # the two that opened the circuit, and the one trial


async def test_a_refused_address_fails_the_message_and_is_suppressed(
    start_gateway: StartGateway, neighbours: Neighbours, servers: tuple[CountingServer, CountingServer]
) -> None:
    primary, secondary = servers
    primary.refusal = "550 5.1.1 no such user"
    primary.start()
    secondary.start()
    gateway = await start_gateway(providers=_providers(primary, secondary))
    address = f"{unique('gone-')}@example.com"
    person_id = await create_person(neighbours, address, consent=True)
    template_id = await create_cart_template(gateway)

    failed = (await gateway.stub.SendMessage(send_request(person_id, template_id))).message
    assert failed.status == gateway_pb2.MESSAGE_STATUS_FAILED
    assert failed.error.startswith("smtp: recipient refused")
    assert secondary.accepted == [], "an address refused for good is not tried elsewhere"

    again = (await gateway.stub.SendMessage(send_request(person_id, template_id))).message
    assert again.status == gateway_pb2.MESSAGE_STATUS_FAILED
    assert again.error == "address suppressed: address_invalid"
    assert primary.asked == 1


async def test_no_message_reaches_the_servers_twice_across_a_restart_in_the_middle_of_a_batch(
    start_gateway: StartGateway,
    neighbours: Neighbours,
    servers: tuple[CountingServer, CountingServer],
    js: JetStreamContext,
) -> None:
    primary, secondary = servers
    primary.delay_s = 0.2
    primary.start()
    secondary.start()
    providers = _providers(primary, secondary)
    first = await start_gateway(providers=providers, retry_first_delay_s=0.2, delivery_concurrency=4)
    database_url = first.runtime.settings.database_url
    template_id = await create_cart_template(first)
    persons = [
        await create_person(neighbours, f"{unique('batch-')}@example.com", consent=True) for _ in range(32)
    ]
    requests = [unique("batch-step-") for _ in persons]
    for person_id, request_id in zip(persons, requests, strict=True):
        await publish(js, neighbours.namespace, send_requested(person_id, template_id, request_id))

    await until(lambda: len(primary.accepted) >= 4, within=20)
    await first.runtime.close()
    assert len(primary.accepted) < len(requests), "the restart should fall in the middle of the batch"
    # The secondary is down while the second gateway starts: some messages fail over, some wait.
    secondary.stop()
    second = await start_gateway(providers=providers, retry_first_delay_s=0.2, database_url=database_url)
    secondary.start()

    async def statuses() -> dict[str, str]:
        async with second.database.connect() as connection:
            rows = await connection.execute(
                sa.text("SELECT request_id, status FROM messages WHERE request_id = ANY(:r)"), {"r": requests}
            )
            return {request_id: status for request_id, status in rows}

    async with asyncio.timeout(30):
        while True:
            found = await statuses()
            if len(found) == len(requests) and set(found.values()) == {"sent"}:
                break
            await asyncio.sleep(0.1)
    counted = collections.Counter(primary.accepted + secondary.accepted)
    assert len(counted) == len(requests)
    assert max(counted.values()) == 1, f"sent twice: {[m for m, n in counted.items() if n > 1]}"


async def test_journey_sends_are_queued_by_the_consumer_and_sent_by_the_pool_a_few_at_a_time(
    start_gateway: StartGateway,
    neighbours: Neighbours,
    servers: tuple[CountingServer, CountingServer],
    js: JetStreamContext,
) -> None:
    primary, secondary = servers
    primary.delay_s = 0.3
    primary.start()
    gateway = await start_gateway(providers=_providers(primary, secondary), delivery_concurrency=2)
    template_id = await create_cart_template(gateway)
    persons = [
        await create_person(neighbours, f"{unique('pool-')}@example.com", consent=True) for _ in range(8)
    ]
    requests = [unique("pool-step-") for _ in persons]
    applied_before = gateway.runtime.consumers[0].applied
    for person_id, request_id in zip(persons, requests, strict=True):
        await publish(js, neighbours.namespace, send_requested(person_id, template_id, request_id))

    # The consumer takes every event long before the slow server could have taken their emails.
    await until(lambda: gateway.runtime.consumers[0].applied >= applied_before + len(requests))
    assert len(primary.accepted) < len(requests)
    await until(lambda: len(primary.accepted) == len(requests), within=20)
    assert primary.most_in_flight == 2


async def test_an_attempt_cut_short_after_the_provider_took_the_message_is_reconciled_by_lookup(
    start_gateway: StartGateway, neighbours: Neighbours
) -> None:
    name = unique("ledger-")
    providers = [
        {"name": "ledger", "kind": "tests.gateway.ledger_provider", "channel": "email", "ledger": name}
    ]
    first = await start_gateway(providers=providers)
    ledger = LEDGERS[name]
    address = f"{unique('stall-')}@example.com"
    ledger.stall.add(address)
    person_id = await create_person(neighbours, address, consent=True)
    request = send_request(person_id, await create_cart_template(first))

    # The provider takes the message and the attempt never reports back; the gateway stops (cutting it short
    # after its grace) with the message still queued, its attempt recorded as handed to "ledger".
    call = first.stub.SendMessage(request)
    await until(lambda: len(ledger.taken) == 1)
    call.cancel()
    await first.runtime.close()
    async with first.database.connect() as connection:
        row = (
            await connection.execute(
                sa.text("SELECT status, attempt_provider FROM messages WHERE request_id = :r"),
                {"r": request.request_id},
            )
        ).one()
    assert (row.status, row.attempt_provider) == ("queued", "ledger")

    ledger.stall.clear()
    second = await start_gateway(providers=providers, database_url=first.runtime.settings.database_url)
    message_id = next(iter(ledger.taken))
    async with asyncio.timeout(15):
        while True:
            found = (
                await second.stub.GetMessage(gateway_pb2.GetMessageRequest(message_id=str(message_id)))
            ).message
            if found.status == gateway_pb2.MESSAGE_STATUS_SENT:
                break
            await asyncio.sleep(0.05)
    assert found.provider == "ledger" and found.provider_message_id == f"ledger-{message_id}"
    assert ledger.taken == {message_id: 1}, "found at the provider, not sent again"


async def test_a_provider_s_token_bucket_paces_its_sends(
    start_gateway: StartGateway, neighbours: Neighbours, servers: tuple[CountingServer, CountingServer]
) -> None:
    primary, secondary = servers
    primary.start()
    gateway = await start_gateway(providers=_providers(primary, secondary, rate_per_s=4, burst=1))
    template_id = await create_cart_template(gateway)
    persons = [
        await create_person(neighbours, f"{unique('paced-')}@example.com", consent=True) for _ in range(5)
    ]

    started = asyncio.get_running_loop().time()
    sent = await asyncio.gather(
        *(gateway.stub.SendMessage(send_request(person_id, template_id)) for person_id in persons)
    )
    elapsed = asyncio.get_running_loop().time() - started

    assert {r.message.status for r in sent} == {gateway_pb2.MESSAGE_STATUS_SENT}
    assert {r.message.provider for r in sent} == {"smtp"}
    assert elapsed >= 0.9, f"5 sends at 4/s with a bucket of 1 take a second, not {elapsed:.2f}s"
