"""The audit log: who did what to a service, when, to which ids, and how it ended; append-only, in the
service's own database, listed by omni.audit.v1.AuditService/ListAuditEvents (which every server serves).

Which RPCs are operator actions is said once, in the scope table's `audited` list (protos/omni/scopes.yaml).
The actor is the authenticated caller (omni_kit.security.current_principal; "anonymous" with authorisation
off), the ids are the request's id fields (`id`, `*_id`, `*_ids`, one message deep) and those of the answer:
ids, never personal data, so the entries survive an erasure unchanged. The table refuses UPDATE, DELETE and
TRUNCATE (a trigger), so not even the service can rewrite its history.

An audited call's entry is written in the same transaction as the change it records, so that the two commit
or vanish together: the interceptor marks the call (a context variable), and the first transaction of the call
that writes anything (the runtime's `transaction()` asks `stage()` before committing) inserts the entry, outcome
OK, with the request's ids and those the call noted so far (`note()`: omni_kit.idempotency notes every answer
it stores; a service whose audited call creates ids outside it notes them itself). A call that changed nothing
(refused, failed before writing, or a replayed retry) has its entry written once it is answered, in a
transaction of its own, before the answer leaves.
"""

from __future__ import annotations

import contextvars
import dataclasses
import datetime
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import sqlalchemy as sa
from google.protobuf.message import Message
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from omni.audit.v1 import audit_pb2, audit_pb2_grpc
from omni_kit.errors import InvalidArgument, OmniError, without_control_characters
from omni_kit.ids import new_id
from omni_kit.paging import PageTokenError, pack, unpack
from omni_kit.security.auth import current_principal
from omni_kit.validation import validate

log = logging.getLogger(__name__)

SERVICE_NAME = audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name

MAX_RESOURCE_IDS = 20
"""Ids kept per entry; a batch naming more keeps the first ones."""
_MAX_ID_LENGTH = 128

audit_metadata = sa.MetaData()


def _columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("actor_kind", sa.Text, nullable=False),
        sa.Column("method", sa.Text, nullable=False),
        sa.Column("request_id", sa.Text, nullable=True),
        sa.Column("resource_ids", postgresql.ARRAY(sa.Text), nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
    ]


audit_events = sa.Table("audit_events", audit_metadata, *_columns())

_APPEND_ONLY_FUNCTION = """
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit_events is append-only';
END $$
"""
_APPEND_ONLY_TRIGGER = """
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_events
  FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()
"""


def create_audit_table(op: Any) -> None:
    """Create audit_events, append-only, in a service's migration (op is alembic.op)."""
    op.create_table("audit_events", *_columns())
    op.create_index("audit_events_time", "audit_events", ["occurred_at", "id"])
    op.create_index("audit_events_resources", "audit_events", ["resource_ids"], postgresql_using="gin")
    op.execute(sa.text(_APPEND_ONLY_FUNCTION))
    op.execute(sa.text(_APPEND_ONLY_TRIGGER))


def drop_audit_table(op: Any) -> None:
    """Undo create_audit_table."""
    op.execute(sa.text("DROP TABLE audit_events"))
    op.execute(sa.text("DROP FUNCTION audit_events_append_only()"))


def resource_ids(*messages: Message | None) -> list[str]:
    """The id fields of messages and of the messages they hold directly (`id`, `*_id`, `*_ids`; not
    `request_id`), in order, without repeats, at most MAX_RESOURCE_IDS."""
    found: dict[str, None] = {}

    def take(value: Any) -> None:
        if isinstance(value, str) and value and len(found) < MAX_RESOURCE_IDS:
            # A refused request's ids may hold anything (a NUL, which PostgreSQL's text refuses): the entry
            # records them with control characters replaced, so refusing the call never fails its audit.
            found.setdefault(without_control_characters(value[:_MAX_ID_LENGTH]))

    def walk(message: Message, depth: int) -> None:
        for field, value in message.ListFields():
            name = field.name
            if name == "request_id":
                continue
            if name == "id" or name.endswith("_id"):
                take(value)
            elif name.endswith("_ids") and field.type == field.TYPE_STRING:
                for item in value:
                    take(item)
            elif (
                depth == 0
                and field.message_type is not None
                and not field.message_type.GetOptions().map_entry
            ):
                items: Iterable[Any] = value if field.is_repeated else (value,)
                for item in items:
                    walk(item, 1)

    for message in messages:
        if isinstance(message, Message):
            walk(message, 0)
    return list(found)


@dataclass(frozen=True)
class AuditEntry:
    """One row of the audit log."""

    method: str
    outcome: str
    request_id: str | None
    resource_ids: list[str]
    actor: str
    actor_kind: str


@dataclass
class _AuditedCall:
    """An audited call under way: what its entry will say, and whether a transaction of the call wrote it."""

    method: str
    request: Message | None
    noted: list[str] = dataclasses.field(default_factory=list)
    written: bool = False

    def entry(self, outcome: str, response: Message | None = None) -> AuditEntry:
        principal = current_principal()
        request_id = getattr(self.request, "request_id", None) if self.request is not None else None
        ids = resource_ids(self.request, response)
        ids.extend(i for i in self.noted if i not in ids)
        return AuditEntry(
            method=self.method,
            outcome=outcome,
            request_id=request_id or None,
            resource_ids=ids[:MAX_RESOURCE_IDS],
            actor="anonymous" if principal is None else principal.name,
            actor_kind="none" if principal is None else principal.kind,
        )


_current_call: contextvars.ContextVar[_AuditedCall | None] = contextvars.ContextVar(
    "omni_audited_call", default=None
)


def note(*items: Message | str | uuid.UUID | None) -> None:
    """Add ids to the entry of the audited call under way (nothing outside one): the id fields of messages
    (as `resource_ids` reads them), or ids themselves. Call it before the transaction that makes the change
    commits, so the entry written with the change names them."""
    call = _current_call.get()
    if call is None or call.written:
        return
    messages = [i for i in items if isinstance(i, Message)]
    found = resource_ids(*messages) + [str(i) for i in items if isinstance(i, (str, uuid.UUID)) and str(i)]
    for value in found:
        if value not in call.noted and len(call.noted) < MAX_RESOURCE_IDS:
            call.noted.append(value[:_MAX_ID_LENGTH])


class Staged:
    """The entry a transaction carries; `committed()` once the transaction has committed."""

    def __init__(self, call: _AuditedCall) -> None:
        self._call = call

    def committed(self) -> None:
        self._call.written = True


def _values(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": new_id(),
        "occurred_at": datetime.datetime.now(datetime.UTC),
        "actor": entry.actor,
        "actor_kind": entry.actor_kind,
        "method": entry.method,
        "request_id": entry.request_id,
        "resource_ids": entry.resource_ids,
        "outcome": entry.outcome,
    }


# The entry goes in only if the transaction has written something: PostgreSQL assigns a transaction id at the
# first write, and the condition is evaluated before the entry's own row is inserted. One round trip.
_IF_WRITTEN = sa.text("pg_current_xact_id_if_assigned() IS NOT NULL")


class AuditLog:
    """Writes and lists a service's audit log through its sessions (a transaction factory)."""

    def __init__(self, transaction: Callable[[], Any]) -> None:
        self._transaction = transaction

    async def stage(self, session: AsyncSession) -> Staged | None:
        """Before a transaction commits: when it is part of an audited call whose entry is not written yet and
        it has written something, insert the entry (outcome OK) in it. Returns what to confirm once the
        transaction has committed, or None."""
        call = _current_call.get()
        if call is None or call.written:
            return None
        values = _values(call.entry("OK"))
        columns = list(values)
        selected = sa.select(*(sa.literal(values[c], audit_events.c[c].type) for c in columns)).where(
            _IF_WRITTEN
        )
        result = await session.execute(
            audit_events.insert().from_select(columns, selected).returning(audit_events.c.id)
        )
        return Staged(call) if result.first() is not None else None

    async def record(self, entry: AuditEntry) -> None:
        """Append entry (its own transaction); a failure is logged, never raised into the call."""
        try:
            async with self._transaction() as session:
                await session.execute(audit_events.insert().values(**_values(entry)))
        except Exception:
            log.exception("could not write the audit entry of %s by %s", entry.method, entry.actor)

    async def list(
        self,
        session: AsyncSession,
        *,
        page_size: int,
        after: tuple[datetime.datetime, uuid.UUID] | None,
        resource_id: str | None,
    ) -> tuple[list[sa.Row[Any]], bool]:
        """A page of entries, newest first, after a position; and whether more follow."""
        query = sa.select(audit_events).order_by(audit_events.c.occurred_at.desc(), audit_events.c.id.desc())
        if after is not None:
            query = query.where(sa.tuple_(audit_events.c.occurred_at, audit_events.c.id) < sa.tuple_(*after))
        if resource_id:
            query = query.where(audit_events.c.resource_ids.contains([resource_id]))
        rows = list((await session.execute(query.limit(page_size + 1))).all())
        return rows[:page_size], len(rows) > page_size


class AuditInterceptor(grpc.aio.ServerInterceptor):
    """Records the calls of the audited RPCs once they are answered (see the module's docstring). Sits
    between the error interceptor and the auth interceptor, so refusals are recorded too."""

    def __init__(self, audited: Iterable[str], log_: AuditLog) -> None:
        self._audited = frozenset(audited)
        self._log = log_

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None or method not in self._audited or not handler.unary_unary:
            return handler
        inner = handler.unary_unary
        audit_log = self._log
        name = method.lstrip("/")

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = _AuditedCall(name, request if isinstance(request, Message) else None)
            token = _current_call.set(call)
            response = None
            outcome = "OK"
            try:
                response = await inner(request, context)
                return response
            except OmniError as error:
                outcome = error.code.name
                raise
            except grpc.aio.AbortError:
                code = context.code()
                outcome = code.name if isinstance(code, grpc.StatusCode) else "ABORTED"
                raise
            except BaseException as error:
                outcome = "CANCELLED" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "INTERNAL"
                raise
            finally:
                _current_call.reset(token)
                if not call.written:
                    # Nothing was changed (or nothing committed): the entry of the call alone, before answering.
                    await audit_log.record(
                        call.entry(outcome, response if isinstance(response, Message) else None)
                    )

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )


_PAGE_KIND = "audit_events"
_DEFAULT_PAGE = 50
_MAX_PAGE = 500


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    """ListAuditEvents over a service's audit log."""

    def __init__(self, audit_log: AuditLog, sessions: Callable[[], Any]) -> None:
        self._log = audit_log
        self._sessions = sessions

    async def ListAuditEvents(
        self, request: audit_pb2.ListAuditEventsRequest, context: grpc.aio.ServicerContext
    ) -> audit_pb2.ListAuditEventsResponse:
        validate(request)
        after = None
        if request.page_token:
            try:
                position = unpack(request.page_token, _PAGE_KIND)
                after = (datetime.datetime.fromisoformat(position["t"]), uuid.UUID(position["i"]))
            except (PageTokenError, KeyError, ValueError, TypeError):
                raise InvalidArgument(
                    message="page_token is not a token of this list", reason="INVALID_PAGE_TOKEN"
                ) from None
        size = min(request.page_size or _DEFAULT_PAGE, _MAX_PAGE)
        async with self._sessions() as session:
            rows, more = await self._log.list(
                session, page_size=size, after=after, resource_id=request.resource_id or None
            )
        response = audit_pb2.ListAuditEventsResponse()
        for row in rows:
            event = response.events.add(
                id=str(row.id),
                actor=row.actor,
                actor_kind=row.actor_kind,
                method=row.method,
                request_id=row.request_id or "",
                resource_ids=row.resource_ids,
                outcome=row.outcome,
            )
            event.occurred_at.FromDatetime(row.occurred_at)
        if more and rows:
            last = rows[-1]
            response.next_page_token = pack(
                _PAGE_KIND, {"t": last.occurred_at.isoformat(), "i": str(last.id)}
            )
        return response
