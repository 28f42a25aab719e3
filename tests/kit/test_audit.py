"""The audit log on a real PostgreSQL and gRPC server: audited calls are recorded with who, what, the ids
and the outcome (refusals too), listed newest first by ListAuditEvents with paging and a resource filter; the
table refuses updates and deletes. (tests/e2e/test_secure_story.py checks it in the running services.)"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import AsyncSession

from omni.audit.v1 import audit_pb2, audit_pb2_grpc
from omni.identity.v1 import identity_pb2
from omni.segmentation.v1 import segmentation_pb2
from omni_kit.audit import (
    SERVICE_NAME,
    AuditInterceptor,
    AuditLog,
    AuditServicer,
    create_audit_table,
    resource_ids,
)
from omni_kit.bus import create_bus_tables
from omni_kit.db import create_engine, session_factory
from omni_kit.errors import NotFound, status_details
from omni_kit.grpc_server import GrpcServer

FORGET = "/omni.identity.v1.IdentityService/ForgetPerson"


def test_resource_ids_are_the_id_fields_one_message_deep() -> None:
    segment_id = str(uuid.uuid4())
    request = segmentation_pb2.CreateSegmentRequest(
        request_id="r-1", segment=segmentation_pb2.Segment(id=segment_id, name="Ada's friends")
    )
    assert resource_ids(request) == [segment_id]
    person = str(uuid.uuid4())
    assert resource_ids(identity_pb2.ForgetPersonRequest(request_id="r-2", person_id=person), None) == [
        person
    ]


@pytest.fixture
async def served(make_database: Callable[..., str]) -> AsyncIterator[tuple[grpc.aio.Channel, Any]]:
    engine = create_engine(make_database("audit"), application_name="omni-test-audit")

    def create(connection: Any) -> None:
        create_audit_table(Operations(MigrationContext.configure(connection)))

    async with engine.begin() as connection:
        await connection.run_sync(create)
    sessions = session_factory(engine)

    @contextlib.asynccontextmanager
    async def transaction() -> AsyncIterator[AsyncSession]:
        async with sessions() as session, session.begin():
            yield session

    audit_log = AuditLog(transaction)

    async def forget(
        request: identity_pb2.ForgetPersonRequest, context: Any
    ) -> identity_pb2.ForgetPersonResponse:
        if request.request_id == "missing":
            raise NotFound(message="no such person", reason="PERSON_NOT_FOUND")
        return identity_pb2.ForgetPersonResponse()

    def register(server: grpc.aio.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(
            forget,
            request_deserializer=identity_pb2.ForgetPersonRequest.FromString,
            response_serializer=identity_pb2.ForgetPersonResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "omni.identity.v1.IdentityService", {"ForgetPerson": handler}
                ),
            )
        )
        audit_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(audit_log, sessions), server)

    server = GrpcServer(
        domain="omni.test",
        service_names=["omni.identity.v1.IdentityService", SERVICE_NAME],
        register=register,
        host="127.0.0.1",
        port=0,
        interceptors=[AuditInterceptor([FORGET], audit_log)],
    )
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    yield channel, engine
    await channel.close()
    await server.stop(0)
    await engine.dispose()


async def test_audited_calls_are_listed_newest_first_with_paging_and_filter(
    served: tuple[grpc.aio.Channel, Any],
) -> None:
    channel, _ = served
    forget = channel.unary_unary(
        FORGET,
        request_serializer=identity_pb2.ForgetPersonRequest.SerializeToString,
        response_deserializer=identity_pb2.ForgetPersonResponse.FromString,
    )
    persons = [str(uuid.uuid4()) for _ in range(3)]
    for index, person in enumerate(persons):
        await forget(identity_pb2.ForgetPersonRequest(request_id=f"r-{index}", person_id=person), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await forget(identity_pb2.ForgetPersonRequest(request_id="missing", person_id=persons[0]), timeout=5)
    assert status_details(raised.value).code == grpc.StatusCode.NOT_FOUND

    stub = audit_pb2_grpc.AuditServiceStub(channel)  # type: ignore[arg-type]
    first = await stub.ListAuditEvents(audit_pb2.ListAuditEventsRequest(page_size=3), timeout=5)
    assert [e.request_id for e in first.events] == ["missing", "r-2", "r-1"]
    assert first.events[0].outcome == "NOT_FOUND" and first.events[1].outcome == "OK"
    assert {(e.actor, e.actor_kind, e.method) for e in first.events} == {
        ("anonymous", "none", FORGET.lstrip("/"))
    }
    rest = await stub.ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(page_size=3, page_token=first.next_page_token), timeout=5
    )
    assert [e.request_id for e in rest.events] == ["r-0"] and not rest.next_page_token
    of_first = await stub.ListAuditEvents(audit_pb2.ListAuditEventsRequest(resource_id=persons[0]), timeout=5)
    assert [e.request_id for e in of_first.events] == ["missing", "r-0"]
    assert list(of_first.events[1].resource_ids) == [persons[0]]

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.ListAuditEvents(audit_pb2.ListAuditEventsRequest(page_token="nonsense"), timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "statement",
    ["UPDATE audit_events SET actor = 'someone else'", "DELETE FROM audit_events", "TRUNCATE audit_events"],
)
async def test_the_log_is_append_only(served: tuple[grpc.aio.Channel, Any], statement: str) -> None:
    channel, engine = served
    forget = channel.unary_unary(
        FORGET,
        request_serializer=identity_pb2.ForgetPersonRequest.SerializeToString,
        response_deserializer=identity_pb2.ForgetPersonResponse.FromString,
    )
    await forget(identity_pb2.ForgetPersonRequest(request_id="r", person_id=str(uuid.uuid4())), timeout=5)
    stub = audit_pb2_grpc.AuditServiceStub(channel)  # type: ignore[arg-type]
    assert len((await stub.ListAuditEvents(audit_pb2.ListAuditEventsRequest(), timeout=5)).events) == 1
    with pytest.raises(sa.exc.DBAPIError, match="append-only"):
        async with engine.begin() as connection:
            await connection.execute(sa.text(statement))
    async with engine.connect() as connection:
        assert (await connection.execute(sa.text("SELECT count(*) FROM audit_events"))).scalar() == 1


# The entry and the change it records commit together: a service's runtime, a real gRPC server, an audited
# RPC (identity's ForgetPerson, by the scope table) whose handler reads in one transaction, writes in a second
# and answers or fails after that.


@pytest.fixture
async def runtime_served(
    make_database: Callable[..., str], nats_server: Any
) -> AsyncIterator[tuple[Any, Any, Any]]:
    from omni_kit.runtime import Runtime
    from omni_kit.settings import ServiceSettings

    url = make_database("audit_tx")
    engine = create_engine(url, application_name="omni-test-audit")

    def create(connection: Any) -> None:
        operations = Operations(MigrationContext.configure(connection))
        create_audit_table(operations)
        create_bus_tables(operations)

    async with engine.begin() as connection:
        await connection.run_sync(create)
        await connection.execute(sa.text("CREATE TABLE forgotten (person_id text PRIMARY KEY)"))
    runtime = Runtime(
        "audittx",
        ServiceSettings(
            database_url=url,
            nats_url=nats_server.url,
            grpc_host="127.0.0.1",
            event_namespace="audit" + uuid.uuid4().hex[:8],
        ),
    )

    async def forget(request: identity_pb2.ForgetPersonRequest, context: Any) -> Any:
        async with runtime.transaction() as session:  # reads only: no entry here
            await session.execute(sa.text("SELECT count(*) FROM forgotten"))
        async with runtime.transaction() as session:
            await session.execute(
                sa.text("INSERT INTO forgotten VALUES (:p) ON CONFLICT DO NOTHING"), {"p": request.person_id}
            )
            if request.request_id == "rolled-back":
                raise NotFound(message="gone meanwhile", reason="PERSON_NOT_FOUND")
        if request.request_id == "crash-after-commit":
            raise RuntimeError("the process died after the change committed")
        return identity_pb2.ForgetPersonResponse()

    def register(server: grpc.aio.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(
            forget,
            request_deserializer=identity_pb2.ForgetPersonRequest.FromString,
            response_serializer=identity_pb2.ForgetPersonResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "omni.identity.v1.IdentityService", {"ForgetPerson": handler}
                ),
            )
        )

    await runtime.open()
    await runtime.serve(service_names=["omni.identity.v1.IdentityService"], register=register)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}")
    call = channel.unary_unary(
        FORGET,
        request_serializer=identity_pb2.ForgetPersonRequest.SerializeToString,
        response_deserializer=identity_pb2.ForgetPersonResponse.FromString,
    )
    yield call, engine, runtime
    await channel.close()
    await runtime.close()
    await engine.dispose()


async def _entries(engine: Any) -> dict[str, Any]:
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                sa.text("SELECT request_id, outcome, resource_ids, xmin::text AS tx FROM audit_events")
            )
        ).all()
    return {row.request_id: row for row in rows}


async def _change_tx(engine: Any, person: str) -> str | None:
    async with engine.connect() as connection:
        found = await connection.execute(
            sa.text("SELECT xmin::text FROM forgotten WHERE person_id = :p"), {"p": person}
        )
        return found.scalar()


async def test_the_entry_commits_in_the_transaction_of_the_change(runtime_served: Any) -> None:
    call, engine, _ = runtime_served
    person = str(uuid.uuid4())
    await call(identity_pb2.ForgetPersonRequest(request_id="r-1", person_id=person), timeout=5)

    entry = (await _entries(engine))["r-1"]
    assert entry.outcome == "OK" and list(entry.resource_ids) == [person]
    assert entry.tx == await _change_tx(engine, person), "written by the transaction that made the change"


async def test_a_crash_after_the_change_keeps_the_entry_and_a_rollback_keeps_only_the_refusal(
    runtime_served: Any,
) -> None:
    call, engine, _ = runtime_served
    committed, rolled_back = str(uuid.uuid4()), str(uuid.uuid4())
    with pytest.raises(grpc.aio.AioRpcError):
        await call(
            identity_pb2.ForgetPersonRequest(request_id="crash-after-commit", person_id=committed), timeout=5
        )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(
            identity_pb2.ForgetPersonRequest(request_id="rolled-back", person_id=rolled_back), timeout=5
        )
    assert status_details(refused.value).code == grpc.StatusCode.NOT_FOUND

    entries = await _entries(engine)
    # The change took effect: its entry says so, whatever happened to the answer.
    assert entries["crash-after-commit"].outcome == "OK"
    assert entries["crash-after-commit"].tx == await _change_tx(engine, committed)
    # Nothing took effect: the refusal is recorded on its own.
    assert entries["rolled-back"].outcome == "NOT_FOUND"
    assert await _change_tx(engine, rolled_back) is None


async def test_a_retry_that_changes_nothing_is_recorded_before_it_is_answered(runtime_served: Any) -> None:
    call, engine, _ = runtime_served
    person = str(uuid.uuid4())
    for request_id in ("first", "retry"):
        await call(identity_pb2.ForgetPersonRequest(request_id=request_id, person_id=person), timeout=5)
    # Read straight from the table, not through ListAuditEvents: both are there once answered.
    entries = await _entries(engine)
    assert entries["first"].tx == await _change_tx(engine, person)
    assert entries["retry"].outcome == "OK" and entries["retry"].tx != entries["first"].tx
