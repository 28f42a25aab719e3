"""The event types and trait names seen in profile's events, and the warnings for rules naming others.

A rule on an event type or trait nothing has produced is valid (the first such event may come tomorrow) but
is most often a typo ("order_complete") or a name from another tool: the answers to CreateSegment,
UpdateSegment and PreviewSegment list them as warnings. The names are noted as the facts recorder applies
profile's events; each process remembers what it has noted, so a name costs a write once per process.
Warnings are advice: a name noted by a transaction that rolled back is written again by the next one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from omni.segmentation.v1 import segmentation_pb2 as pb
from omni_segmentation.conditions import nodes
from omni_segmentation.repository import Repository
from omni_segmentation.rules import property_head

EVENT_TYPE = "event_type"
TRAIT = "trait"
PROPERTY = "property"
"""A property kept of an event of a type, noted as "<event type>.<property>"."""


@dataclass(frozen=True)
class Warning:
    """A suspicious part of a condition, by its path in the request."""

    field: str
    description: str


class Vocabulary:
    """What profile's events have named so far."""

    def __init__(self, repository: Repository) -> None:
        self._repository = repository
        self._noted: dict[str, set[str]] = {EVENT_TYPE: set(), TRAIT: set(), PROPERTY: set()}

    async def note(self, session: AsyncSession, kind: str, names: Iterable[str]) -> None:
        """Remember names of a kind (EVENT_TYPE, TRAIT) as seen."""
        noted = self._noted[kind]
        new = set(names) - noted
        if new:
            await self._repository.note_names(session, kind, new)
            noted |= new

    async def warnings(self, session: AsyncSession, condition: pb.Condition, path: str) -> list[Warning]:
        """A warning for each event type and trait name of a (valid) condition never seen."""
        named: list[tuple[str, str, str]] = []  # (kind, name, field), in document order
        for node, node_path in nodes(condition, path):
            kind = node.WhichOneof("kind")
            if kind in ("event_count", "event_sum"):
                counted = getattr(node, kind)
                if counted.event_type:  # empty: every type (any_event_type)
                    named.append((EVENT_TYPE, counted.event_type, f"{node_path}.{kind}.event_type"))
                for index, item in enumerate(counted.properties):
                    named.append(
                        (
                            PROPERTY,
                            f"{counted.event_type}.{property_head(item.property)}",
                            f"{node_path}.{kind}.properties[{index}].property",
                        )
                    )
                if kind == "event_sum":
                    named.append(
                        (
                            PROPERTY,
                            f"{counted.event_type}.{property_head(counted.property)}",
                            f"{node_path}.event_sum.property",
                        )
                    )
            elif kind == "then_not":
                seq = node.then_not
                named.append((EVENT_TYPE, seq.event_type, f"{node_path}.then_not.event_type"))
                named.append((EVENT_TYPE, seq.absent_event_type, f"{node_path}.then_not.absent_event_type"))
                if seq.key:  # warned about as the first event's (the absent one's starts with it)
                    named.append(
                        (PROPERTY, f"{seq.event_type}.{property_head(seq.key)}", f"{node_path}.then_not.key")
                    )
            elif kind == "first_event" and node.first_event.event_type:
                named.append((EVENT_TYPE, node.first_event.event_type, f"{node_path}.first_event.event_type"))
            elif kind == "since_last_event":
                since = node.since_last_event
                named.append((EVENT_TYPE, since.event_type, f"{node_path}.since_last_event.event_type"))
            elif kind in ("trait", "trait_age", "anniversary"):
                named.append((TRAIT, getattr(node, kind).trait, f"{node_path}.{kind}.trait"))
        seen_types = await self._repository.seen_names(
            session, EVENT_TYPE, (n for k, n, _ in named if k == EVENT_TYPE)
        )
        # A dotted name reaches into an object-valued trait: its first part is the trait profile announced.
        traits = {n for k, n, _ in named if k == TRAIT}
        seen_traits = await self._repository.seen_names(
            session, TRAIT, traits | {n.split(".", 1)[0] for n in traits}
        )
        seen_properties = await self._repository.seen_names(
            session, PROPERTY, (n for k, n, _ in named if k == PROPERTY)
        )
        warnings: list[Warning] = []
        for kind, name, field in named:
            if kind == PROPERTY and name not in seen_properties:
                event_type, _, prop = name.partition(".")
                if event_type in seen_types:
                    warnings.append(
                        Warning(
                            field,
                            f"no {event_type} has had a property {prop} kept yet: properties are kept from when "
                            "a rule first names them, so earlier events count as without it",
                        )
                    )
                continue
            if kind == EVENT_TYPE and name not in seen_types:
                warnings.append(
                    Warning(field, f"no event of type {name} has been seen yet: is the name right?")
                )
            elif kind == TRAIT and name not in seen_traits and name.split(".", 1)[0] not in seen_traits:
                warnings.append(
                    Warning(
                        field, f"no profile has had a trait or computed trait {name} yet: is the name right?"
                    )
                )
        return warnings
