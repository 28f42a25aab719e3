"""The gateway's database going away between a provider taking a message and the attempt recording it: the
outcome is recorded once the database answers again, not when the attempt's lease runs out (then the
message would be attempted again and, with a provider that cannot be asked, sent twice).

The gateway here has a PostgreSQL of its own (identity and profile stay on the session's), which the SMTP
server stops while it accepts the message, and the test starts again."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from omni.gateway.v1 import gateway_pb2
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres, free_port

from .conftest import _gateways
from .support import (
    Neighbours,
    StartGateway,
    create_cart_template,
    create_person,
    send_request,
    unique,
    until,
)

OUTAGE_S = 2.0
"""How long the database stays down after the message was taken."""
WITHIN_S = 30.0
"""How soon after the database is back the outcome must be recorded: well inside the attempt's lease (120 s)."""


@pytest.fixture(scope="module")
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """The gateway's own PostgreSQL, on a fixed port so that it comes back where the gateway looks."""
    server = EmbeddedPostgres(tmp_path_factory.mktemp("gateway-outage-pg"), free_port(), durable=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def start_gateway_on_own(
    own_postgres: EmbeddedPostgres, nats_server: EmbeddedNats, neighbours: Neighbours
) -> AsyncIterator[StartGateway]:
    """Gateways on the module's own PostgreSQL (running again by the time they stop)."""
    async with _gateways(own_postgres, nats_server, neighbours) as start:
        try:
            yield start
        finally:
            own_postgres.start()


class _WaitsForTheOutage:
    """An SMTP server that, given its first message, has the test stop the gateway's database before it answers
    250; it remembers the recipients of every message it accepted."""

    def __init__(self) -> None:
        self.accepted: list[str] = []
        self.taking = threading.Event()
        self.database_down = threading.Event()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if not self.taking.is_set():
            self.taking.set()
            await asyncio.to_thread(self.database_down.wait, 30)
        self.accepted.extend(envelope.rcpt_tos)
        return "250 OK"


async def test_an_outcome_that_could_not_be_recorded_is_recorded_once_the_database_is_back(
    start_gateway_on_own: StartGateway, neighbours: Neighbours, own_postgres: EmbeddedPostgres
) -> None:
    server = _WaitsForTheOutage()
    port = free_port("127.0.0.1")
    controller = Controller(server, hostname="127.0.0.1", port=port, server_hostname="stops-db")
    controller.start()
    try:
        gateway = await start_gateway_on_own(smtp_port=port)
        email = f"{unique('outage-')}@example.com"
        person_id = await create_person(neighbours, email, consent=True)
        request = send_request(person_id, await create_cart_template(gateway))

        call = asyncio.ensure_future(gateway.stub.SendMessage(request, timeout=OUTAGE_S + WITHIN_S))
        await until(server.taking.is_set, within=20)
        own_postgres.stop()
        server.database_down.set()
        await asyncio.sleep(OUTAGE_S)
        own_postgres.start()
        back = asyncio.get_running_loop().time()

        # The caller is answered with the outcome once it is recorded (an error had it failed meanwhile).
        with contextlib.suppress(grpc.aio.AioRpcError):
            answered = await call
            assert answered.message.status == gateway_pb2.MESSAGE_STATUS_SENT

        await gateway.database.dispose()  # its pooled connections died with the server
        statement = sa.text(
            "SELECT m.status, m.attempt_count, (SELECT count(*) FROM scheduled_jobs AS j "
            "WHERE j.key = m.id::text) AS jobs FROM messages AS m WHERE m.request_id = :request_id"
        )

        async def recorded() -> tuple[str, int, int] | None:
            async with gateway.database.connect() as connection:
                row = (await connection.execute(statement, {"request_id": request.request_id})).one()
            return None if row.status == "queued" else (row.status, row.attempt_count, row.jobs)

        async with asyncio.timeout(WITHIN_S):
            while (outcome := await recorded()) is None:  # noqa: ASYNC110 - polling the database
                await asyncio.sleep(0.2)
        assert asyncio.get_running_loop().time() - back < WITHIN_S
        assert outcome == ("sent", 1, 0)
        await asyncio.sleep(1.0)  # nothing attempts it again
        assert server.accepted == [email]
    finally:
        controller.stop()
