"""The identifiers of a Segment message: userId, anonymousId, an alias call's previousId, the device id, and the
email and phone among its traits; each remembered with the message field it came from."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omni.common.v1 import common_pb2
from omni.profile.v1 import profile_pb2
from omni_kit.errors import FieldViolation, Violations
from omni_profile.http.json_sizes import dropped
from omni_profile.trait_schema import trait_problems


def previous_id(message: Any, expected_type: str | None = None) -> str | None:
    """The previousId of an alias message as a string, when it has a usable one."""
    if not isinstance(message, dict) or message.get("type", expected_type) != "alias":
        return None
    return id_value(message.get("previousId"), "previousId", Violations())


def guess_previous_id_type(message: Mapping[str, Any]) -> str:
    """The type of an alias call's previousId when identity was not asked.

    analytics.js sends the cookie's anonymousId as previousId along with it; any other previousId is taken
    for a former user id.
    """
    previous = id_value(message.get("previousId"), "previousId", Violations())
    anonymous_id = id_value(message.get("anonymousId"), "anonymousId", Violations())
    return "anonymous_id" if previous is not None and previous == anonymous_id else "user_id"


def id_value(value: Any, path: str, violations: Violations) -> str | None:
    """A user-supplied id (string or number, as Segment allows); None when absent or empty."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        violations.add(path, "must be a string or a number")
        return None
    return value if isinstance(value, str) else str(value)


def add(
    event: profile_pb2.Event,
    message: Mapping[str, Any],
    kind: str | None,
    context: Mapping[str, Any],
    violations: Violations,
    previous_id_type: str | None,
    warnings: list[FieldViolation],
) -> list[str]:
    """Add the message's identifiers to the event; return the message field each one came from.

    An email or phone among the traits that is not one is left out (a warning), not the message.
    """
    user_id = id_value(message.get("userId"), "userId", violations)
    anonymous_id = id_value(message.get("anonymousId"), "anonymousId", violations)
    found: list[tuple[str, str, str]] = []
    if user_id is not None:
        found.append(("user_id", user_id, "userId"))
    if anonymous_id is not None:
        found.append(("anonymous_id", anonymous_id, "anonymousId"))
    if kind == "alias":
        previous = id_value(message.get("previousId"), "previousId", violations)
        if user_id is None and "userId" not in {v.field for v in violations.items}:
            violations.add("userId", "is required for alias")
        if previous is None:
            violations.add("previousId", "is required for alias")
        else:
            found.append((previous_id_type or guess_previous_id_type(message), previous, "previousId"))
    elif user_id is None and anonymous_id is None and not bad(violations, "userId", "anonymousId"):
        violations.add("userId", "userId or anonymousId is required")
    context_traits = context.get("traits")
    sources: list[tuple[Any, str]] = [(context_traits, "context.traits")]
    if kind == "identify":
        sources.insert(0, (message.get("traits"), "traits"))
    for values, prefix in sources:
        if not isinstance(values, dict):
            continue
        for name in ("email", "phone"):
            value = values.get(name)
            if value is None or value == "":
                continue
            problems = trait_problems({name: value})
            if problems:
                warnings.append(dropped(f"{prefix}.{name}", problems[name]))
            else:
                found.append((name, value, f"{prefix}.{name}"))
    device = context.get("device")
    if isinstance(device, dict):
        device_id = id_value(device.get("id"), "context.device.id", violations)
        if device_id is not None:
            found.append(("device_id", device_id, "context.device.id"))
    origins: list[str] = []
    seen: set[tuple[str, str]] = set()
    for type_, value, origin in found:
        if (type_, value) in seen:
            continue
        seen.add((type_, value))
        event.identifiers.append(common_pb2.Identifier(type=type_, value=value))
        origins.append(origin)
    return origins


def bad(violations: Violations, *fields: str) -> bool:
    """Whether one of these fields has a violation already."""
    return any(v.field in fields for v in violations.items)
