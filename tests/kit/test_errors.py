"""Domain errors map to gRPC status codes with ErrorInfo and BadRequest details."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from omni_kit.errors import (
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Violations,
    to_status,
)


def _details(status: grpc.Status) -> status_pb2.Status:
    (key, value) = status.trailing_metadata[0]
    assert key == "grpc-status-details-bin"
    return status_pb2.Status.FromString(value)


def test_invalid_argument_carries_field_violations_and_error_info() -> None:
    error = InvalidArgument(
        message="bad request", violations=[FieldViolation("identifiers[0].value", "not an email address")]
    )
    status = to_status(error, "omni.identity")
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    details = _details(status)
    info = error_details_pb2.ErrorInfo()
    assert details.details[0].Unpack(info)
    assert (info.reason, info.domain) == ("INVALID_ARGUMENT", "omni.identity")
    bad = error_details_pb2.BadRequest()
    assert details.details[1].Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("identifiers[0].value", "not an email address")
    ]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (NotFound(message="no such person"), grpc.StatusCode.NOT_FOUND),
        (AlreadyExists(message="taken", reason="SEGMENT_NAME_TAKEN"), grpc.StatusCode.ALREADY_EXISTS),
    ],
)
def test_other_errors_map_to_their_codes(error: NotFound | AlreadyExists, code: grpc.StatusCode) -> None:
    status = to_status(error, "omni.test")
    assert status.code == code
    details = _details(status)
    assert len(details.details) == 1
    info = error_details_pb2.ErrorInfo()
    details.details[0].Unpack(info)
    assert info.reason == error.reason


def test_violations_collect_then_raise_once() -> None:
    violations = Violations()
    assert violations.check(True, "a", "fine")
    assert not violations.check(False, "b", "missing")
    violations.add("c", "too long")
    with pytest.raises(InvalidArgument) as raised:
        violations.raise_if_any()
    assert [v.field for v in raised.value.violations] == ["b", "c"]


def test_no_violations_raise_nothing() -> None:
    Violations().raise_if_any()
