"""Helpers of the profile tests: the running services, the events published, request builders, row counts."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import sqlalchemy as sa
from google.protobuf import struct_pb2
from google.protobuf.message import Message
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine

from omni.common.v1 import common_pb2
from omni.events.v1 import envelope_pb2
from omni.gateway.v1 import gateway_pb2
from omni.identity.v1 import identity_pb2, identity_pb2_grpc
from omni.profile.v1 import events_pb2, profile_pb2, profile_pb2_grpc
from omni_kit.bus import make_envelope, subject_for, unpack
from omni_kit.ids import new_id_str
from omni_kit.runtime import Runtime

COMMON = {"grpc_host": "127.0.0.1", "grpc_port": 0, "migrate_on_start": True, "outbox_poll_interval_s": 0.05}


async def close_runtime(runtime: Runtime) -> None:
    """Close a runtime, letting its consumers finish their current fetch first.

    Runtime.close cancels the consumer tasks mid-fetch; a message that then lands in the pull subscription's
    queue is never taken, and the NATS drain waits its full 30 s timeout for it. Stopping the consumers and
    waiting out one fetch (0.5 s) first avoids that.
    """
    for consumer in runtime.consumers:
        consumer.stop()
    if runtime.consumers:
        await asyncio.sleep(0.6)
    await runtime.close()


PROFILE_TABLES = (
    "profiles",
    "events",
    "traits",
    "trait_changes",
    "consents",
    "consent_history",
    "computed_traits",
    "segment_memberships",
    "outbox",
)


@dataclass
class EventLog:
    """Envelopes published on the test namespace since the subscription started."""

    envelopes: list[envelope_pb2.Envelope] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def matching(self, predicate: Callable[[envelope_pb2.Envelope], bool]) -> list[envelope_pb2.Envelope]:
        """The envelopes that satisfy predicate, in arrival order."""
        return [e for e in self.envelopes if predicate(e)]

    async def wait_for(
        self, predicate: Callable[[envelope_pb2.Envelope], bool], count: int = 1, within_s: float = 10.0
    ) -> list[envelope_pb2.Envelope]:
        """Wait until at least count envelopes satisfy predicate; return them."""
        async with asyncio.timeout(within_s):
            while len(self.matching(predicate)) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.matching(predicate)


@dataclass
class Services:
    """Identity and profile running in-process on one event namespace, with clients and a database handle."""

    profile_runtime: Runtime
    identity_runtime: Runtime
    profile: profile_pb2_grpc.ProfileServiceStub
    identity: identity_pb2_grpc.IdentityServiceStub
    namespace: str
    database: AsyncEngine
    js: JetStreamContext
    events: EventLog
    http_url: str | None = None
    """The Segment-compatible endpoint's base URL, when it runs (the `tracked` fixture)."""

    async def post(self, path: str, body: Any, write_key: str) -> tuple[int, Any]:
        """POST a JSON body to the tracking endpoint with the write key; the status and the JSON answer."""
        assert self.http_url is not None, "the tracking endpoint is not running"
        authorization = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{self.http_url}{path}", json=body, headers={"Authorization": authorization}
            ) as answer,
        ):
            return answer.status, await answer.json(content_type=None)

    async def counts(self) -> dict[str, int]:
        """Row counts of profile's tables, to show that a refused request wrote nothing."""
        async with self.database.connect() as connection:
            return {
                table: int(await connection.scalar(sa.text(f"SELECT count(*) FROM {table}")) or 0)
                for table in PROFILE_TABLES
            }

    async def scalar(self, sql: str, **params: Any) -> Any:
        """One value from profile's database."""
        async with self.database.connect() as connection:
            return await connection.scalar(sa.text(sql), params)


def unique(prefix: str = "") -> str:
    """A value no other test uses."""
    return prefix + uuid.uuid4().hex[:12]


def ident(type_: str, value: str) -> common_pb2.Identifier:
    """An identifier message."""
    return common_pb2.Identifier(type=type_, value=value)


def struct(values: dict[str, Any]) -> struct_pb2.Struct:
    """A Struct of plain values."""
    result = struct_pb2.Struct()
    result.update(values)
    return result


def event(
    type_: str = "page_viewed",
    *,
    id_: str | None = None,
    identifiers: list[common_pb2.Identifier] | None = None,
    person_id: str = "",
    channel: common_pb2.Channel.ValueType = common_pb2.CHANNEL_WEB,
    occurred_at: datetime | None = None,
    properties: dict[str, Any] | None = None,
    cart_item: common_pb2.CartItem | None = None,
) -> profile_pb2.Event:
    """An event message; identifiers default to a fresh anonymous id unless person_id is given."""
    message = profile_pb2.Event(
        id=unique("evt-") if id_ is None else id_,
        type=type_,
        channel=channel,
        identifiers=identifiers
        if identifiers is not None
        else ([] if person_id else [ident("anonymous_id", unique("anon-"))]),
        person_id=person_id,
    )
    if occurred_at is not None:
        message.occurred_at.FromDatetime(occurred_at.astimezone(UTC))
    if properties is not None:
        message.properties.CopyFrom(struct(properties))
    if cart_item is not None:
        message.cart_item.CopyFrom(cart_item)
    return message


def item(
    product_id: str, quantity: int = 1, name: str = "", price_minor: int | None = None
) -> common_pb2.CartItem:
    """A cart line message."""
    line = common_pb2.CartItem(product_id=product_id, quantity=quantity, name=name)
    if price_minor is not None:
        line.unit_price.CopyFrom(common_pb2.Money(amount_minor=price_minor, currency_code="EUR"))
    return line


async def new_person(services: Services) -> uuid.UUID:
    """A person identity knows (resolved from a fresh cookie id) and profile has not seen yet."""
    response = await services.identity.ResolvePerson(
        identity_pb2.ResolvePersonRequest(identifiers=[ident("anonymous_id", unique("anon-"))], source="web")
    )
    return uuid.UUID(response.resolution.person_id)


async def track(services: Services, message: profile_pb2.Event) -> profile_pb2.TrackEventResponse:
    """Track one event."""
    return await services.profile.TrackEvent(profile_pb2.TrackEventRequest(event=message))


async def get_profile(services: Services, person_id: str, recent: int = 0) -> profile_pb2.Profile:
    """The profile of a person."""
    response = await services.profile.GetProfile(
        profile_pb2.GetProfileRequest(person_id=person_id, recent_event_count=recent)
    )
    return response.profile


def cart_of(profile: profile_pb2.Profile) -> dict[str, int]:
    """A profile's cart as product id → quantity."""
    return {line.product_id: line.quantity for line in profile.cart.items}


async def publish_outcome(
    services: Services, payload: Message, event_type: str, person_id: str
) -> envelope_pb2.Envelope:
    """Publish a gateway outcome event (gateway.message_sent …) as gateway's relay would."""
    envelope = make_envelope(payload, event_type=event_type, producer="gateway", person_id=person_id)
    await services.js.publish(
        subject_for(event_type, services.namespace),
        envelope.SerializeToString(),
        headers={"Nats-Msg-Id": envelope.id},
    )
    return envelope


def gateway_message(
    person: str, status: gateway_pb2.MessageStatus.ValueType, error: str = ""
) -> gateway_pb2.Message:
    """A gateway message to a person, in a status."""
    message = gateway_pb2.Message(
        id=new_id_str(),
        request_id=unique("req-"),
        person_id=person,
        channel=common_pb2.CHANNEL_EMAIL,
        template_id="abandoned-cart-email",
        status=status,
        error=error,
        journey_id="journey-1",
    )
    message.update_time.FromDatetime(datetime.now(UTC))
    return message


def tracked_with_id(event_id: str) -> Callable[[envelope_pb2.Envelope], bool]:
    """Matches profile.event_tracked of the event with this id."""
    return lambda e: (
        e.type == "profile.event_tracked" and unpack(e, events_pb2.EventTrackedEvent).event.id == event_id
    )
