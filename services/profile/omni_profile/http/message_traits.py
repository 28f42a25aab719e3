"""The traits a Segment message carries: which an identify call sets, and which are dropped and why.

A bad trait costs only itself: an identify with `{"email": "not an email", "first_name": "Bob"}` sets
first_name, and the answer names traits.email as dropped (a warning, not an error). An identify's traits are
its `traits`, over those of `context.traits` (RudderStack's libraries send them there only; analytics.js sends
the user's known traits there on every call). Each is judged by SetTraits' rules, one by one: a name of 1 to
128 characters without control characters, a value that can be stored (finite numbers, nested at most as deep
as a Struct may be, no control characters but tabs and line breaks) and, for the well-known traits, of their
type (trait_schema).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from omni.profile.v1 import profile_pb2
from omni_kit.errors import (
    FieldViolation,
    InvalidArgument,
    Violations,
    check_json_structure,
    check_json_text,
    has_control_characters,
)
from omni_profile import validation
from omni_profile.http.json_sizes import dropped
from omni_profile.trait_schema import trait_problems

_NIL_PERSON = str(uuid.UUID(int=0))

TRAIT_SOURCES = ("context.traits", "traits")
"""Where an identify call's traits come from, the later winning."""


def problems(name: str, value: Any, prefix: str) -> list[FieldViolation]:
    """What is wrong with one trait (empty when it can be set), with its path under prefix."""
    path = f"{prefix}.{name}"
    if not name.strip():
        return [FieldViolation(prefix, "trait names must not be empty")]
    if len(name) > validation.MAX_TRAIT_NAME:
        return [FieldViolation(prefix, f"trait name {name[:32]}… is longer than {validation.MAX_TRAIT_NAME}")]
    if has_control_characters(name):
        return [FieldViolation(prefix, "a trait name holds control characters")]
    violations = Violations()
    # The trait is one level inside the traits' Struct.
    check_json_structure(value, path, violations, max_depth=validation.MAX_STRUCT_DEPTH - 1)
    if not violations:
        check_json_text(value, path, violations)
    if not violations:
        for problem in trait_problems({name: value}).values():
            violations.add(path, problem)
    return violations.items


def identify_traits(message: Mapping[str, Any]) -> tuple[dict[str, Any], list[FieldViolation]]:
    """The traits an identify call sets, and the warnings for those dropped."""
    kept: dict[str, Any] = {}
    warnings: list[FieldViolation] = []
    for prefix in TRAIT_SOURCES:
        values = _at(message, prefix)
        for name, value in values.items():
            found = problems(name, value, prefix)
            if found:
                warnings.extend(dropped(v.field, v.description) for v in found)
            else:
                kept[name] = value
    return kept, warnings


def _at(message: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    value: Any = message
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value if isinstance(value, Mapping) else {}


def set_traits_violations(traits: dict[str, Any], source: str) -> list[FieldViolation]:
    """What SetTraits would refuse in the traits an identify call sets (as a whole: their size …)."""
    request = profile_pb2.SetTraitsRequest(person_id=_NIL_PERSON, source=source)
    try:
        request.traits.update(traits)
        validation.validate_set_traits(request)
    except InvalidArgument as refused:
        return refused.violations
    except (ValueError, TypeError) as error:
        return [FieldViolation("traits", f"cannot be stored: {error}")]
    return []
