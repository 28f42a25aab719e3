"""Helpers around a running decisioning service: feeding events, watching what it publishes, its database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from google.protobuf.message import Message
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine

from omni.common.v1 import common_pb2
from omni.decisioning.v1 import decisioning_pb2_grpc
from omni.events.v1 import envelope_pb2
from omni.gateway.v1 import gateway_pb2
from omni.segmentation.v1 import segmentation_pb2
from omni_kit.bus import envelopes_in, make_envelope, subject_for
from omni_kit.runtime import Runtime

# How long to wait for the consumer or the relay before a test fails.
WAIT_S = 10.0


@dataclass
class Published:
    """The events decisioning published, as seen by a plain subscriber on the namespace's subjects."""

    envelopes: list[envelope_pb2.Envelope] = field(default_factory=list)

    def on_message(self, message: Msg) -> None:
        """Collect one published envelope."""
        self.envelopes.extend(envelopes_in(message.data, message.headers))

    def matching(self, predicate: Callable[[envelope_pb2.Envelope], bool]) -> list[envelope_pb2.Envelope]:
        """The envelopes seen so far that satisfy predicate."""
        return [envelope for envelope in self.envelopes if predicate(envelope)]

    async def wait_for(self, predicate: Callable[[envelope_pb2.Envelope], bool]) -> envelope_pb2.Envelope:
        """The first envelope satisfying predicate, waiting up to WAIT_S seconds for it."""
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while True:
            found = self.matching(predicate)
            if found:
                return found[0]
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("no matching event was published")
            await asyncio.sleep(0.02)


@dataclass
class Decisioning:
    """A running decisioning service and what tests need around it."""

    runtime: Runtime
    stub: decisioning_pb2_grpc.DecisioningServiceStub
    namespace: str
    engine: AsyncEngine
    nats: NatsClient
    js: JetStreamContext
    published: Published
    # The segmentation and gateway decisioning asks at CreateJourney and CreateOffer (set by the fixture).
    segmentation: Any = None
    gateway: Any = None

    async def segment(self) -> uuid.UUID:
        """A new segment in segmentation (no one is in it: decisioning hears of members from fed events)."""
        response = await self.segmentation.CreateSegment(
            segmentation_pb2.CreateSegmentRequest(
                segment=segmentation_pb2.Segment(
                    name=f"segment-{uuid.uuid4().hex[:12]}",
                    condition=segmentation_pb2.Condition(
                        trait=segmentation_pb2.TraitCondition(
                            trait="never_set", comparison=segmentation_pb2.COMPARISON_EXISTS
                        )
                    ),
                )
            )
        )
        return uuid.UUID(response.segment.id)

    async def template(self, channel: int = common_pb2.CHANNEL_EMAIL) -> str:
        """A new template for the channel in the gateway; its id."""
        template_id = f"template-{uuid.uuid4().hex[:12]}"
        await self.gateway.CreateTemplate(
            gateway_pb2.CreateTemplateRequest(
                template=gateway_pb2.Template(
                    id=template_id,
                    channel=channel,
                    subject="Your cart",
                    body_text="It waits for you.",  # type: ignore[arg-type]
                )
            )
        )
        return template_id

    async def feed(
        self,
        payload: Message,
        *,
        event_type: str,
        person_id: str,
        occurred_at: datetime | None = None,
    ) -> envelope_pb2.Envelope:
        """Publish a real envelope on JetStream, as the producing service's relay would."""
        producer = event_type.split(".", 1)[0]
        envelope = make_envelope(
            payload, event_type=event_type, producer=producer, person_id=person_id, occurred_at=occurred_at
        )
        await self.js.publish(
            subject_for(event_type, self.namespace),
            envelope.SerializeToString(),
            headers={"Nats-Msg-Id": envelope.id},
        )
        return envelope

    async def scalar(self, sql: str, **params: Any) -> Any:
        """One value from decisioning's database."""
        async with self.engine.connect() as connection:
            return await connection.scalar(sa.text(sql), params)

    async def rows(self, sql: str, **params: Any) -> list[sa.Row[Any]]:
        """Rows from decisioning's database."""
        async with self.engine.connect() as connection:
            return list((await connection.execute(sa.text(sql), params)).all())

    async def eventually(self, sql: str, **params: Any) -> Any:
        """Poll a query until it returns a value other than None, 0 or False (up to WAIT_S); return it."""
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while True:
            value = await self.scalar(sql, **params)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for: {sql} {params}")
            await asyncio.sleep(0.02)
