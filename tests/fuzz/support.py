"""The fuzz harness: which RPCs a service has, how a request is sent as bytes, and what must hold after it.

Every RPC is found from the service descriptors, so an RPC added to a proto is fuzzed without editing any
test. Requests travel as bytes over a generic channel call (no generated stub), so garbage that no stub
would send reaches the server too. After each request:

- the answer is never INTERNAL, UNKNOWN, DATA_LOSS or UNIMPLEMENTED, nor a hang (DEADLINE_EXCEEDED);
- a refusal carries an ErrorInfo (and for INVALID_ARGUMENT a BadRequest naming the fields);
- an OK answer decodes as the RPC's response type;
- a refused request, and any Get/List/Lookup, wrote nothing: no row of the service's tables was inserted,
  updated or deleted (compared by count and by the rows' xmin, the transaction that last wrote them) and no
  event was staged in its outbox;
- after an accepted request, the events it staged are published (one the event log cannot take does not
  hold up the outbox);
- the service still answers SERVING on grpc.health.v1.

The number of examples per RPC is small by default (``make test``, about a second per RPC, derandomised so CI
sees the same kinds of input each run); ``OMNI_FUZZ_EXAMPLES=N`` runs N examples of each kind per RPC with fresh random inputs and
shrinks what fails (``make test-fuzz``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, assume, note, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from omni_kit.db import create_engine
from omni_kit.errors import status_details

from .strategies import Builder, Pool, garbage, message_class, submessage

Kind = Literal["generated", "mutated", "garbage"]
KINDS: tuple[Kind, ...] = ("generated", "mutated", "garbage")

EXAMPLES = int(os.environ.get("OMNI_FUZZ_EXAMPLES") or 0)
"""Examples per RPC and kind for the long run; 0 for the CI-sized run."""

MAX_REQUEST_BYTES = 8 * 1024 * 1024
"""Larger generated requests are discarded."""

CALL_TIMEOUT_S = 30.0
"""Longer than any request should take: a call still running then is a hang."""

BROKEN = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
# Refusals the services answer themselves (so with details); others (RESOURCE_EXHAUSTED for a message over
# the server's limit, UNAVAILABLE) may come from gRPC itself.
OWN_REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE,
}
READ_PREFIXES = ("Get", "List", "Lookup")


def fuzz_settings(examples: int) -> settings:
    """Hypothesis settings for one kind of fuzzing: `examples` per RPC unless OMNI_FUZZ_EXAMPLES says more."""
    if EXAMPLES:
        return settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            print_blob=True,
        )
    # The CI run is derandomised (the same choices each run; only the ids the seeds were given differ) and does
    # not shrink: a failure is reported as found, and OMNI_FUZZ_EXAMPLES reruns it with shrinking.
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


@dataclass(frozen=True)
class Known:
    """A defect the fuzzing finds in one RPC that is being fixed elsewhere: the RPC's test is expected to fail
    (not strictly, so it passes again once the fix lands) for these kinds of input."""

    reason: str
    kinds: tuple[Kind, ...] = KINDS


def rpcs(services: Sequence[ServiceDescriptor], kind: Kind, known: Mapping[str, Known]) -> list[Any]:
    """Every RPC of the services as a pytest parameter, marked xfail when a known defect affects this kind."""
    params = []
    for service in services:
        for method in service.methods:
            marks = []
            defect = known.get(method.name)
            if defect is not None and kind in defect.kinds:
                marks.append(pytest.mark.xfail(strict=False, reason=defect.reason))
            params.append(pytest.param(method, id=f"{service.name}.{method.name}", marks=marks))
    return params


@dataclass
class Snapshot:
    """What the service's tables held before a request: the transaction id then, row counts, the outbox."""

    xid: int
    counts: dict[str, int]
    outbox_mark: Any


@dataclass
class Target:
    """One running service under fuzz: its channel, its database, its seed requests."""

    name: str
    services: list[ServiceDescriptor]
    channel: grpc.aio.Channel
    engine: AsyncEngine
    tables: list[str]
    seeds: dict[str, list[Any]]
    refused_when: Mapping[str, Callable[[Any], bool]] = field(default_factory=dict)
    busy_sql: str | None = None
    stuck: str | None = None
    builder: Builder = field(init=False)
    _strategies: dict[tuple[str, Kind], st.SearchStrategy[Any]] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Target({self.name})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    def __post_init__(self) -> None:
        messages: list[Message] = []
        for requests in self.seeds.values():
            for request in requests:
                messages.extend(request if isinstance(request, list) else [request])
        self.builder = Builder(Pool.harvest(messages))

    def seeds_of(self, method: MethodDescriptor) -> list[Any]:
        """The seed requests of an RPC; an RPC without seeds (a new one) starts from the empty request."""
        empty = message_class(method.input_type)()
        return self.seeds.get(method.name) or [[empty] if method.client_streaming else empty]

    def strategy(self, method: MethodDescriptor, kind: Kind) -> st.SearchStrategy[Payloads]:
        """Requests of one kind for an RPC, as the bytes of each message sent."""
        key = (method.full_name, kind)
        if key not in self._strategies:
            self._strategies[key] = _strategy(self, method, kind)
        return self._strategies[key]

    async def settle(self) -> None:
        """Wait (up to 20 s) until the background work earlier requests started (backfills, due jobs) is done."""
        if not self.busy_sql:
            return
        async with asyncio.timeout(20):
            while True:
                async with self.engine.connect() as connection:
                    if not await connection.scalar(sa.text(self.busy_sql)):
                        return
                await asyncio.sleep(0.05)

    async def snapshot(self) -> Snapshot:
        await self.settle()
        counts = ", ".join(f'(SELECT count(*) FROM "{t}") AS "{t}"' for t in self.tables)
        async with self.engine.connect() as connection:
            xid = int(await connection.scalar(sa.text("SELECT pg_current_xact_id()::text::bigint")) or 0)
            row = (
                await connection.execute(
                    sa.text(f"SELECT {counts}, (SELECT id FROM outbox ORDER BY id DESC LIMIT 1)")
                )
            ).one()
            await connection.commit()
        return Snapshot(xid, dict(zip(self.tables, row[:-1], strict=True)), row[-1])

    async def writes_since(self, before: Snapshot) -> dict[str, str]:
        """What changed in the tables since the snapshot: rows added or removed, rows written, new events."""
        parts = []
        for t in self.tables:
            parts.append(f'(SELECT count(*) FROM "{t}")')
            parts.append(f'(SELECT count(*) FROM "{t}" WHERE xmin::text::bigint > :xid)')
        parts.append(
            "(SELECT count(*) FROM outbox WHERE CAST(:mark AS uuid) IS NULL OR id > CAST(:mark AS uuid))"
        )
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(
                    sa.text("SELECT " + ", ".join(parts)),
                    {
                        "xid": before.xid,
                        "mark": None if before.outbox_mark is None else str(before.outbox_mark),
                    },
                )
            ).one()
        changes: dict[str, str] = {}
        for index, t in enumerate(self.tables):
            count, written = row[2 * index], row[2 * index + 1]
            if count != before.counts[t] or written:
                changes[t] = f"{count - before.counts[t]:+d} rows, {written} written"
        if row[-1]:
            changes["outbox"] = f"{row[-1]} events staged"
        return changes

    async def published(self, within_s: float = 15.0) -> None:
        """Assert the outbox relay publishes every event staged so far within `within_s` (nothing stuck).

        Once it is stuck, the request that stuck it has failed; later ones do not fail for it again."""
        waited = 0.0
        while self.stuck is None:
            async with self.engine.connect() as connection:
                pending = await connection.scalar(
                    sa.text("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                )
            if not pending:
                return
            if waited >= within_s:
                self.stuck = f"{pending} events staged are still not published after {within_s:.0f} s"
                raise AssertionError(self.stuck)
            await asyncio.sleep(0.05)
            waited += 0.05

    async def serving(self) -> None:
        """Assert the server and each of its services answer SERVING."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        for name in ["", *(s.full_name for s in self.services)]:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, f"{name or 'server'}: {reply}"


# Tables of omni-kit's machinery, written by background work (consumers, the relay, the scheduler) rather than
# by the request being checked: not compared row by row (the outbox is checked for new events instead).
# audit_events records refused calls too (who was refused is part of the audit trail), so it is machinery here.
MACHINERY_TABLES = {
    "alembic_version",
    "audit_events",
    "inbox",
    "outbox",
    "outbox_dead_letters",
    "scheduled_jobs",
}
# While a row matches, background work an earlier request started may still write the service's tables.
MACHINERY_BUSY = {"scheduled_jobs": "failed_at IS NULL AND (claim IS NOT NULL OR due_at <= now())"}


@contextlib.asynccontextmanager
async def fuzz_target(
    name: str,
    runtime: Any,
    channel: grpc.aio.Channel,
    services: Sequence[ServiceDescriptor],
    seeds: dict[str, list[Any]],
    *,
    refused_when: Mapping[str, Callable[[Any], bool]] | None = None,
    busy_when: Mapping[str, str] | None = None,
) -> AsyncIterator[Target]:
    """A Target for a running service. `refused_when` names OK answers that refuse everything asked (so
    nothing may be written). `busy_when` gives, by table, the rows that mean background work an earlier
    request started (a backfill) may still write; each check waits until there are none (tables the
    service's database does not have are ignored)."""
    engine = create_engine(runtime.settings.database_url, application_name=f"omni-fuzz-{name}", pool_size=2)
    try:
        async with engine.connect() as connection:
            tables = sorted(
                (
                    await connection.execute(
                        sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                    )
                ).scalars()
            )
        busy = [
            f'(SELECT count(*) FROM "{table}" WHERE {condition})'
            for table, condition in {**MACHINERY_BUSY, **(busy_when or {})}.items()
            if table in tables
        ]
        yield Target(
            name=name,
            services=list(services),
            channel=channel,
            engine=engine,
            tables=[t for t in tables if t not in MACHINERY_TABLES],
            seeds=seeds,
            refused_when=refused_when or {},
            busy_sql=f"SELECT {' + '.join(busy)}" if busy else None,
        )
    finally:
        await engine.dispose()


# --- requests ------------------------------------------------------------------------------------------


@dataclass
class Payloads:
    """The messages of one call, as bytes, with a short description for failure reports."""

    messages: list[bytes]
    shown: str

    def __repr__(self) -> str:
        return self.shown

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.shown)


def _strategy(target: Target, method: MethodDescriptor, kind: Kind) -> st.SearchStrategy[Payloads]:
    descriptor = method.input_type
    builder = target.builder
    seeds = target.seeds_of(method)

    @st.composite
    def draw_payloads(draw: Any) -> Payloads:
        if kind == "garbage":
            seed = _first(draw(st.sampled_from(seeds)))
            if draw(st.booleans()):
                seed = builder.with_fresh_keys(seed)
            bad = garbage(draw, descriptor, [seed.SerializeToString()])
            messages = [bad]
            if method.client_streaming and draw(st.booleans()):
                messages = [m.SerializeToString() for m in draw(st.sampled_from(seeds))] + messages
            return Payloads(messages, _show_bytes(messages, descriptor))
        if kind == "generated":
            count = draw(st.integers(1, 3)) if method.client_streaming else draw(st.just(1))
            requests = [builder.request(draw, descriptor) for _ in range(count)]
        else:
            seed = draw(st.sampled_from(seeds))
            requests = list(seed) if method.client_streaming else [seed]
            at = draw(st.integers(0, len(requests) - 1))
            requests[at] = builder.mutate(draw, requests[at])
        messages = [r.SerializeToString() for r in requests]
        # Past the server's 16 MiB limit a request tests gRPC, not the service; most of this range only the
        # time to build and send it.
        assume(sum(map(len, messages)) <= MAX_REQUEST_BYTES)
        return Payloads(messages, _show(requests))

    return draw_payloads()


def _first(seed: Any) -> Message:
    return seed[0] if isinstance(seed, list) else seed


def _abridged(message: Message) -> Message:
    """A copy with long strings and long repeated fields cut, fit to print."""
    copy = type(message)()
    copy.CopyFrom(message)
    _abridge(copy)
    return copy


def _abridge(message: Message) -> None:
    for described, value in message.ListFields():
        if described.type == FieldDescriptor.TYPE_MESSAGE:
            if submessage(described).GetOptions().map_entry:
                if submessage(described).fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE:
                    for key in value:
                        _abridge(value[key])
                continue
            items = list(value) if described.is_repeated else [value]
            if described.is_repeated and len(items) > 4:
                del value[4:]
                items = items[:4]
            for item in items:
                _abridge(item)
        elif described.type == FieldDescriptor.TYPE_STRING and not described.is_repeated and len(value) > 80:
            setattr(message, described.name, f"{value[:40]}…({len(value)} characters)")
        elif described.is_repeated and len(value) > 4:
            del value[4:]


def _show(requests: Sequence[Message]) -> str:
    shown = []
    for request in requests:
        try:
            shown.append(text_format.MessageToString(_abridged(request), as_one_line=True, as_utf8=True))
        except DecodeError:  # text_format copies map entries, which fails past the decoder's depth limit
            shown.append(f"<{request.DESCRIPTOR.name} of {request.ByteSize()} bytes, too deep to print>")
    text = " | ".join(shown)
    return text if len(text) < 3000 else text[:3000] + "…"


def _show_bytes(messages: Sequence[bytes], descriptor: Any) -> str:
    shown = []
    for data in messages:
        head = repr(data[:120]) + (f"…({len(data)} bytes)" if len(data) > 120 else "")
        try:
            decoded = message_class(descriptor).FromString(data)
            shown.append(f"{head} = {_show([decoded])}")
        except DecodeError:
            shown.append(f"{head} (not decodable)")
    return " | ".join(shown)


# --- calling and checking ------------------------------------------------------------------------------


@dataclass
class Outcome:
    """How a call ended."""

    code: grpc.StatusCode
    details: str
    responses: list[bytes]
    error: grpc.aio.AioRpcError | None = None


async def call(target: Target, method: MethodDescriptor, messages: list[bytes]) -> Outcome:
    """Send the messages to the RPC as raw bytes (no serializer) and collect the raw answer."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    channel = target.channel
    try:
        if method.client_streaming and method.server_streaming:
            answers = [a async for a in channel.stream_stream(path)(iter(messages), timeout=CALL_TIMEOUT_S)]
        elif method.client_streaming:
            answers = [await channel.stream_unary(path)(iter(messages), timeout=CALL_TIMEOUT_S)]
        elif method.server_streaming:
            answers = [a async for a in channel.unary_stream(path)(messages[0], timeout=CALL_TIMEOUT_S)]
        else:
            answers = [await channel.unary_unary(path)(messages[0], timeout=CALL_TIMEOUT_S)]
    except grpc.aio.AioRpcError as error:
        return Outcome(error.code(), error.details() or "", [], error)
    return Outcome(grpc.StatusCode.OK, "", answers)


def _writes_forbidden(
    target: Target, method: MethodDescriptor, messages: list[bytes], outcome: Outcome
) -> bool:
    if method.name.startswith(READ_PREFIXES):
        return True
    if outcome.code == grpc.StatusCode.OK:
        refused = target.refused_when.get(method.name)
        return refused is not None and any(
            refused(message_class(method.output_type).FromString(a)) for a in outcome.responses
        )
    if method.client_streaming:
        # A stream keeps what it recorded before the message that failed it; only a stream failing on its
        # first message has written nothing.
        try:
            message_class(method.input_type).FromString(messages[0])
        except DecodeError:
            return True
        return len(messages) == 1 and outcome.code in OWN_REFUSALS
    return True


async def exercise(target: Target, method: MethodDescriptor, payloads: Payloads) -> None:
    """Send one request and assert everything that must hold after it."""
    note(f"{method.name}: {payloads.shown}")
    before = await target.snapshot()
    outcome = await call(target, method, payloads.messages)

    note(f"answered {outcome.code.name}: {outcome.details[:500]}")
    assert outcome.code not in BROKEN, f"{method.name} answered {outcome.code.name}: {outcome.details}"
    if outcome.code == grpc.StatusCode.OK:
        for answer in outcome.responses:
            message_class(method.output_type).FromString(answer)
        await target.published()
    elif outcome.code in OWN_REFUSALS and outcome.error is not None:
        details = status_details(outcome.error)
        assert details.error_info is not None and details.error_info.reason, (
            f"{method.name} answered {outcome.code.name} without an ErrorInfo: {outcome.details}"
        )
        if outcome.code == grpc.StatusCode.INVALID_ARGUMENT:
            assert details.field_violations, (
                f"{method.name}: INVALID_ARGUMENT names no field: {outcome.details}"
            )
    if _writes_forbidden(target, method, payloads.messages, outcome):
        written = await target.writes_since(before)
        assert not written, f"{method.name} answered {outcome.code.name} but wrote {written}"
    await target.serving()


async def fuzz(target: Target, method: MethodDescriptor, kind: Kind, data: st.DataObject) -> None:
    """One example: draw a request of the kind for the RPC and exercise it."""
    await exercise(target, method, data.draw(target.strategy(method, kind), label="request"))
