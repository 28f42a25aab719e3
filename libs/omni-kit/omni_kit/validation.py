"""Request validation: the constraints a request's proto declares (protovalidate), as field violations.

The protos say what a well-formed request is, beside each field: lengths, ranges, patterns, required fields,
unique items (`(buf.validate.field)` options, see protos/README.md), with the house rules for text in
omni/common/v1/rules.proto (no control characters, not blank). protovalidate checks them; this module turns
its violations into the one error shape every service answers with: InvalidArgument listing every bad field
by its path in the request, "journey.channels[1]", the same paths the hand-written checks use.

What a proto cannot say (a token this service issued, the size of a Struct, whether a template parses) stays
in the servicer's checks, which record into the same Violations so that a caller learns everything that is
wrong in one round trip:

    violations = check(request)        # what the proto declares
    ...                                # the checks that need code
    violations.raise_if_any()

or, when the proto says it all, `validate(request)`. An update (AIP-134) is checked with `check_update`,
which also reads its update mask and leaves out what the proto says of the fields the mask does not name.

protovalidate reads a list whole before it can tell it is too long, and a request of a few megabytes can
hold a million small items (half a minute of protovalidate, with a violation for each): a servicer taking
long lists checks their counts first, with `check_counts`, and the rest only when they pass. Code that must
know a declared limit (a hot path's screen) reads it with `field_rules` rather than writing it again.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence

from buf.validate import validate_pb2
from google.protobuf.descriptor import Descriptor
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message
from protovalidate import Validator, Violation

from omni_kit.errors import Violations

# One validator for the process: it compiles each message type's rules once and keeps them.
_VALIDATOR = Validator()


def field_path(violation: Violation) -> str:
    """The violation's field as a request path: fields joined by dots, list items by index
    ("journey.channels[1]"), map entries by key ("variables.coupon")."""
    parts: list[str] = []
    path = violation.proto.field
    for element in path.elements if path is not None else ():
        name = element.field_name
        subscript = element.subscript
        if subscript is None:
            parts.append(name)
        elif subscript.field == "index":
            parts.append(f"{name}[{subscript.value}]")
        else:
            parts.append(
                f"{name}.{str(subscript.value).lower() if subscript.field == 'bool_key' else subscript.value}"
            )
    return ".".join(parts)


def check(request: Message, violations: Violations | None = None, *, prefix: str = "") -> Violations:
    """Record a violation for every constraint of request's proto that request breaks; return the collector.

    prefix names where request sits in a larger request ("requests[3]"), for messages checked one by one.
    """
    collected = violations if violations is not None else Violations()
    for violation in _VALIDATOR.collect_violations(request):
        path = field_path(violation)
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        description = violation.proto.message or violation.proto.rule_id
        if violation.proto.for_key:
            description = f"a key {description}"
        collected.add(path, description)
    return collected


def validate(request: Message) -> None:
    """Raise InvalidArgument listing every constraint of request's proto that request breaks."""
    check(request).raise_if_any()


def field_rules(message_type: type[Message], field: str) -> validate_pb2.FieldRules:
    """The constraints message_type's proto declares on one of its fields (empty if none)."""
    options = message_type.DESCRIPTOR.fields_by_name[field].GetOptions()
    rules: validate_pb2.FieldRules = options.Extensions[validate_pb2.field]
    return rules


def check_counts(request: Message, violations: Violations | None = None, *, prefix: str = "") -> Violations:
    """Record a violation for each list field of request holding more items than its proto's max_items, in
    protovalidate's words; return the collector. Only request's own fields are counted, not those of the
    messages it holds, and no item is read."""
    collected = violations if violations is not None else Violations()
    for name, most in _max_items(request.DESCRIPTOR):
        if len(getattr(request, name)) > most:
            collected.add(f"{prefix}.{name}" if prefix else name, f"must contain no more than {most} item(s)")
    return collected


@functools.cache
def _max_items(descriptor: Descriptor) -> tuple[tuple[str, int], ...]:
    limits = []
    for field in descriptor.fields:
        rules = field.GetOptions().Extensions[validate_pb2.field]
        if rules.HasField("repeated") and rules.repeated.HasField("max_items"):
            limits.append((field.name, rules.repeated.max_items))
    return tuple(limits)


def check_update(
    request: Message,
    resource: str,
    mask: FieldMask,
    updatable: Sequence[str],
    *,
    keep: Collection[str] = ("id",),
) -> tuple[set[str], Violations]:
    """Check an Update request (AIP-134): the paths of its update mask, and what its proto declares about
    the fields those paths name.

    `resource` is the request's field holding the resource ("offer"); `updatable` the resource's fields an
    update may change. "*" or an empty mask means all of them; any other path that is not one of them is a
    violation at "update_mask.paths[i]". The proto's constraints are checked on the whole request, and a
    violation of a resource field the mask leaves out is dropped (an update sends only what it changes, so an
    unset name is not "blank"); those of `keep` (the resource's id) and outside the resource always count.
    Return the paths and the violations (more may be added before raise_if_any()).
    """
    violations = Violations()
    paths: set[str] = set()
    for index, path in enumerate(mask.paths or ["*"]):
        if path == "*":
            paths.update(updatable)
        elif path in updatable:
            paths.add(path)
        else:
            violations.add(
                f"update_mask.paths[{index}]",
                f"{path!r} cannot be changed; the fields an update may change: {', '.join(updatable)} (or *)",
            )
    counted = {*paths, *keep}
    for item in check(request).items:
        head, _, rest = item.field.partition(".")
        if head == resource and rest:
            name = rest.split(".", 1)[0].split("[", 1)[0]
            if name not in counted:
                continue
        violations.items.append(item)
    return paths, violations
