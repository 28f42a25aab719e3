"""Helpers of the gateway tests: the running services, events seen on the bus, builders and table counts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from google.protobuf import struct_pb2
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine

from omni.common.v1 import common_pb2
from omni.decisioning.v1 import events_pb2 as decisioning_events
from omni.events.v1 import envelope_pb2
from omni.gateway.v1 import events_pb2, gateway_pb2, gateway_pb2_grpc
from omni.identity.v1 import identity_pb2, identity_pb2_grpc
from omni.profile.v1 import events_pb2 as profile_events
from omni.profile.v1 import profile_pb2, profile_pb2_grpc
from omni_kit import contact
from omni_kit.bus import make_envelope, subject_for, unpack
from omni_kit.runtime import Runtime


@dataclass
class Gateway:
    """A running gateway, a client of it and an engine on its database (for checking what was written)."""

    runtime: Runtime
    stub: gateway_pb2_grpc.GatewayServiceAsyncStub
    database: AsyncEngine


StartGateway = Callable[..., Awaitable[Gateway]]
"""Starts a gateway wired to the module's identity and profile, with settings overridden by keyword."""


@dataclass
class Verdicts:
    """Profile's contact verdict announcements on the module's namespace, as they arrive."""

    envelopes: list[envelope_pb2.Envelope] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def versions(self) -> dict[str, int]:
        """The highest version announced so far per person."""
        found: dict[str, int] = {}
        for envelope in self.envelopes:
            if envelope.type == contact.CONTACT_VERDICT_CHANGED:
                event = unpack(envelope, profile_events.ContactVerdictChangedEvent)
                found[event.person_id] = max(found.get(event.person_id, 0), event.version)
        return found

    async def newer_than(self, person_id: str, version: int, within: float = 10.0) -> int:
        """Wait for an announcement about the person above `version`; return the highest version announced."""
        async with asyncio.timeout(within):
            while (latest := self.versions().get(person_id, 0)) <= version:
                self.arrived.clear()
                await self.arrived.wait()
        return latest


@dataclass
class Neighbours:
    """Identity and profile, running for real, and clients of them; the gateways running beside them and
    profile's verdict announcements, so a test can wait until a consent answer has reached the gateways."""

    namespace: str
    identity: identity_pb2_grpc.IdentityServiceAsyncStub
    profile: profile_pb2_grpc.ProfileServiceAsyncStub
    identity_target: str
    profile_target: str
    verdicts: Verdicts = field(default_factory=Verdicts)
    gateways: list[Gateway] = field(default_factory=list)


async def verdicts_reached(gateway: Gateway, versions: dict[str, int], within: float = 10.0) -> None:
    """Wait until the gateway's copy of the verdicts is at least as new as `versions` (person → version)."""
    async with asyncio.timeout(within):
        while True:
            async with gateway.database.connect() as connection:
                rows = await connection.execute(sa.text("SELECT person_id, version FROM contact_verdicts"))
                held = {str(person): version for person, version in rows}
            if all(held.get(person, 0) >= version for person, version in versions.items()):
                return
            await asyncio.sleep(0.05)


@dataclass
class EventLog:
    """Envelopes published on the namespace since the subscription started."""

    envelopes: list[envelope_pb2.Envelope] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def messages(self, event_type: str) -> list[gateway_pb2.Message]:
        """The messages carried by gateway.message_sent or gateway.message_failed envelopes so far."""
        kind = events_pb2.MessageSentEvent if event_type.endswith("sent") else events_pb2.MessageFailedEvent
        return [unpack(e, kind).message for e in self.envelopes if e.type == event_type]

    async def wait_for_message(
        self, event_type: str, predicate: Callable[[gateway_pb2.Message], bool], within: float = 10.0
    ) -> gateway_pb2.Message:
        """Wait until an event of event_type carries a message matching predicate; return that message."""
        async with asyncio.timeout(within):
            while True:
                found = [m for m in self.messages(event_type) if predicate(m)]
                if found:
                    return found[0]
                self.arrived.clear()
                await self.arrived.wait()


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Wait until condition() holds, checking every 50 ms, for at most `within` seconds."""
    async with asyncio.timeout(within):
        while True:
            if condition():
                return
            await asyncio.sleep(0.05)


def unique(prefix: str = "") -> str:
    """A value no other test uses."""
    return prefix + uuid.uuid4().hex[:12]


async def create_person(neighbours: Neighbours, email: str | None, *, consent: bool = False) -> str:
    """A person created in identity with an email address (or only a cookie id when email is None); with
    consent=True they granted email marketing consent in profile (single opt-in)."""
    identifiers = [common_pb2.Identifier(type="anonymous_id", value=unique("cookie-"))]
    if email is not None:
        identifiers.append(common_pb2.Identifier(type="email", value=email))
    response = await neighbours.identity.ResolvePerson(
        identity_pb2.ResolvePersonRequest(identifiers=identifiers, source="web")
    )
    person_id = response.resolution.person_id
    if consent:
        await set_consent(neighbours, person_id, profile_pb2.CONSENT_STATE_GRANTED)
    return person_id


async def set_consent(
    neighbours: Neighbours,
    person_id: str,
    state: profile_pb2.ConsentState.ValueType,
    *,
    purpose: profile_pb2.ConsentPurpose.ValueType = profile_pb2.CONSENT_PURPOSE_MARKETING,
    double_opt_in: profile_pb2.DoubleOptInState.ValueType = profile_pb2.DOUBLE_OPT_IN_STATE_UNSPECIFIED,
) -> profile_pb2.Consent:
    """Record the person's email consent for a purpose in profile, as its SetConsent stores it, and wait
    until the verdicts it leads to have reached every running gateway."""
    before = neighbours.verdicts.versions().get(person_id, 0)
    response = await neighbours.profile.SetConsent(
        profile_pb2.SetConsentRequest(
            person_id=person_id,
            consent=profile_pb2.Consent(
                channel=common_pb2.CHANNEL_EMAIL,
                state=state,
                purpose=purpose,
                double_opt_in=double_opt_in,
                source="gateway_tests",
            ),
        )
    )
    version = await neighbours.verdicts.newer_than(person_id, before)
    for gateway in neighbours.gateways:
        await verdicts_reached(gateway, {person_id: version})
    return response.consent


async def add_to_cart(
    neighbours: Neighbours, person_id: str, *, product_id: str, name: str, quantity: int, price_minor: int
) -> None:
    """Track a cart_item_added event for the person in profile, from the app."""
    await neighbours.profile.TrackEvent(
        profile_pb2.TrackEventRequest(
            event=profile_pb2.Event(
                id=unique("evt-"),
                type="cart_item_added",
                channel=common_pb2.CHANNEL_APP,
                person_id=person_id,
                cart_item=common_pb2.CartItem(
                    product_id=product_id,
                    name=name,
                    quantity=quantity,
                    unit_price=common_pb2.Money(amount_minor=price_minor, currency_code="EUR"),
                ),
            )
        )
    )


CART_TEMPLATE = gateway_pb2.Template(
    channel=common_pb2.CHANNEL_EMAIL,
    subject="{{ traits.first_name | default: 'Hi' }}, your cart is waiting",
    body_text=(
        "You left:\n{% for item in cart.items %}- {{ item.quantity }} x {{ item.name }} "
        "({{ item.unit_price }})\n{% endfor %}{% if variables.coupon %}Code: {{ variables.coupon }}{% endif %}"
    ),
    body_html="<ul>{% for item in cart.items %}<li>{{ item.name }}</li>{% endfor %}</ul>",
)


async def create_cart_template(gateway: Gateway, template_id: str | None = None) -> str:
    """An email template naming the cart's products; returns its id."""
    template = gateway_pb2.Template()
    template.CopyFrom(CART_TEMPLATE)
    template.id = template_id or unique("cart-")
    await gateway.stub.CreateTemplate(gateway_pb2.CreateTemplateRequest(template=template))
    return template.id


def send_request(
    person_id: str,
    template_id: str,
    *,
    request_id: str | None = None,
    purpose: profile_pb2.ConsentPurpose.ValueType = profile_pb2.CONSENT_PURPOSE_UNSPECIFIED,
    **variables: Any,
) -> gateway_pb2.SendMessageRequest:
    """A SendMessage request for an email (marketing unless purpose says otherwise)."""
    request = gateway_pb2.SendMessageRequest(
        request_id=request_id or unique("req-"),
        person_id=person_id,
        channel=common_pb2.CHANNEL_EMAIL,
        template_id=template_id,
        purpose=purpose,
    )
    if variables:
        struct = struct_pb2.Struct()
        struct.update(variables)
        request.variables.CopyFrom(struct)
    return request


async def counts(database: AsyncEngine) -> dict[str, int]:
    """Rows in each of the gateway's tables that a request could write."""
    async with database.connect() as connection:
        return {
            table: int(await connection.scalar(sa.text(f"SELECT count(*) FROM {table}")) or 0)
            for table in ("templates", "messages", "outbox")
        }


def send_requested(
    person_id: str,
    template_id: str,
    request_id: str,
    channel: int = common_pb2.CHANNEL_EMAIL,
    *,
    contact_verdict_version: int = 0,
) -> envelope_pb2.Envelope:
    """A decisioning.send_requested envelope, as decisioning's journey would publish it."""
    event = decisioning_events.SendRequestedEvent(
        request_id=request_id,
        person_id=person_id,
        channel=channel,  # type: ignore[arg-type]
        template_id=template_id,
        journey_id="journey-abandoned-cart",
        contact_verdict_version=contact_verdict_version,
    )
    return make_envelope(
        event, event_type="decisioning.send_requested", producer="decisioning", person_id=person_id
    )


async def publish(js: JetStreamContext, namespace: str, envelope: envelope_pb2.Envelope) -> None:
    """Publish an envelope as the outbox relay does: event id for deduplication, trace context in headers."""
    headers = {**dict(envelope.trace_context), "Nats-Msg-Id": envelope.id}
    await js.publish(subject_for(envelope.type, namespace), envelope.SerializeToString(), headers=headers)


def as_announced(message: gateway_pb2.Message) -> gateway_pb2.Message:
    """A message as the gateway's events show it: without the recipient's address (personal data stays in the
    gateway's own row), an error naming the address naming "<recipient>" instead."""
    shown = gateway_pb2.Message()
    shown.CopyFrom(message)
    if shown.recipient:
        shown.error = shown.error.replace(shown.recipient, "<recipient>")
        shown.ClearField("recipient")
    return shown
