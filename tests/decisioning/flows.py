"""Helpers for multi-step journeys over a running decisioning: specs, templates with variants, profile events."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.duration_pb2 import Duration

from omni.common.v1 import common_pb2 as c
from omni.decisioning.v1 import decisioning_pb2 as d
from omni.decisioning.v1 import events_pb2
from omni.gateway.v1 import gateway_pb2
from omni.profile.v1 import events_pb2 as profile_events
from omni.profile.v1 import profile_pb2 as p
from omni_kit.bus import unpack

from .support import Decisioning

SEND_REQUESTED = "decisioning.send_requested"


def seconds(value: float) -> Duration:
    """A Duration of some seconds."""
    duration = Duration()
    duration.FromNanoseconds(int(value * 1e9))
    return duration


async def template(decisioning: Decisioning, *channels: int) -> str:
    """A template with a variant for each channel (email, SMS, push)."""
    variants = []
    for channel in channels:
        if channel == c.CHANNEL_EMAIL:
            variants.append(
                gateway_pb2.TemplateVariant(email=gateway_pb2.EmailVariant(subject="Cart", text="Come back"))
            )
        elif channel == c.CHANNEL_SMS:
            variants.append(gateway_pb2.TemplateVariant(sms=gateway_pb2.SmsVariant(text="Come back")))
        else:
            variants.append(
                gateway_pb2.TemplateVariant(push=gateway_pb2.PushVariant(title="Cart", body="Come back"))
            )
    template_id = f"flow-{uuid.uuid4().hex[:12]}"
    await decisioning.gateway.CreateTemplate(
        gateway_pb2.CreateTemplateRequest(template=gateway_pb2.Template(id=template_id, variants=variants))
    )
    return template_id


async def publish(decisioning: Decisioning, spec: d.JourneySpec, name: str | None = None) -> d.Journey:
    """Create the journey as a draft and publish it."""
    created = await decisioning.stub.CreateJourney(
        d.CreateJourneyRequest(journey=d.Journey(name=name or f"flow-{uuid.uuid4().hex[:8]}", spec=spec))
    )
    published = await decisioning.stub.PublishJourney(d.PublishJourneyRequest(journey_id=created.journey.id))
    return published.journey


async def track(decisioning: Decisioning, person: uuid.UUID, event_type: str, **properties: Any) -> str:
    """Publish profile.event_tracked for the person, as profile would; the event's id."""
    values = struct_pb2.Struct()
    values.update(properties)
    event_id = str(uuid.uuid4())
    event = p.Event(id=event_id, type=event_type, person_id=str(person), properties=values)
    event.occurred_at.FromDatetime(datetime.now(UTC))
    await decisioning.feed(
        profile_events.EventTrackedEvent(event=event),
        event_type="profile.event_tracked",
        person_id=str(person),
    )
    return event_id


async def set_traits(decisioning: Decisioning, person: uuid.UUID, **traits: Any) -> None:
    """Publish profile.profile_changed with the person's traits, as profile would."""
    values = struct_pb2.Struct()
    values.update(traits)
    await decisioning.feed(
        profile_events.ProfileChangedEvent(person_id=str(person), traits=values, changed=["traits"]),
        event_type="profile.profile_changed",
        person_id=str(person),
    )


def sends(decisioning: Decisioning, person: uuid.UUID) -> list[events_pb2.SendRequestedEvent]:
    """The send requests published for the person so far."""
    return [
        unpack(envelope, events_pb2.SendRequestedEvent)
        for envelope in decisioning.published.matching(
            lambda e: e.type == SEND_REQUESTED and e.person_id == str(person)
        )
    ]


async def runs(decisioning: Decisioning, person: uuid.UUID, journey_id: str = "") -> list[d.JourneyRun]:
    """The person's runs, newest first."""
    response = await decisioning.stub.ListPersonJourneyRuns(
        d.ListPersonJourneyRunsRequest(person_id=str(person), journey_id=journey_id)
    )
    return list(response.runs)


async def until_runs(
    decisioning: Decisioning, person: uuid.UUID, predicate: Any, within_s: float = 15.0, journey_id: str = ""
) -> list[d.JourneyRun]:
    """Poll the person's runs until predicate(runs) holds."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        found = await runs(decisioning, person, journey_id)
        if predicate(found):
            return found
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"runs never matched: {found}")
        await asyncio.sleep(0.05)


def message(
    step_id: str, template_id: str, *channels: int, next_step: str = "", **extra: Any
) -> d.JourneyStep:
    """A message step."""
    return d.JourneyStep(
        id=step_id,
        message=d.MessageStep(channels=list(channels), template_id=template_id, next=next_step, **extra),
    )
