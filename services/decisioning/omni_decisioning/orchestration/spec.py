"""A JourneySpec's rules beyond what the proto declares, its stored form, and the references it makes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf.json_format import MessageToDict, ParseDict

from omni.decisioning.v1 import decisioning_pb2 as d
from omni_kit import validation
from omni_kit.errors import Violations


def to_json(spec: d.JourneySpec) -> dict[str, Any]:
    """The stored form of a spec (protobuf JSON)."""
    return MessageToDict(spec, preserving_proto_field_name=True)


def from_json(stored: dict[str, Any]) -> d.JourneySpec:
    """A spec from its stored form."""
    return ParseDict(stored, d.JourneySpec(), ignore_unknown_fields=True)


def kind_of(step: d.JourneyStep) -> str:
    """The step's kind: the name of its oneof field ("message", "wait" …)."""
    return step.WhichOneof("kind") or ""


def next_steps(step: d.JourneyStep) -> list[tuple[str, str]]:
    """(field name, step id) of every step this one can lead to (empty ids: the run ends there)."""
    kind = kind_of(step)
    if kind == "message":
        return [("next", step.message.next)]
    if kind == "wait":
        return [("next", step.wait.next)]
    if kind == "wait_for_event":
        return [("on_event", step.wait_for_event.on_event), ("on_timeout", step.wait_for_event.on_timeout)]
    if kind == "condition":
        return [("if_true", step.condition.if_true), ("if_false", step.condition.if_false)]
    if kind == "random_split":
        return [(f"branches[{i}].next", b.next) for i, b in enumerate(step.random_split.branches)]
    if kind == "update_profile":
        return [("next", step.update_profile.next)]
    if kind == "decide":
        return [("next", step.decide.next)]
    return []


def check(spec: d.JourneySpec, violations: Violations, prefix: str) -> None:
    """Add a violation (paths under prefix, e.g. "journey.spec") for every rule the proto cannot say: step ids
    unique, every next naming a step, a random split's percentages adding up to 100, a keyed match only with
    a key, a once-per-period rule with a period."""
    validation.check(spec, violations, prefix=prefix)
    ids: set[str] = set()
    for index, step in enumerate(spec.steps):
        if step.id in ids:
            violations.add(f"{prefix}.steps[{index}].id", f"step id {step.id!r} is used twice")
        ids.add(step.id)
    keyed = bool(spec.entry_rule.key_property)
    for index, step in enumerate(spec.steps):
        kind = kind_of(step)
        for name, target in next_steps(step):
            if target and target not in ids:
                violations.add(f"{prefix}.steps[{index}].{kind}.{name}", f"no step {target!r} in the journey")
            if target == step.id:
                violations.add(f"{prefix}.steps[{index}].{kind}.{name}", "a step cannot lead to itself")
        if kind == "random_split":
            total = sum(b.percent for b in step.random_split.branches)
            violations.check(
                total == 100,
                f"{prefix}.steps[{index}].random_split.branches",
                f"percentages add up to {total}, not 100",
            )
        if kind == "wait_for_event" and step.wait_for_event.match_key:
            violations.check(
                keyed,
                f"{prefix}.steps[{index}].wait_for_event.match_key",
                "the entry rule has no key_property",
            )
        if (
            kind == "condition"
            and step.condition.WhichOneof("condition") == "event_in_window"
            and step.condition.event_in_window.match_key
        ):
            violations.check(
                keyed,
                f"{prefix}.steps[{index}].condition.event_in_window.match_key",
                "the entry rule has no key_property",
            )
    for index, criterion in enumerate(spec.exit_criteria):
        if criterion.match_key:
            violations.check(
                keyed, f"{prefix}.exit_criteria[{index}].match_key", "the entry rule has no key_property"
            )
    rule = spec.entry_rule
    if rule.frequency == d.EntryRule.FREQUENCY_ONCE_PER_PERIOD:
        violations.check(
            rule.period.seconds > 0,
            f"{prefix}.entry_rule.period",
            "required (at least a second) for once per period",
        )
    if spec.enter_existing_members:
        violations.check(
            spec.entry.WhichOneof("kind") == "segment",
            f"{prefix}.enter_existing_members",
            "only a segment entry has existing members",
        )


@dataclass(frozen=True)
class Reference:
    """Something a spec names that another service owns, with the field naming it."""

    kind: str
    """"segment", "template" or "touchpoint"."""
    value: str
    field: str
    channels: tuple[int, ...] = ()
    """For a template: the channels it must have variants for."""


def references(spec: d.JourneySpec, prefix: str = "spec") -> Iterator[Reference]:
    """Every segment and template the spec names (checked at publish)."""
    if spec.entry.WhichOneof("kind") == "segment":
        yield Reference("segment", spec.entry.segment.segment_id, f"{prefix}.entry.segment.segment_id")
    if spec.entry.WhichOneof("kind") == "campaign":
        yield Reference("segment", spec.entry.campaign.segment_id, f"{prefix}.entry.campaign.segment_id")
    for index, step in enumerate(spec.steps):
        kind = kind_of(step)
        if kind == "message":
            yield Reference(
                "template",
                step.message.template_id,
                f"{prefix}.steps[{index}].message.template_id",
                tuple(step.message.channels),
            )
        elif kind == "condition" and step.condition.WhichOneof("condition") == "in_segment_id":
            yield Reference(
                "segment", step.condition.in_segment_id, f"{prefix}.steps[{index}].condition.in_segment_id"
            )


def event_types(spec: d.JourneySpec) -> set[str]:
    """The event types the spec reacts to or looks back at (kept in decisioning's read model of events)."""
    types = {criterion.event_type for criterion in spec.exit_criteria}
    if spec.entry.WhichOneof("kind") == "event":
        types.add(spec.entry.event.event_type)
    for step in spec.steps:
        kind = kind_of(step)
        if kind == "wait_for_event":
            types.add(step.wait_for_event.event_type)
        elif kind == "condition" and step.condition.WhichOneof("condition") == "event_in_window":
            types.add(step.condition.event_in_window.event_type)
    return types


def step_by_id(spec: d.JourneySpec, step_id: str) -> d.JourneyStep | None:
    """The step with the id, or None."""
    return next((step for step in spec.steps if step.id == step_id), None)
