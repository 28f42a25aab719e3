"""Helpers of the segmentation tests: the running service, feeding profile events, what it published."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message
from nats.js import JetStreamContext

from omni.common.v1 import common_pb2
from omni.events.v1 import envelope_pb2
from omni.identity.v1 import events_pb2 as identity_events
from omni.profile.v1 import events_pb2 as profile_events
from omni.profile.v1 import profile_pb2
from omni.segmentation.v1 import segmentation_pb2 as pb
from omni.segmentation.v1 import segmentation_pb2_grpc
from omni_kit.bus import make_envelope, subject_for
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres
from omni_kit.ids import new_id_str
from omni_kit.runtime import Runtime
from omni_segmentation.main import Settings

T = TypeVar("T")


@dataclass
class Segmentation:
    """A running segmentation service, a client of it, and a JetStream context on its namespace."""

    runtime: Runtime
    stub: segmentation_pb2_grpc.SegmentationServiceStub
    namespace: str
    js: JetStreamContext

    async def rows(self, sql: str, **params: Any) -> list[Any]:
        """Run a query on the service's database and return the rows."""
        async with self.runtime.engine.connect() as connection:
            return list((await connection.execute(sa.text(sql), params)).all())

    async def scalar(self, sql: str, **params: Any) -> Any:
        """Run a query returning one value."""
        async with self.runtime.engine.connect() as connection:
            return await connection.scalar(sa.text(sql), params)

    async def execute(self, sql: str, **params: Any) -> None:
        """Run a statement on the service's database and commit it."""
        async with self.runtime.engine.begin() as connection:
            await connection.execute(sa.text(sql), params)

    async def consumed(self, *envelopes: envelope_pb2.Envelope, timeout_s: float = 5.0) -> None:
        """Wait until the service has applied these envelopes (their ids are in its inbox)."""
        ids = [uuid.UUID(e.id) for e in envelopes]
        await eventually(
            lambda: self.scalar(
                "SELECT count(*) = :n FROM inbox WHERE event_id = ANY(:ids)", n=len(ids), ids=ids
            ),
            timeout_s,
        )

    async def publish(
        self,
        payload: Message,
        *,
        event_type: str,
        producer: str,
        person_id: str = "",
        trace_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> envelope_pb2.Envelope:
        """Publish a real envelope on the namespace, as the producer's relay would (trace context in headers)."""
        envelope = make_envelope(
            payload, event_type=event_type, producer=producer, person_id=person_id, occurred_at=occurred_at
        )
        if trace_id is not None:
            envelope.trace_context["traceparent"] = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
        headers = {**envelope.trace_context, "Nats-Msg-Id": envelope.id}
        await self.js.publish(
            subject_for(event_type, self.namespace), envelope.SerializeToString(), headers=headers
        )
        return envelope

    async def track(
        self,
        person_id: str,
        event_type: str,
        *,
        occurred_at: datetime | None = None,
        trace_id: str | None = None,
        channel: int = common_pb2.CHANNEL_APP,
        properties: dict[str, Any] | None = None,
    ) -> envelope_pb2.Envelope:
        """Publish profile.event_tracked for one event of the person (on the app unless told)."""
        event = profile_pb2.Event(
            id=new_id_str(),
            type=event_type,
            channel=channel,  # type: ignore[arg-type]
            person_id=person_id,
        )
        if properties:
            json_format.ParseDict(properties, event.properties)
        event.occurred_at.FromDatetime(occurred_at or datetime.now(UTC))
        return await self.publish(
            profile_events.EventTrackedEvent(event=event),
            event_type="profile.event_tracked",
            producer="profile",
            person_id=person_id,
            trace_id=trace_id,
            occurred_at=occurred_at,
        )

    async def profile_changed(
        self,
        person_id: str,
        *,
        traits: dict[str, Any] | None = None,
        cart: dict[str, int] | None = None,
        computed_traits: dict[str, Any] | None = None,
        changed: tuple[str, ...] = ("traits", "cart"),
        trace_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> envelope_pb2.Envelope:
        """Publish profile.profile_changed with the traits, a cart of product → quantity and the computed
        traits (only the parts named in `changed` are read, as profile fills them)."""
        struct = struct_pb2.Struct()
        json_format.ParseDict(traits or {}, struct)
        computed = struct_pb2.Struct()
        json_format.ParseDict(computed_traits or {}, computed)
        items = [
            common_pb2.CartItem(product_id=product, name=product.title(), quantity=quantity)
            for product, quantity in (cart or {}).items()
        ]
        payload = profile_events.ProfileChangedEvent(
            person_id=person_id,
            traits=struct,
            cart=common_pb2.Cart(items=items),
            changed=list(changed),
            computed_traits=computed,
        )
        return await self.publish(
            payload,
            event_type="profile.profile_changed",
            producer="profile",
            person_id=person_id,
            trace_id=trace_id,
            occurred_at=occurred_at,
        )

    async def merged(self, survivor_id: str, *merged_ids: str) -> envelope_pb2.Envelope:
        """Publish identity.persons_merged."""
        payload = identity_events.PersonsMergedEvent(
            survivor_person_id=survivor_id, merged_person_ids=list(merged_ids)
        )
        return await self.publish(
            payload, event_type="identity.persons_merged", producer="identity", person_id=survivor_id
        )

    async def unmerged(
        self, survivor_id: str, restored_id: str, *restored_merged_ids: str
    ) -> envelope_pb2.Envelope:
        """Publish identity.persons_unmerged."""
        payload = identity_events.PersonsUnmergedEvent(
            survivor_person_id=survivor_id,
            restored_person_id=restored_id,
            restored_merged_person_ids=list(restored_merged_ids),
            reason="wrongly linked",
        )
        return await self.publish(
            payload, event_type="identity.persons_unmerged", producer="identity", person_id=restored_id
        )

    async def redeliver(self, envelope: envelope_pb2.Envelope) -> None:
        """Publish an envelope again under a new JetStream message id, as a redelivery past NATS's duplicate
        window would bring it: the same event id reaches the consumer a second time."""
        headers = {**envelope.trace_context, "Nats-Msg-Id": new_id_str()}
        await self.js.publish(
            subject_for(envelope.type, self.namespace), envelope.SerializeToString(), headers=headers
        )

    async def create(self, name: str, condition: pb.Condition, description: str = "") -> pb.Segment:
        """Create a segment and return it."""
        response = await self.stub.CreateSegment(
            pb.CreateSegmentRequest(
                segment=pb.Segment(name=name, description=description, condition=condition)
            )
        )
        return response.segment

    async def segments_of(self, person_id: str) -> set[str]:
        """The names of the segments the person is in."""
        response = await self.stub.ListPersonSegments(pb.ListPersonSegmentsRequest(person_id=person_id))
        return {m.segment_name for m in response.memberships}


@dataclass
class EventLog:
    """Envelopes published on the test's namespace since the subscription started."""

    envelopes: list[envelope_pb2.Envelope] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def of(self, event_type: str, person_id: str | None = None) -> list[envelope_pb2.Envelope]:
        """The envelopes of a type (about a person), in arrival order."""
        return [
            e
            for e in self.envelopes
            if e.type == event_type and (person_id is None or e.person_id == person_id)
        ]

    async def wait_for(
        self, event_type: str, person_id: str | None = None, count: int = 1, timeout_s: float = 5.0
    ) -> list[envelope_pb2.Envelope]:
        """Wait until at least count such envelopes arrived; return them."""
        async with asyncio.timeout(timeout_s):
            while len(self.of(event_type, person_id)) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.of(event_type, person_id)


def new_service_settings(postgres: EmbeddedPostgres, nats_server: EmbeddedNats) -> tuple[Settings, str]:
    """Settings of a segmentation service on a new database (its name returned too, to drop it after) and
    event namespace, with a fast clock."""
    database = f"segmentation_{uuid.uuid4().hex[:16]}"
    postgres.create_database(database)
    settings = Settings(
        database_url=postgres.url(database),
        nats_url=nats_server.url,
        grpc_host="127.0.0.1",
        grpc_port=0,
        event_namespace="t" + uuid.uuid4().hex[:10],
        migrate_on_start=True,
        outbox_poll_interval_s=0.05,
        jobs_poll_interval_s=0.1,
    )
    return settings, database


async def eventually(check: Callable[[], Awaitable[T]], timeout_s: float = 5.0) -> T:
    """Poll check until it returns a truthy value (returned) or the timeout passes (AssertionError)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"still {result!r} after {timeout_s} s")
        await asyncio.sleep(0.05)


def person() -> str:
    """A new person id."""
    return new_id_str()


def unique(prefix: str) -> str:
    """A segment name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def trace_id_of(envelope: envelope_pb2.Envelope) -> str:
    """The trace id in an envelope's W3C traceparent."""
    return envelope.trace_context["traceparent"].split("-")[1]
