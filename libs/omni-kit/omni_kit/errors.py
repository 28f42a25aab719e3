"""Domain errors and their one mapping to gRPC status with google.rpc details (AIP-193).

Domain code raises these exceptions; the error interceptor (grpc_server) turns them into a status with an
ErrorInfo (reason in UPPER_SNAKE, domain "omni.<service>") and, for bad input, one BadRequest with field
violations. Clients read them back with `status_details`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2, struct_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

_STATUS_DETAILS_KEY = "grpc-status-details-bin"


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

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self, message: str = "the request has invalid fields") -> None:
        """Raise InvalidArgument with every violation collected, if there are any."""
        if self.items:
            raise InvalidArgument(message=message, violations=list(self.items))


def check_json_text(value: Any, path: str, violations: Violations) -> None:
    """Record every value of a JSON value that PostgreSQL's JSONB cannot keep or that is corrupt: object keys
    may hold no control characters, strings none but tabs and line breaks, and numbers must be finite (JSON
    has no NaN or infinity; protobuf's JSON mapping cannot even print them).

    The value is plain (str, dicts, lists) or protobuf's JSON (Struct, Value, ListValue). A bad value is
    named by its JSON path ("variables.order.skus[1]"); a bad key by the object holding it, since the key
    itself would make an unreadable path.
    """
    if isinstance(value, struct_pb2.Value):
        kind = value.WhichOneof("kind")
        if kind == "string_value":
            value = value.string_value
        elif kind == "struct_value":
            value = value.struct_value
        elif kind == "list_value":
            value = value.list_value
        elif kind == "number_value":
            value = value.number_value
        else:
            return
    if isinstance(value, float):
        if not math.isfinite(value):
            violations.add(path, "must be a finite number")
        return
    if isinstance(value, str):
        if has_control_characters(value, free_text=True):
            violations.add(path, "holds control characters")
        return
    # A Struct's fields and a ListValue's values are protobuf containers, neither a Mapping nor a Sequence.
    if isinstance(value, struct_pb2.Struct):
        entries: Any = value.fields.items()
    elif isinstance(value, Mapping):
        entries = value.items()
    else:
        if isinstance(value, struct_pb2.ListValue):
            value = value.values
        elif not isinstance(value, list | tuple):
            return  # a number, a boolean or null
        for index, item in enumerate(value):
            check_json_text(item, f"{path}[{index}]", violations)
        return
    for key, item in entries:
        if has_control_characters(str(key)):
            violations.add(path, "a key holds control characters")
        else:
            check_json_text(item, f"{path}.{key}", violations)


def to_status(error: OmniError, domain: str) -> grpc.Status:
    """Build the gRPC status, with ErrorInfo and BadRequest details, for a domain error."""
    details: list[any_pb2.Any] = []
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=domain, metadata=error.metadata))
    details.append(info)
    if isinstance(error, InvalidArgument) and error.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in error.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        details.append(packed)
    status = status_pb2.Status(code=error.code.value[0], message=error.message, details=details)
    return rpc_status.to_status(status)


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
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                result.field_violations = [
                    FieldViolation(v.field, v.description) for v in bad.field_violations
                ]
    return result
