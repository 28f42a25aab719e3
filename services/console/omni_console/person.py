"""The call-centre screen: finding a person, and everything the services know about them on one page.

Every part is fetched at once (asyncio.gather), each under its own scope, so the page costs the slowest call,
not the sum of them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc

from omni.common.v1 import common_pb2
from omni.decisioning.v1 import decisioning_pb2
from omni.identity.v1 import identity_pb2
from omni.profile.v1 import profile_pb2
from omni.segmentation.v1 import segmentation_pb2
from omni_console.calls import Part, describe, fetch
from omni_console.clients import Clients
from omni_console.formatting import channel_name, enum_name, plain, when
from omni_console.lookup import Candidate

GATEWAY_SOURCE = "gateway"
RECEIPT_KINDS = ("delivered", "opened", "clicked", "bounced", "unsubscribed", "failed")


@dataclass(frozen=True)
class Found:
    """The person a search found (their id), or why none was."""

    person_id: str | None
    problem: str | None = None
    by: Candidate | None = None


async def find(clients: Clients, tried: list[Candidate]) -> Found:
    """Look the candidates up in order; the first person found wins."""
    if tried and tried[0].is_person_id:
        return Found(tried[0].value, by=tried[0])
    if not clients.allows("identity.persons:read"):
        return Found(None, "the console's credentials do not hold identity.persons:read")
    for candidate in tried:
        try:
            response = await clients.identity.LookupPerson(
                identity_pb2.LookupPersonRequest(
                    identifier=common_pb2.Identifier(type=candidate.type, value=candidate.value)
                )
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                continue
            return Found(None, describe(error))
        return Found(response.person.id, by=candidate)
    shown = ", ".join(f"{c.type.replace('_', ' ')} {c.value}" for c in tried)
    return Found(None, f"nobody holds {shown}")


@dataclass
class Message:
    """A message sent to the person, with what became of it, from the gateway's outcomes on the timeline."""

    message_id: str
    channel: str
    template_id: str
    journey_id: str
    status: str
    sent: datetime | None = None
    receipts: dict[str, datetime | None] = field(default_factory=dict)


@dataclass(frozen=True)
class JourneyState:
    """Where the person stands in a journey: entered by its trigger segment, the message sent or next."""

    journey: decisioning_pb2.Journey
    entered: datetime | None
    message: Message | None

    @property
    def next_step(self) -> str:
        """What the journey does next for the person."""
        if self.message is not None:
            return "done: the message was sent"
        channels = ", ".join(channel_name(c) for c in self.journey.channels)
        return f"send template {self.journey.template_id} on the best consented of {channels}"


@dataclass
class PersonView:
    """Everything the screen shows, part by part."""

    person_id: str
    person: Part[identity_pb2.Person]
    identifiers: Part[list[identity_pb2.PersonIdentifier]]
    merges: Part[list[identity_pb2.Merge]]
    refused: Part[list[identity_pb2.RefusedLink]]
    profile: Part[profile_pb2.Profile]
    computed_definitions: Part[dict[str, profile_pb2.ComputedTrait]]
    consent_history: Part[list[profile_pb2.Consent]]
    segments: Part[list[segmentation_pb2.Membership]]
    timeline: Part[profile_pb2.ListTimelineResponse]
    messages: Part[list[Message]]
    journeys: Part[list[JourneyState]]
    runs: Part[list[decisioning_pb2.JourneyRun]] = field(default_factory=Part)
    """The person's runs of multi-step journeys, newest first, each with its current step and history."""
    journey_names: dict[str, str] = field(default_factory=dict)
    """Journey names by id, for the runs."""

    @property
    def traits(self) -> list[tuple[str, Any, str, datetime | None]]:
        """(name, value, source, updated) of each trait, by name."""
        if self.profile.value is None:
            return []
        profile = self.profile.value
        values = plain(profile.traits)
        rows = []
        for name in sorted(values):
            meta = profile.trait_metadata.get(name)
            rows.append(
                (name, values[name], meta.source if meta else "", when(meta.update_time) if meta else None)
            )
        return rows

    @property
    def computed(self) -> list[tuple[str, Any, str]]:
        """(name, value, how it is computed) of each computed trait, by name."""
        if self.profile.value is None:
            return []
        values = plain(self.profile.value.computed_traits)
        definitions = self.computed_definitions.value or {}
        return [(name, values[name], describe_computed(definitions.get(name))) for name in sorted(values)]

    @property
    def consents(self) -> list[profile_pb2.Consent]:
        """The consent in force per channel and purpose."""
        return [] if self.profile.value is None else list(self.profile.value.consents)


def describe_computed(definition: profile_pb2.ComputedTrait | None) -> str:
    """A computed trait's definition in a few words ("count of order_completed, 30 days, store")."""
    if definition is None:
        return "built in"
    kind = enum_name(profile_pb2.ComputedTraitKind, definition.kind, "COMPUTED_TRAIT_KIND_").replace("_", " ")
    words = [kind]
    if definition.event_type:
        words.append(f"of {definition.event_type}")
    if definition.property:
        words.append(f"({definition.property})")
    if definition.window_days:
        words.append(f"over {definition.window_days} days")
    if definition.channels:
        words.append("on " + ", ".join(channel_name(c) for c in definition.channels))
    return " ".join(words)


def messages_of(events: list[profile_pb2.Event]) -> list[Message]:
    """The messages among a person's events (the gateway's outcomes), newest first, each with its receipts."""
    by_id: dict[str, Message] = {}
    for event in reversed(events):  # oldest first, so the sent event comes before its receipts
        if event.source != GATEWAY_SOURCE:
            continue
        properties = plain(event.properties)
        message_id = str(properties.get("message_id", ""))
        if not message_id:
            continue
        message = by_id.get(message_id)
        if message is None:
            message = by_id[message_id] = Message(
                message_id=message_id,
                channel=channel_name(event.channel),
                template_id=str(properties.get("template_id", "")),
                journey_id=str(properties.get("journey_id", "")),
                status=str(properties.get("status", "")),
            )
        if event.type in ("message_sent", "message_failed"):
            message.sent = when(event.occurred_at)
            message.status = str(properties.get("status", message.status))
        else:
            kind = event.type.split("_", 1)[-1]
            message.receipts[kind] = when(event.occurred_at)
    earliest = datetime.min.replace(tzinfo=UTC)
    return sorted(by_id.values(), key=lambda m: m.sent or earliest, reverse=True)


async def timeline_page(
    clients: Clients, person_id: str, page_size: int, page_token: str = ""
) -> Part[profile_pb2.ListTimelineResponse]:
    """One page of the person's timeline, newest first."""
    return await fetch(
        clients,
        "profile.profiles:read",
        lambda: clients.profile.ListTimeline(
            profile_pb2.ListTimelineRequest(person_id=person_id, page_size=page_size, page_token=page_token)
        ),
    )


async def load(clients: Clients, person_id: str, *, page_size: int, message_scan: int) -> PersonView:
    """Fetch every part of the person's page at once."""
    identity = clients.identity

    async def person() -> identity_pb2.Person:
        return (await identity.GetPerson(identity_pb2.GetPersonRequest(person_id=person_id))).person

    async def identifiers() -> list[identity_pb2.PersonIdentifier]:
        request = identity_pb2.ListPersonIdentifiersRequest(person_id=person_id, page_size=200)
        return list((await identity.ListPersonIdentifiers(request)).identifiers)

    async def merges() -> list[identity_pb2.Merge]:
        request = identity_pb2.ListPersonMergesRequest(person_id=person_id, page_size=100)
        return list((await identity.ListPersonMerges(request)).merges)

    async def refused() -> list[identity_pb2.RefusedLink]:
        request = identity_pb2.ListRefusedLinksRequest(person_id=person_id, page_size=100)
        return list((await identity.ListRefusedLinks(request)).refused_links)

    async def profile() -> profile_pb2.Profile:
        request = profile_pb2.GetProfileRequest(person_id=person_id, recent_event_count=0)
        return (await clients.profile.GetProfile(request)).profile

    async def definitions() -> dict[str, profile_pb2.ComputedTrait]:
        response = await clients.profile.ListComputedTraits(
            profile_pb2.ListComputedTraitsRequest(page_size=500)
        )
        return {trait.name: trait for trait in response.computed_traits}

    async def consent_history() -> list[profile_pb2.Consent]:
        request = profile_pb2.ListConsentHistoryRequest(person_id=person_id, page_size=100)
        return list((await clients.profile.ListConsentHistory(request)).consents)

    async def segments() -> list[segmentation_pb2.Membership]:
        request = segmentation_pb2.ListPersonSegmentsRequest(person_id=person_id)
        return list((await clients.segmentation.ListPersonSegments(request)).memberships)

    async def recent_events() -> list[profile_pb2.Event]:
        if message_scan == 0:
            return []
        request = profile_pb2.ListTimelineRequest(person_id=person_id, page_size=message_scan)
        return list((await clients.profile.ListTimeline(request)).events)

    async def journeys() -> list[decisioning_pb2.Journey]:
        response = await clients.decisioning.ListJourneys(decisioning_pb2.ListJourneysRequest(page_size=1000))
        return list(response.journeys)

    async def runs() -> list[decisioning_pb2.JourneyRun]:
        request = decisioning_pb2.ListPersonJourneyRunsRequest(person_id=person_id, page_size=50)
        return list((await clients.decisioning.ListPersonJourneyRuns(request)).runs)

    parts = await asyncio.gather(
        fetch(clients, "identity.persons:read", person),
        fetch(clients, "identity.persons:read", identifiers),
        fetch(clients, "identity.persons:read", merges),
        fetch(clients, "identity.persons:read", refused),
        fetch(clients, "profile.profiles:read", profile),
        fetch(clients, "profile.computed_traits:read", definitions),
        fetch(clients, "profile.profiles:read", consent_history),
        fetch(clients, "segmentation.memberships:read", segments),
        timeline_page(clients, person_id, page_size),
        fetch(clients, "profile.profiles:read", recent_events),
        fetch(clients, "decisioning.journeys:read", journeys),
        fetch(clients, "decisioning.journeys:read", runs),
    )
    (
        person_p,
        identifiers_p,
        merges_p,
        refused_p,
        profile_p,
        definitions_p,
        history_p,
        segments_p,
        timeline_p,
    ) = parts[:9]
    events_p: Part[list[profile_pb2.Event]] = parts[9]  # type: ignore[assignment]
    journeys_p: Part[list[decisioning_pb2.Journey]] = parts[10]  # type: ignore[assignment]
    runs_p: Part[list[decisioning_pb2.JourneyRun]] = parts[11]  # type: ignore[assignment]
    messages_p: Part[list[Message]] = (
        Part(messages_of(events_p.value or []))
        if events_p.ok
        else Part(problem=events_p.problem, denied=events_p.denied)
    )
    return PersonView(
        person_id=person_id,
        person=person_p,  # type: ignore[arg-type]
        identifiers=identifiers_p,  # type: ignore[arg-type]
        merges=merges_p,  # type: ignore[arg-type]
        refused=refused_p,  # type: ignore[arg-type]
        profile=profile_p,  # type: ignore[arg-type]
        computed_definitions=definitions_p,  # type: ignore[arg-type]
        consent_history=history_p,  # type: ignore[arg-type]
        segments=segments_p,  # type: ignore[arg-type]
        timeline=timeline_p,  # type: ignore[arg-type]
        messages=messages_p,
        journeys=journey_states(journeys_p, segments_p, messages_p),  # type: ignore[arg-type]
        runs=runs_p,
        journey_names={j.id: j.name for j in journeys_p.value or []},
    )


def journey_states(
    journeys: Part[list[decisioning_pb2.Journey]],
    segments: Part[list[segmentation_pb2.Membership]],
    messages: Part[list[Message]],
) -> Part[list[JourneyState]]:
    """The one-message journeys the person is in: those whose trigger segment holds them, or that sent them a message."""
    if not journeys.ok:
        return Part(problem=journeys.problem, denied=journeys.denied)
    entered = {m.segment_id: when(m.enter_time) for m in segments.value or []}
    sent = {m.journey_id: m for m in messages.value or [] if m.journey_id}
    states = [
        JourneyState(journey, entered.get(journey.trigger_segment_id), sent.get(journey.id))
        for journey in journeys.value or []
        if not journey.HasField("spec") and (journey.trigger_segment_id in entered or journey.id in sent)
    ]
    return Part(states)
