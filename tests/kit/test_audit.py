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
