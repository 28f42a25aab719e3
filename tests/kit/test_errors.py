"""Domain errors map to gRPC status codes with ErrorInfo and BadRequest details."""

from __future__ import annotations

import json
import math
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2, status_pb2

from omni_kit.errors import (
    MAX_DETAILS_BYTES,
    MAX_FIELD_VIOLATIONS,
    OMITTED_VIOLATIONS_KEY,
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Violations,
    check_json_structure,
    check_json_text,
    has_control_characters,
    listed,
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


def test_control_characters_are_told_apart_from_free_text() -> None:
    assert has_control_characters("a\x00b") and has_control_characters("line\nbreak")
    assert not has_control_characters("line\nbreak\ttab\r", free_text=True)
    assert has_control_characters("bell\x07", free_text=True) and has_control_characters(
        "nul\x00", free_text=True
    )
    assert not has_control_characters("Zoë Ångström, 12 rue de l'Église")


def test_json_text_names_every_bad_string_and_key_in_plain_and_protobuf_json() -> None:
    plain: dict[str, Any] = {
        "a": ["ok", "x\x00", {"k\x01": 1}],
        "b": {"c": "tab\tand\nline"},
        "d": 3,
        "e\x00": None,
    }
    struct = struct_pb2.Struct()
    struct.update(plain)
    for value in (plain, struct):
        violations = Violations()
        check_json_text(value, "context", violations)
        assert sorted(v.field for v in violations.items) == ["context", "context.a[1]", "context.a[2]"]


def test_json_numbers_must_be_finite_in_plain_and_protobuf_json() -> None:
    plain: dict[str, Any] = {"a": [1.5, math.nan], "b": {"c": math.inf}, "d": -math.inf, "e": 7}
    struct = struct_pb2.Struct()
    struct.update(plain)
    for value in (plain, struct):
        violations = Violations()
        check_json_text(value, "variables", violations)
        assert sorted(v.field for v in violations.items) == ["variables.a[1]", "variables.b.c", "variables.d"]


def _nested(levels: int, leaf: Any = 1) -> Any:
    value = leaf
    for index in range(levels):
        value = {"a": value} if index % 2 == 0 else [value]
    return value


def _structure(value: Any, path: str = "properties", max_depth: int = 4) -> list[tuple[str, str]]:
    violations = Violations()
    check_json_structure(value, path, violations, max_depth=max_depth)
    return [(v.field, v.description) for v in violations.items]


def test_json_structure_allows_the_limit_and_names_the_first_container_past_it() -> None:
    assert _structure({"x": {"y": [{"z": 1}]}}) == []
    problems = _structure({"ok": 1, "x": {"y": [{"z": {"too": "deep"}}]}})
    assert problems == [("properties.x.y[0].z", "nests deeper than 4 levels of objects and arrays")]
    struct = struct_pb2.Struct()
    struct.update({"ok": 1, "x": {"y": [{"z": {"too": "deep"}}]}})
    assert _structure(struct) == problems


def test_json_structure_judges_ten_thousand_levels_without_recursion() -> None:
    deep = _nested(10_000)
    assert len(_structure(deep, max_depth=32)) == 1
    # The text check shares the walk: as deep as that, it finds the one bad string at the bottom.
    violations = Violations()
    check_json_text(_nested(10_000, leaf="nul\x00"), "x", violations)
    assert len(violations.items) == 1 and violations.items[0].field.startswith("x[0].a[0]")
    # From a parser that does not recurse either: the standard one gives up far earlier.
    assert _structure(json.loads("[" * 900 + "]" * 900), "body", max_depth=32)[0][0] == "body" + "[0]" * 32


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf, 10**400])
def test_json_structure_refuses_numbers_json_cannot_write(number: float) -> None:
    plain: dict[str, Any] = {"price": 1.5, "basket": {"items": [1, number]}}
    assert [field for field, _ in _structure(plain)] == ["properties.basket.items[1]"]
    if isinstance(number, float):
        struct = struct_pb2.Struct()
        struct.update(plain)
        assert [field for field, _ in _structure(struct)] == ["properties.basket.items[1]"]


def test_json_structure_refuses_unpaired_surrogates_in_strings_and_keys() -> None:
    value = json.loads('{"name": "a\\ud800b", "pair": "\\ud83d\\ude00", "nested": {"k\\udc00": 1}}')
    assert [field for field, _ in _structure(value, "")] == ["name", "nested"]


def test_json_structure_reports_at_most_ten_problems_and_passes_plain_values() -> None:
    assert len(_structure([math.nan] * 100)) == 10
    fine: Any
    for fine in ("text", 3, 2.5, True, None, [], {}):
        assert _structure(fine) == []
    value = struct_pb2.Value(number_value=math.nan)
    assert _structure(value) == [("properties", "must be a finite number")]


def test_an_error_lists_at_most_the_capped_violations_and_counts_the_rest() -> None:
    error = InvalidArgument(
        message="bad request",
        violations=[
            FieldViolation(f"events[{i}].identifiers[0].value", "is a placeholder") for i in range(5000)
        ],
    )
    status = to_status(error, "omni.profile")
    details = _details(status)
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    details.details[0].Unpack(info)
    details.details[1].Unpack(bad)
    assert [v.field for v in bad.field_violations] == [
        f"events[{i}].identifiers[0].value" for i in range(MAX_FIELD_VIOLATIONS)
    ]
    assert info.metadata[OMITTED_VIOLATIONS_KEY] == str(5000 - MAX_FIELD_VIOLATIONS)
    assert "left out" in details.message
    assert details.ByteSize() <= MAX_DETAILS_BYTES


def test_long_violations_are_cut_and_fewer_listed_so_the_details_stay_within_their_bytes() -> None:
    error = InvalidArgument(
        message="m" * 10_000, violations=[FieldViolation("f" * 1000, "d" * 1000) for _ in range(50)]
    )
    details = _details(to_status(error, "omni.profile"))
    assert details.ByteSize() <= MAX_DETAILS_BYTES
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    details.details[0].Unpack(info)
    details.details[1].Unpack(bad)
    assert 0 < len(bad.field_violations) < 20
    assert all(len(v.field) <= 256 and len(v.description) <= 256 for v in bad.field_violations)
    assert int(info.metadata[OMITTED_VIOLATIONS_KEY]) == 50 - len(bad.field_violations)


def test_an_error_within_the_cap_lists_everything_and_says_nothing_left_out() -> None:
    error = InvalidArgument(message="bad", violations=[FieldViolation(f"f{i}", "bad") for i in range(3)])
    details = _details(to_status(error, "omni.profile"))
    info = error_details_pb2.ErrorInfo()
    details.details[0].Unpack(info)
    assert OMITTED_VIOLATIONS_KEY not in info.metadata and details.message == "bad"


def test_a_batch_items_violations_are_listed_up_to_the_cap_with_a_count_of_the_rest() -> None:
    many = [FieldViolation(f"identifiers[{i}].value", "is a placeholder") for i in range(50)]
    shown = listed(many)
    assert len(shown) == MAX_FIELD_VIOLATIONS
    assert shown[:-1] == many[: MAX_FIELD_VIOLATIONS - 1]
    assert shown[-1] == FieldViolation("", f"{50 - MAX_FIELD_VIOLATIONS + 1} more violations left out")
    assert listed(shown) == shown
    # Left out upstream (identity listed 20 of 100): counted with the rest.
    assert listed(many[:20], omitted=80)[-1].description == "81 more violations left out"
    assert listed(many[:3]) == many[:3]
