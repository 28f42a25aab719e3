"""Requests carrying extreme values, built from the proto descriptors, for every RPC of a service.

Each request is one small change of a plausible request: a string holding a NUL (ids, names, map keys,
Struct strings and keys), the largest and smallest numbers of the field's type, a Duration or Timestamp at
the edge of what protobuf can carry (seconds of ±2^63-1) and just past what its JSON form allows. A service
must answer each with a proper status (OK or a refusal), never INTERNAL or UNKNOWN: these are the values a
fuzzer finds first, and those a database, ``timedelta`` or ``datetime`` cannot hold.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor, message, message_factory, struct_pb2
from google.protobuf.descriptor import FieldDescriptor

INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1
UINT64_MAX = 2**64 - 1
UINT32_MAX = 2**32 - 1
NUL = "a\x00b"

_DURATION = "google.protobuf.Duration"
_TIMESTAMP = "google.protobuf.Timestamp"
_STRUCT = "google.protobuf.Struct"
_VALUE = "google.protobuf.Value"
_WELL_KNOWN = (
    _DURATION,
    _TIMESTAMP,
    _STRUCT,
    _VALUE,
    "google.protobuf.ListValue",
    "google.protobuf.FieldMask",
)


@dataclass(frozen=True)
class Case:
    """One extreme request: which field was pushed to which value."""

    method: str
    path: str
    value: str
    request: message.Message

    def __str__(self) -> str:
        return f"{self.method} {self.path}={self.value}"


Mutation = Callable[[message.Message], None]
_NONE: Mapping[str, str] = {}


def _plausible_string(field: FieldDescriptor, known: Mapping[str, str]) -> str:
    name = field.name
    if name in known:
        return known[name]
    if name.endswith("page_token"):
        return ""  # only the service's own tokens are plausible
    if name.endswith("_id") or name.endswith("_ids") or name == "id":
        return str(uuid.uuid4())
    if "email" in name:
        return "ada@example.com"
    return "x"


def _plausible_scalar(field: FieldDescriptor, known: Mapping[str, str] = _NONE) -> Any:
    if field.type == FieldDescriptor.TYPE_STRING:
        return _plausible_string(field, known)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return b"x"
    if field.type == FieldDescriptor.TYPE_BOOL:
        return True
    if field.type == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        values = [v.number for v in field.enum_type.values if v.number != 0]
        return values[0] if values else 0
    if field.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return 1.0
    return 1


def plausible(
    message_type: type[message.Message] | descriptor.Descriptor, known: Mapping[str, str] = _NONE
) -> message.Message:
    """A request with every field set to an ordinary value (the first field of each oneof only); a string
    field named in known (e.g. "person_id") gets that value."""
    desc = message_type if isinstance(message_type, descriptor.Descriptor) else message_type.DESCRIPTOR
    result = _new(desc)
    _fill(result, 0, known)
    return result


def _new(desc: Any) -> message.Message:
    return message_factory.GetMessageClass(desc)()


def _fill(target: message.Message, depth: int, known: Mapping[str, str] = _NONE) -> None:
    desc = target.DESCRIPTOR
    if desc.full_name == _DURATION:
        target.seconds = 3600  # type: ignore[attr-defined]
        return
    if desc.full_name == _TIMESTAMP:
        target.GetCurrentTime()  # type: ignore[attr-defined]
        return
    if desc.full_name in _WELL_KNOWN:
        return
    if depth > 4:
        return
    for field in desc.fields:
        oneof = field.containing_oneof
        if oneof is not None and oneof.fields[0] is not field:
            continue
        _set_plausible(target, field, depth, known)


def _set_plausible(target: message.Message, field: Any, depth: int, known: Mapping[str, str]) -> None:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key = field.message_type.fields_by_name["key"]
        value = field.message_type.fields_by_name["value"]
        container = getattr(target, field.name)
        if value.message_type is None:
            container[_plausible_scalar(key)] = _plausible_scalar(value, known)
        else:
            _fill(container[_plausible_scalar(key)], depth + 1, known)
        return
    if field.is_repeated:
        container = getattr(target, field.name)
        if field.message_type is not None:
            _fill(container.add(), depth + 1, known)
        else:
            container.append(_plausible_scalar(field, known))
        return
    if field.message_type is not None:
        _fill(getattr(target, field.name), depth + 1, known)
        return
    setattr(target, field.name, _plausible_scalar(field, known))


def _extremes(field: FieldDescriptor) -> list[tuple[str, Any]]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return [("NUL", NUL), ("10k chars", "x" * 10_000)]
    if kind in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return [("int32 max", INT32_MAX), ("int32 min", -INT32_MAX - 1), ("-1", -1)]
    if kind in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return [("int64 max", INT64_MAX), ("int64 min", -INT64_MAX - 1), ("-1", -1)]
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return [("uint32 max", UINT32_MAX)]
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return [("uint64 max", UINT64_MAX)]
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return [("nan", float("nan")), ("inf", float("inf")), ("-1e308", -1e308)]
    if kind == FieldDescriptor.TYPE_ENUM:
        return [("unknown enum", 999)]
    return []


def _time_extremes() -> list[tuple[str, dict[str, int]]]:
    return [
        ("+2^63-1 s", {"seconds": INT64_MAX}),
        ("-2^63+1 s", {"seconds": -INT64_MAX}),
        ("year 10000", {"seconds": 253_402_300_800}),
        ("year 0", {"seconds": -62_135_596_801}),
        ("bad nanos", {"seconds": 1, "nanos": -5}),
    ]


def _struct_extremes() -> list[tuple[str, Callable[[struct_pb2.Struct], None]]]:
    def nul_string(struct: struct_pb2.Struct) -> None:
        struct.update({"k": NUL})

    def nul_key(struct: struct_pb2.Struct) -> None:
        struct.update({NUL: "v"})

    def nan(struct: struct_pb2.Struct) -> None:
        struct.fields["n"].number_value = float("nan")

    return [("NUL string", nul_string), ("NUL key", nul_key), ("NaN", nan)]


def _mutations(desc: descriptor.Descriptor, path: str, depth: int) -> Iterator[tuple[str, str, Mutation]]:
    """Every (field path, value name, mutation) reachable from a message of type desc."""
    if depth > 4:
        return
    for field in desc.fields:
        name = f"{path}.{field.name}" if path else field.name
        yield from _walk([field], name, depth)


def _at(root: message.Message, steps: list[FieldDescriptor]) -> message.Message:
    """The message at steps below root, creating it (and one element of a repeated field) on the way."""
    current = root
    for step in steps:
        value = getattr(current, step.name)
        current = (value[0] if len(value) else value.add()) if step.is_repeated else value
    return current


def _walk(steps: list[FieldDescriptor], name: str, depth: int) -> Iterator[tuple[str, str, Mutation]]:
    field = steps[-1]
    parents = steps[:-1]
    repeated = field.is_repeated
    entry = field.message_type if field.message_type is not None else None
    if entry is not None and entry.GetOptions().map_entry:
        key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
        if key_field.type == FieldDescriptor.TYPE_STRING:

            def map_key(
                root: message.Message, f: FieldDescriptor = field, v: FieldDescriptor = value_field
            ) -> None:
                container = getattr(_at(root, parents), f.name)
                if v.message_type is None:
                    container[NUL] = _plausible_scalar(v)
                else:
                    _fill(container[NUL], 0)

            yield name, "NUL key", map_key
        if value_field.message_type is None:
            for label, value in _extremes(value_field):

                def map_value(
                    root: message.Message,
                    f: FieldDescriptor = field,
                    k: FieldDescriptor = key_field,
                    v: Any = value,
                ) -> None:
                    getattr(_at(root, parents), f.name)[_plausible_scalar(k)] = v

                yield name, label, map_value
        return
    if entry is not None:
        full = entry.full_name
        if full in (_DURATION, _TIMESTAMP):
            for label, values in _time_extremes():

                def time_value(
                    root: message.Message, f: FieldDescriptor = field, v: dict[str, int] = values
                ) -> None:
                    holder = _at(root, parents)
                    target = getattr(holder, f.name)
                    item = (target[0] if len(target) else target.add()) if repeated else target
                    item.Clear()
                    for key, number in v.items():
                        setattr(item, key, number)

                yield name, label, time_value
            return
        if full == _STRUCT:
            for label, change in _struct_extremes():

                def struct_value(
                    root: message.Message, f: FieldDescriptor = field, c: Callable[..., None] = change
                ) -> None:
                    holder = _at(root, parents)
                    target = getattr(holder, f.name)
                    item = (target[0] if len(target) else target.add()) if repeated else target
                    c(item)

                yield name, label, struct_value
            return
        if full in _WELL_KNOWN:
            return
        if depth >= 4:
            return
        for child in entry.fields:
            child_name = f"{name}[0].{child.name}" if repeated else f"{name}.{child.name}"
            yield from _walk([*steps, child], child_name, depth + 1)
        return
    for label, value in _extremes(field):

        def scalar(root: message.Message, f: FieldDescriptor = field, v: Any = value) -> None:
            holder = _at(root, parents)
            if f.is_repeated:
                container = getattr(holder, f.name)
                if len(container):
                    container[0] = v
                else:
                    container.append(v)
            else:
                setattr(holder, f.name, v)

        yield name, label, scalar


def cases(service: descriptor.ServiceDescriptor, known: Mapping[str, str] = _NONE) -> Iterator[Case]:
    """For every unary method of service, each extreme value on top of an empty and a plausible request
    (whose string fields named in known, e.g. "person_id", hold those values: things that exist)."""
    for method in service.methods:
        if method.client_streaming or method.server_streaming:
            continue
        for mutation_path, label, mutate in _mutations(method.input_type, "", 0):
            for base in (_new(method.input_type), plausible(method.input_type, known)):
                request = _new(method.input_type)
                request.CopyFrom(base)
                try:
                    mutate(request)
                except (ValueError, TypeError):
                    continue  # a value this runtime refuses to hold (it could not be sent either)
                yield Case(method.name, mutation_path, label, request)
