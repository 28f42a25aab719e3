"""Domain errors and their one mapping to gRPC status with google.rpc details (AIP-193).

Domain code raises these exceptions; the error interceptor (grpc_server) turns them into a status with an
ErrorInfo (reason in UPPER_SNAKE, domain "omni.<service>") and, for bad input, one BadRequest with field
violations. Clients read them back with `status_details`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2, struct_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

_STATUS_DETAILS_KEY = "grpc-status-details-bin"

MAX_FIELD_VIOLATIONS = 20
"""Field violations an error lists at most; the rest are counted (ErrorInfo metadata OMITTED_VIOLATIONS_KEY)."""
MAX_DETAILS_BYTES = 3072
"""Bytes an error's encoded google.rpc.Status may take at most (see to_status): 4 KiB in base64 on the wire,
half of gRPC's default 8 KiB limit on a call's metadata, so that the status message and other trailers fit."""
OMITTED_VIOLATIONS_KEY = "omitted_field_violations"
"""ErrorInfo metadata: how many field violations the error found beyond those it lists."""


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: its path in the request (e.g. "identifiers[0].value") and what is wrong."""

    field: str
    description: str


@dataclass
class OmniError(Exception):
    """Base of domain errors; each subclass carries its gRPC code."""

    message: str
    reason: str = "ERROR"
    metadata: dict[str, str] = field(default_factory=dict)
    retry_after_s: float | None = None
    """When the caller may try again (a google.rpc.RetryInfo detail), if the error says."""

    code = grpc.StatusCode.UNKNOWN

    def __str__(self) -> str:
        return self.message


@dataclass
class InvalidArgument(OmniError):
    """The request is malformed; nothing was changed."""

    violations: list[FieldViolation] = field(default_factory=list)
    reason: str = "INVALID_ARGUMENT"
    code = grpc.StatusCode.INVALID_ARGUMENT


@dataclass
class NotFound(OmniError):
    """A named resource does not exist."""

    reason: str = "NOT_FOUND"
    code = grpc.StatusCode.NOT_FOUND


@dataclass
class AlreadyExists(OmniError):
    """A resource with that name or key exists already."""

    reason: str = "ALREADY_EXISTS"
    code = grpc.StatusCode.ALREADY_EXISTS


@dataclass
class FailedPrecondition(OmniError):
    """The system is not in a state where the request can be done."""

    reason: str = "FAILED_PRECONDITION"
    code = grpc.StatusCode.FAILED_PRECONDITION


@dataclass
class Aborted(OmniError):
    """The work conflicted with concurrent work (again and again) and was undone; the caller may retry."""

    reason: str = "ABORTED"
    code = grpc.StatusCode.ABORTED


@dataclass
class Unavailable(OmniError):
    """A dependency is down; the caller may retry."""

    reason: str = "UNAVAILABLE"
    code = grpc.StatusCode.UNAVAILABLE


@dataclass
class Unauthenticated(OmniError):
    """The call carries no valid credentials (no bearer token or client certificate, or a bad one)."""

    reason: str = "UNAUTHENTICATED"
    code = grpc.StatusCode.UNAUTHENTICATED


@dataclass
class ResourceExhausted(OmniError):
    """A limit was reached (open streams, a quota); the caller may retry later."""

    reason: str = "RESOURCE_EXHAUSTED"
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


@dataclass
class PermissionDenied(OmniError):
    """The caller is known but lacks the scope the call needs (named in the ErrorInfo's metadata)."""

    reason: str = "PERMISSION_DENIED"
    code = grpc.StatusCode.PERMISSION_DENIED


# Control characters: PostgreSQL cannot store NUL in text at all, and the others in a name, an id or a
# source are corruption rather than data. Free text (a reason) may keep tabs and line breaks.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_IN_FREE_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def has_control_characters(value: str, *, free_text: bool = False) -> bool:
    """Whether value holds control characters (for free text, other than tab, line feed and return)."""
    return (_CONTROL_IN_FREE_TEXT if free_text else _CONTROL).search(value) is not None


def without_control_characters(value: str) -> str:
    """Free text from outside (a server's reply) fit to store: control characters other than tab, line feed
    and return replaced by U+FFFD, the replacement character."""
    return _CONTROL_IN_FREE_TEXT.sub("\ufffd", value)


class Violations:
    """Collects field violations while validating a request, then raises them all at once."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field_path: str, description: str) -> None:
        """Record one violation."""
        self.items.append(FieldViolation(field_path, description))

    def check(self, ok: bool, field_path: str, description: str) -> bool:
        """Record a violation unless ok; return ok."""
        if not ok:
            self.add(field_path, description)
        return ok

    def names(self, field_path: str) -> bool:
        """Whether a violation names field_path already (a check that needs code adds none beside it)."""
        return any(item.field == field_path for item in self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self, message: str = "the request has invalid fields") -> None:
        """Raise InvalidArgument with every violation collected, if there are any."""
        if self.items:
            raise InvalidArgument(message=message, violations=list(self.items))


MAX_JSON_DEPTH = 32
"""Levels of objects and arrays a protobuf Struct may nest (itself the first) and still be decoded inside the
messages that carry it: protobuf decoders refuse messages nested past 100 levels, and each level of a Struct
is up to three (Struct, map entry, Value) beneath the answer's own."""

_MAX_REPORTED = 10
_UNPAIRED_SURROGATE = re.compile(r"[\ud800-\udfff]")
# A Value's tags in the encoding: struct_value (field 5) and list_value (field 6), both length-delimited, and
# number_value (field 2, 64-bit). A double is NaN or ±Infinity when all its exponent bits are set.
_STRUCT_VALUE_TAG, _LIST_VALUE_TAG = b"\x2a", b"\x32"
_NON_FINITE_DOUBLE = re.compile(rb"\x11[\x00-\xff]{6}[\xf0-\xff][\x7f\xff]")
_PROTOBUF_JSON = (struct_pb2.Struct, struct_pb2.ListValue, struct_pb2.Value)


def check_json_text(value: Any, path: str, violations: Violations) -> None:
    """Record every value of a JSON value that PostgreSQL's JSONB cannot keep or that is corrupt: object keys
    may hold no control characters, strings none but tabs and line breaks, and numbers must be finite (JSON
    has no NaN or infinity; protobuf's JSON mapping cannot even print them); with what check_json_structure
    finds at any depth (unpaired surrogates, integers past a double).

    The value is plain (str, dicts, lists) or protobuf's JSON (Struct, Value, ListValue). A bad value is
    named by its JSON path ("variables.order.skus[1]"); a bad key by the object holding it, since the key
    itself would make an unreadable path. Walked without recursion; at most ten problems are recorded.
    """
    _check_json(value, path, violations, max_depth=None, text=True)


def check_json_structure(
    value: Any, path: str, violations: Violations, *, max_depth: int = MAX_JSON_DEPTH
) -> None:
    """Record what a JSON value holds that can be neither stored nor read back: objects and arrays nested more
    than max_depth levels (the value itself is the first), numbers that are not finite (NaN, ±Infinity, or an
    integer past a double's range: JSON cannot write them, JSONB cannot store them) and strings or keys that
    are not Unicode text (an unpaired surrogate, which JSON's \\ud800 escape can produce). Unlike
    check_json_text, control characters are let through (free-form data kept in protobuf can hold them).

    The value is plain (dicts, lists, str, numbers) or protobuf's JSON (Struct, ListValue, Value). It is walked
    without recursion, so a value nested ten thousand levels is judged like one nested thirty-three: the first
    container past the limit is named by its JSON path ("properties.a.b[0]"), a number or string by its own, a
    bad key by the object holding it. At most ten problems are recorded. A protobuf value is first scanned in
    its encoding, which is enough to clear nearly all of them without walking.
    """
    if not _surely_well_formed(value, max_depth):
        _check_json(value, path, violations, max_depth=max_depth, text=False)


def _check_json(value: Any, path: str, violations: Violations, *, max_depth: int | None, text: bool) -> None:
    """The one walk of both checks: text adds control characters; max_depth None is no limit."""
    reported = 0
    # (value, its path, its level when it is an object or array)
    stack: list[tuple[Any, str, int]] = [(value, path, 1)]
    while stack and reported < _MAX_REPORTED:
        item, item_path, level = stack.pop()
        problem, children = _json_node(item, text)
        if problem is not None:
            violations.add(item_path, problem)
            reported += 1
            continue
        if children is None:
            continue
        if max_depth is not None and level > max_depth:
            violations.add(item_path, f"nests deeper than {max_depth} levels of objects and arrays")
            reported += 1
            continue
        nested: list[tuple[Any, str, int]] = []
        for key, child in children:
            if isinstance(key, int):
                nested.append((child, f"{item_path}[{key}]", level + 1))
                continue
            key_problem = _text_problem(str(key), text, free_text=False)
            if key_problem is not None:
                violations.add(item_path, f"a key {key_problem.removeprefix('is ').removeprefix('holds ')}")
                reported += 1
            else:
                nested.append((child, f"{item_path}.{key}" if item_path else key, level + 1))
        stack.extend(reversed(nested))  # popped in document order


def _surely_well_formed(value: Any, max_depth: int) -> bool:
    """Whether a protobuf value's encoding shows it cannot break the rules: fewer nested objects and arrays
    than the limit (each begins with one of two tag bytes) and no double with every exponent bit set.
    Protobuf strings are valid UTF-8, so they hold no surrogate."""
    if not isinstance(value, _PROTOBUF_JSON):
        return False
    encoded = value.SerializeToString()
    nested = encoded.count(_STRUCT_VALUE_TAG) + encoded.count(_LIST_VALUE_TAG)
    return nested < max_depth and _NON_FINITE_DOUBLE.search(encoded) is None


def _json_node(value: Any, text: bool) -> tuple[str | None, Any]:
    """What is wrong with a scalar, or a container's (key or index, child) pairs; (None, None) for a fine
    scalar."""
    if isinstance(value, struct_pb2.Value):
        kind = value.WhichOneof("kind")
        if kind == "struct_value":
            value = value.struct_value
        elif kind == "list_value":
            value = value.list_value
        elif kind == "number_value":
            value = value.number_value
        elif kind == "string_value":
            value = value.string_value
        else:
            return None, None
    if isinstance(value, struct_pb2.Struct):
        return None, value.fields.items()
    if isinstance(value, struct_pb2.ListValue):
        return None, enumerate(value.values)
    if isinstance(value, Mapping):
        return None, value.items()
    if isinstance(value, list | tuple):
        return None, enumerate(value)
    if isinstance(value, str):
        return _text_problem(value, text, free_text=True), None
    if isinstance(value, bool):
        return None, None
    if isinstance(value, float):
        return (None if math.isfinite(value) else "must be a finite number"), None
    if isinstance(value, int):
        try:
            float(value)
        except OverflowError:
            return "is too large a number", None
    return None, None


def _text_problem(value: str, text: bool, *, free_text: bool) -> str | None:
    if not value.isascii() and _UNPAIRED_SURROGATE.search(value):
        return "is not Unicode text (an unpaired surrogate)"
    if text and has_control_characters(value, free_text=free_text):
        return "holds control characters"
    return None


_MAX_MESSAGE_CHARS = 512
_MAX_VIOLATION_CHARS = 256


def capped(
    violations: Sequence[FieldViolation], limit: int = MAX_FIELD_VIOLATIONS
) -> tuple[list[FieldViolation], int]:
    """The violations an answer lists (the first `limit`, each field and description cut to 256 characters)
    and how many it leaves out. Every list of field violations sent to a caller, in an error's details or in
    a batch's per-item results, goes through here, so that one bad request cannot make an answer of any size.
    """
    kept = [
        FieldViolation(_cut(v.field, _MAX_VIOLATION_CHARS), _cut(v.description, _MAX_VIOLATION_CHARS))
        for v in violations[:limit]
    ]
    return kept, len(violations) - len(kept)


def listed(
    violations: Sequence[FieldViolation], *, omitted: int = 0, limit: int = MAX_FIELD_VIOLATIONS
) -> list[FieldViolation]:
    """At most `limit` violations for one item of a batch's answer (an event, an identifier set): the first
    ones (`capped`) and, when some are left out, a last one (field empty) counting them; `omitted` adds those
    left out already (by the service the violations came from). A list it made passes through unchanged."""
    left_out = omitted + max(0, len(violations) - limit)
    if not left_out:
        return capped(violations, limit)[0]
    kept, rest = capped(violations, limit - 1)
    return [*kept, FieldViolation("", f"{rest + omitted} more violations left out")]


def _cut(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 1] + "\u2026"


def to_status(error: OmniError, domain: str) -> grpc.Status:
    """Build the gRPC status, with ErrorInfo and BadRequest details, for a domain error.

    The details travel in a trailer (grpc-status-details-bin, base64 on the wire), and gRPC refuses trailers
    past 8 KiB (soft) or 16 KiB (hard): the caller then sees RESOURCE_EXHAUSTED, not the error. So an error
    lists at most MAX_FIELD_VIOLATIONS violations (`capped`), first ones first, and fewer when they would make
    the encoded Status larger than MAX_DETAILS_BYTES; how many it left out is in the ErrorInfo's metadata
    (OMITTED_VIOLATIONS_KEY) and the message. The message is cut to 512 characters.
    """
    violations = error.violations if isinstance(error, InvalidArgument) else []
    kept, omitted = capped(violations)
    message = _cut(error.message, _MAX_MESSAGE_CHARS)
    while True:
        status = _status(error, domain, message, kept, omitted)
        if not kept or status.ByteSize() <= MAX_DETAILS_BYTES:
            break
        # Long paths or descriptions: drop violations from the end until the status fits.
        dropped = max(1, len(kept) // 4)
        kept, omitted = kept[:-dropped], omitted + dropped
    return rpc_status.to_status(status)


def _status(
    error: OmniError, domain: str, message: str, violations: Sequence[FieldViolation], omitted: int
) -> status_pb2.Status:
    details: list[any_pb2.Any] = []
    metadata = dict(error.metadata)
    if omitted:
        metadata[OMITTED_VIOLATIONS_KEY] = str(omitted)
        message = f"{message} ({len(violations)} field violations listed, {omitted} more left out)"
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=domain, metadata=metadata))
    details.append(info)
    if violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        details.append(packed)
    if error.retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after_s * 1e9))
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(retry)
    return status_pb2.Status(code=error.code.value[0], message=message, details=details)


def internal_status(message: str = "internal error") -> grpc.Status:
    """The status for an unexpected failure; no internals leak to the caller."""
    return rpc_status.to_status(status_pb2.Status(code=code_pb2.INTERNAL, message=message))


@dataclass
class StatusDetails:
    """The rich details of a failed call, as a client sees them."""

    code: grpc.StatusCode
    message: str
    error_info: error_details_pb2.ErrorInfo | None = None
    field_violations: list[FieldViolation] = field(default_factory=list)
    retry_delay_s: float | None = None
    omitted_violations: int = 0
    """Field violations the server found but did not list (it lists at most MAX_FIELD_VIOLATIONS)."""

    @property
    def fields(self) -> set[str]:
        """The paths of the violated fields."""
        return {v.field for v in self.field_violations}


def status_details(error: grpc.aio.AioRpcError | grpc.RpcError) -> StatusDetails:
    """Parse the google.rpc details out of a failed call."""
    code = error.code()
    message = error.details() or ""
    result = StatusDetails(code=code, message=message)
    metadata = error.trailing_metadata() or ()
    for key, value in metadata:
        if key != _STATUS_DETAILS_KEY:
            continue
        status = status_pb2.Status.FromString(value if isinstance(value, bytes) else value.encode())
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                result.error_info = info
                omitted = info.metadata.get(OMITTED_VIOLATIONS_KEY, "0")
                result.omitted_violations = int(omitted) if omitted.isdigit() else 0
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                result.field_violations = [
                    FieldViolation(v.field, v.description) for v in bad.field_violations
                ]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                result.retry_delay_s = retry.retry_delay.ToNanoseconds() / 1e9
    return result
