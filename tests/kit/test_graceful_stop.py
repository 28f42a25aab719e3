"""SIGTERM under load: a real service (`omni serve identity`) stops taking calls (UNAVAILABLE, which clients
retry), lets the call in flight finish within the grace period, cancels nothing it had received, and exits
cleanly; everything it acknowledged is stored."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from omni.common.v1 import common_pb2
from omni.identity.v1 import identity_pb2, identity_pb2_grpc
from omni_identity.normalise import IdentifierKey
from omni_identity.repository import identifier_lock_key
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from omni_kit.errors import status_details


@pytest.fixture
def identity_process(
    postgres: EmbeddedPostgres, nats_server: EmbeddedNats
) -> Iterator[tuple[subprocess.Popen[bytes], int, str]]:
    """`omni serve identity` on a fresh database; yields the process, its port and its database's name."""
    database = f"stop_{uuid.uuid4().hex[:12]}"
    postgres.create_database(database)
    port = free_port()
    env = os.environ | {
        "OMNI_IDENTITY_DATABASE_URL": postgres.url(database),
        "OMNI_IDENTITY_NATS_URL": nats_server.url,
        "OMNI_IDENTITY_GRPC_HOST": "127.0.0.1",
        "OMNI_IDENTITY_GRPC_PORT": str(port),
        "OMNI_IDENTITY_MIGRATE_ON_START": "true",
        "OMNI_IDENTITY_EVENT_NAMESPACE": "stop" + uuid.uuid4().hex[:8],
        "OMNI_IDENTITY_SHUTDOWN_GRACE_S": "20",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "omni_kit.cli", "serve", "identity"],
        env=env,
    )
    try:
        yield process, port, database
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        postgres.drop_database(database)


def _request(email: str) -> identity_pb2.ResolvePersonRequest:
    return identity_pb2.ResolvePersonRequest(identifiers=[common_pb2.Identifier(type="email", value=email)])


async def test_sigterm_lets_the_call_in_flight_finish_and_refuses_new_ones_without_cancelling(
    identity_process: tuple[subprocess.Popen[bytes], int, str], postgres: EmbeddedPostgres
) -> None:
    process, port, database = identity_process
    # Short reconnect backoff: the service is still starting when the first health check goes out.
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}",
        options=[("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 200)],
    )
    stub = identity_pb2_grpc.IdentityServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    async with asyncio.timeout(60):
        while True:
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)

    # The slow call: its identifier's advisory lock is held here, so the resolve waits inside the service (a
    # batch, which is not grouped with the single resolves of the load).
    slow_email = f"slow-{uuid.uuid4().hex[:8]}@example.com"
    holder = await asyncpg.connect(postgres.dsn(database))
    await holder.execute(
        "SELECT pg_advisory_lock($1)", identifier_lock_key(IdentifierKey("email", slow_email))
    )
    slow = asyncio.ensure_future(
        stub.BatchResolvePersons(
            identity_pb2.BatchResolvePersonsRequest(requests=[_request(slow_email)]), timeout=30
        )
    )

    # A steady load of callers that call again as soon as they have an answer.
    acknowledged: list[str] = []
    answers: collections.Counter[str] = collections.Counter()
    running = True

    async def caller() -> None:
        while running:
            email = f"load-{uuid.uuid4().hex[:10]}@example.com"
            try:
                await stub.ResolvePerson(_request(email), timeout=30)
            except grpc.aio.AioRpcError as error:
                details = status_details(error)
                reason = details.error_info.reason if details.error_info is not None else ""
                answers[f"{details.code.name} {reason}".strip()] += 1
            else:
                acknowledged.append(email)
                answers["OK"] += 1

    callers = [asyncio.create_task(caller()) for _ in range(30)]
    await asyncio.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    await asyncio.sleep(1.5)
    assert not slow.done(), "the call in flight ended before its lock was released"
    await holder.execute("SELECT pg_advisory_unlock_all()")
    [resolution] = (await slow).resolutions
    await asyncio.sleep(1.0)
    running = False
    await asyncio.gather(*callers)
    await channel.close()

    assert resolution.created
    assert answers["OK"] > 0 and answers["UNAVAILABLE STOPPING"] > 0, answers
    assert set(answers) <= {"OK", "UNAVAILABLE STOPPING", "UNAVAILABLE"}, answers
    stored = {
        row["value"]
        for row in await holder.fetch(
            "SELECT value FROM identifiers WHERE value = ANY($1::text[])", [*acknowledged, slow_email]
        )
    }
    await holder.close()
    assert stored == {*acknowledged, slow_email}
    assert await asyncio.to_thread(process.wait, 30) == 0


def test_sigterm_stops_a_service_still_waiting_for_its_database(nats_server: EmbeddedNats) -> None:
    port = free_port()
    env = os.environ | {
        "OMNI_IDENTITY_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nowhere",
        "OMNI_IDENTITY_NATS_URL": nats_server.url,
        "OMNI_IDENTITY_GRPC_HOST": "127.0.0.1",
        "OMNI_IDENTITY_GRPC_PORT": str(port),
    }
    process = subprocess.Popen([sys.executable, "-m", "omni_kit.cli", "serve", "identity"], env=env)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            status = stub.Check(health_pb2.HealthCheckRequest(), timeout=30, wait_for_ready=True).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
