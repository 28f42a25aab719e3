"""Journeys: each journey as its steps, with the persons at each step where the services count them.

A journey today is one step after its trigger: a person entering the trigger segment is sent the template on
the best consented of its channels. ``steps`` turns a journey into the list of steps the page draws (as a
graph and a funnel chart); a journey of several steps adds its steps there, and the page follows.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from omni.decisioning.v1 import decisioning_pb2
from omni.segmentation.v1 import segmentation_pb2
from omni_console import segments
from omni_console.calls import Part, fetch
from omni_console.clients import Clients
from omni_console.formatting import channel_name

READ = "decisioning.journeys:read"


@dataclass(frozen=True)
class Step:
    """One step of a journey: what it is, what it does, and how many persons it holds (None: not counted)."""

    kind: str
    title: str
    detail: str
    persons: int | None = None
    link: str | None = None


@dataclass(frozen=True)
class JourneyView:
    """A journey with its steps."""

    journey: decisioning_pb2.Journey
    steps: list[Step]


async def listing(clients: Clients) -> Part[list[decisioning_pb2.Journey]]:
    """Every journey."""

    async def call() -> list[decisioning_pb2.Journey]:
        response = await clients.decisioning.ListJourneys(decisioning_pb2.ListJourneysRequest(page_size=1000))
        return list(response.journeys)

    return await fetch(clients, READ, call)


async def steps(clients: Clients, journey: decisioning_pb2.Journey) -> list[Step]:
    """The journey's steps, trigger first, each with the persons it holds where that is known."""
    trigger, members = await asyncio.gather(
        segments.segment(clients, journey.trigger_segment_id),
        segments.count(clients, journey.trigger_segment_id),
    )
    name = (
        trigger.value.name
        if isinstance(trigger.value, segmentation_pb2.Segment)
        else journey.trigger_segment_id
    )
    channels = ", ".join(channel_name(c) for c in journey.channels)
    return [
        Step(
            "trigger",
            f"Enters segment {name}",
            "a person entering the segment starts the journey",
            members.value,
            link=f"/segments/{journey.trigger_segment_id}",
        ),
        Step("send", f"Send template {journey.template_id}", f"on the best consented of {channels}"),
    ]


async def view(clients: Clients, journey_id: str) -> Part[JourneyView]:
    """One journey with its steps; NOT_FOUND-like problem when there is none."""
    journeys = await listing(clients)
    if journeys.value is None:
        return Part(problem=journeys.problem, denied=journeys.denied)
    journey = next((j for j in journeys.value if j.id == journey_id), None)
    if journey is None:
        return Part(problem=f"no journey {journey_id}")
    return Part(JourneyView(journey, await steps(clients, journey)))
