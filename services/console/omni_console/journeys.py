"""Journeys: each journey as the graph of its steps, with the persons at a step where the services count them.

A one-message journey is its trigger segment and one send. A multi-step journey (``Journey.spec``, read with
GetJourney) is its entry and its steps: each step with its kind and settings and its ways out, labelled
(a condition's "if true"/"if false", a split's branches, a wait's "event"/"timeout"). ``steps`` turns either
into the list of steps the page draws (as a graph and a funnel chart).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.duration_pb2 import Duration

from omni.decisioning.v1 import decisioning_pb2
from omni.segmentation.v1 import segmentation_pb2
from omni_console import segments
from omni_console.calls import Part, fetch
from omni_console.clients import Clients
from omni_console.formatting import channel_name, plain, shown_time, value_text, when

READ = "decisioning.journeys:read"


@dataclass(frozen=True)
class Step:
    """One step of a journey: what it is, what it does, and how many persons it holds (None: not counted)."""

    kind: str
    title: str
    detail: str
    persons: int | None = None
    link: str | None = None
    id: str = ""
    """The step's id in a multi-step journey (the anchor its branches point at); empty for the entry."""
    exits: tuple[tuple[str, str], ...] = ()
    """Where the step leads: (label, step id) per way out; an empty step id ends the run."""


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
    """The journey's steps, its entry first, each with the persons it holds where that is known."""
    if journey.HasField("spec"):
        return await _spec_steps(clients, journey.spec)
    trigger, members = await _segment(clients, journey.trigger_segment_id)
    channels = ", ".join(channel_name(c) for c in journey.channels)
    return [
        Step(
            "trigger",
            f"Enters segment {trigger}",
            "a person entering the segment starts the journey",
            members,
            link=f"/segments/{journey.trigger_segment_id}",
        ),
        Step("send", f"Send template {journey.template_id}", f"on the best consented of {channels}"),
    ]


async def _segment(clients: Clients, segment_id: str) -> tuple[str, int | None]:
    """A segment's name (its id when it cannot be read) and its member count (None when not counted)."""
    found, members = await asyncio.gather(
        segments.segment(clients, segment_id), segments.count(clients, segment_id)
    )
    name = found.value.name if isinstance(found.value, segmentation_pb2.Segment) else segment_id
    return name, members.value


async def _spec_steps(clients: Clients, spec: decisioning_pb2.JourneySpec) -> list[Step]:
    first = spec.steps[0].id if spec.steps else ""
    entry = spec.entry
    kind = entry.WhichOneof("kind")
    if kind in ("segment", "campaign"):
        segment_id = entry.segment.segment_id if kind == "segment" else entry.campaign.segment_id
        name, members = await _segment(clients, segment_id)
        if kind == "segment":
            title, detail = f"Enters segment {name}", "a person entering the segment starts a run"
        else:
            start = shown_time(when(entry.campaign.start_time)) or "at publish"
            local = " (each person's local time)" if entry.campaign.local_time else ""
            pace = f", {entry.campaign.per_minute:,} a minute" if entry.campaign.per_minute else ""
            title, detail = f"Campaign to segment {name}", f"everyone in the segment, {start}{local}{pace}"
        entry_step = Step("entry", title, detail, members, link=f"/segments/{segment_id}")
    elif kind == "event":
        detail = "a run starts when the event is tracked" + _filters(entry.event.filters)
        entry_step = Step("entry", f"Event {entry.event.event_type}", detail)
    else:
        entry_step = Step("entry", "Started by TriggerJourney", "a run starts when a caller names the person")
    entry_step = Step(
        entry_step.kind,
        entry_step.title,
        entry_step.detail + "; " + _entry_rule(spec.entry_rule),
        entry_step.persons,
        entry_step.link,
        exits=(("start", first),),
    )
    return [entry_step, *(_step(step) for step in spec.steps)]


def _step(step: decisioning_pb2.JourneyStep) -> Step:
    """One step of the graph: its kind, its settings in words, and its labelled ways out."""
    kind = step.WhichOneof("kind") or "unknown"
    if kind == "message":
        m = step.message
        channels = ", ".join(channel_name(c) for c in m.channels)
        on_cap = "hold " + duration_text(m.hold_for) if m.on_cap == m.CAP_ACTION_HOLD else "skip"
        return Step(
            kind,
            f"Send template {m.template_id}",
            f"on the first consented of {channels}; at a contact cap: {on_cap}",
            id=step.id,
            exits=(("next", m.next),),
        )
    if kind == "wait":
        w = step.wait
        until = w.WhichOneof("until")
        if until == "duration":
            what = f"for {duration_text(w.duration)}"
        elif until == "time_of_day":
            t = w.time_of_day
            days = (
                " on " + ", ".join(WEEKDAYS[d - 1] for d in t.weekdays if 1 <= d <= 7) if t.weekdays else ""
            )
            zone = (
                f" ({t.time_zone} unless the person has a time zone)" if t.time_zone else " (person's time)"
            )
            what = f"until {t.hour:02d}:{t.minute:02d}{days}{zone}"
        else:
            offset = duration_text(w.trait_date.offset, signed=True)
            what = f"until the date in trait {w.trait_date.trait}" + (f" {offset}" if offset else "")
        return Step(kind, f"Wait {what}", "", id=step.id, exits=(("next", w.next),))
    if kind == "wait_for_event":
        e = step.wait_for_event
        keyed = ", same key" if e.match_key else ""
        return Step(
            kind,
            f"Wait for event {e.event_type}",
            f"at most {duration_text(e.timeout)}{keyed}" + _filters(e.filters),
            id=step.id,
            exits=(("event", e.on_event), ("timeout", e.on_timeout)),
        )
    if kind == "condition":
        c = step.condition
        which = c.WhichOneof("condition")
        if which == "in_segment_id":
            what = f"in segment {c.in_segment_id}"
        elif which == "trait":
            what = (
                f"trait {c.trait.trait} = {c.trait.equals}"
                if c.trait.equals
                else f"trait {c.trait.trait} set"
            )
        else:
            ev = c.event_in_window
            what = f"event {ev.event_type} in the last {duration_text(ev.window)}"
        return Step(
            kind,
            f"If {what}",
            "evaluated when the step is taken",
            id=step.id,
            exits=(("if true", c.if_true), ("if false", c.if_false)),
        )
    if kind == "random_split":
        branches = step.random_split.branches
        return Step(
            kind,
            "Random split",
            "stable per person: " + ", ".join(f"{b.name} {b.percent}%" for b in branches),
            id=step.id,
            exits=tuple((f"{b.name} ({b.percent}%)", b.next) for b in branches),
        )
    if kind == "update_profile":
        u = step.update_profile
        return Step(
            kind,
            f"Set trait {u.trait}",
            f"to {value_text(plain(u.value))}",
            id=step.id,
            exits=(("next", u.next),),
        )
    if kind == "decide":
        d = step.decide
        return Step(
            kind,
            f"Decide an offer at {d.touchpoint}",
            "the offer goes to the later messages' templates",
            id=step.id,
            exits=(("next", d.next),),
        )
    return Step(kind, "Exit", "the run ends (completed)", id=step.id)


WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _filters(filters: Iterable[decisioning_pb2.PropertyFilter]) -> str:
    shown = [f"{f.property} = {f.equals}" if f.equals else f"{f.property} present" for f in filters]
    return f", where {' and '.join(shown)}" if shown else ""


def _entry_rule(rule: decisioning_pb2.EntryRule) -> str:
    keyed = f" per {rule.key_property}" if rule.key_property else " per person"
    if rule.frequency == rule.FREQUENCY_ONCE_PER_PERIOD:
        return f"at most once per {duration_text(rule.period)}{keyed}"
    if rule.frequency == rule.FREQUENCY_EVERY_TIME:
        return f"every time, one run at a time{keyed}"
    return f"once ever{keyed}"


def duration_text(duration: Duration, signed: bool = False) -> str:
    """A duration in the largest whole units that say it ("3 days", "1 h 30 min", "45 s")."""
    total = duration.seconds
    sign = "-" if total < 0 else "+" if signed and total else ""
    total = abs(total)
    if total == 0:
        return "" if signed else "0 s"
    parts = []
    for unit, size in (("day", 86_400), ("h", 3_600), ("min", 60), ("s", 1)):
        amount, total = divmod(total, size)
        if amount:
            parts.append(f"{amount} {unit}{'s' if unit == 'day' and amount > 1 else ''}")
    return sign + " ".join(parts)


async def view(clients: Clients, journey_id: str) -> Part[JourneyView]:
    """One journey (its latest published version, or its draft) with its steps; a problem when there is none."""

    async def call() -> decisioning_pb2.Journey:
        request = decisioning_pb2.GetJourneyRequest(journey_id=journey_id)
        return (await clients.decisioning.GetJourney(request)).journey

    found = await fetch(clients, READ, call)
    if found.value is None:
        return Part(problem=found.problem, denied=found.denied)
    return Part(JourneyView(found.value, await steps(clients, found.value)))
