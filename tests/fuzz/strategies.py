"""Hypothesis strategies for protobuf requests, built from the message descriptors alone.

Three families, each working for any request type, so a new RPC or field is fuzzed without editing them:

- ``generated``: messages built field by field from the descriptor. Strings are mostly values seen in the
  service's seed requests (ids, names and addresses that exist) and their variants, else NUL and control
  characters, Unicode, very long ones; integers at their type's extremes; Timestamps and Durations near now
  and at their extremes; Structs and Values with NaN, infinities, deep nesting; repeated fields long; enums
  out of range; one member of each oneof; recursive messages nested deeper than any limit.
- ``mutated``: a seed request with one to three fields replaced by generated values, cleared, or repeated.
- ``garbage``: bytes that are not a good encoding of the request: random, seed bytes flipped, truncated or
  spliced, unknown fields (up to megabytes), strings that are not UTF-8, wrong wire types, nesting past the
  decoder's depth limit.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

Draw = Callable[[st.SearchStrategy[Any]], Any]

F = FieldDescriptor
_INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}
_INT_EDGES = [0, 1, -1, 2, 10, 20, 99, 100, 101, 200, 201, 500, 501, 1000, 1001, 3650, 3651, 200_000, 200_001]
_INT_EDGES += [10**6, 10**6 + 1, 2**31 - 1, -(2**31), 2**32 - 1, 2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1]

# The largest Duration protobuf allows (10,000 years) and past it, and the ends of int64.
_DURATION_EDGES = [315_576_000_000, 315_576_000_001, 2**63 - 1, -(2**63), 2**53]
_FLOAT_EDGES = [math.nan, math.inf, -math.inf, -0.0, 0.0, 0.5, 1.0, -1.0, 1e308, -1e308, 5e-324, 2.0**53 + 1]

# Strings every service has to survive: empty and blank, control characters (PostgreSQL cannot store NUL),
# Unicode that normalises or changes length when cased, markup and template syntax, numbers and ids
# that look valid but are not.
EDGE_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\n",
    "x\ny",
    "\t",
    "\r\n",
    "\x1b[31m",
    "\x7f",
    "\u200b",
    "\ufeff",
    "\u2028",
    "\U0001f600",
    "ß",
    "İ",
    "ﬃ",
    "e\u0301",
    "Ω",
    "日本語",
    "Товар",
    "مرحبا",
    "null",
    "None",
    "NaN",
    "-1",
    "0",
    "1e400",
    "9" * 40,
    "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "01890a5d-ac96-774b-bcce-b302099a8057",
    "{}",
    "[]",
    '{"a": 1}',
    "%s%n%x",
    "' OR 1=1 --",
    "../../etc/passwd",
    "<script>alert(1)</script>",
    "{{ person_id }}",
    "{{",
    "{% if %}",
    "{% for i in (1..100000000) %}x{% endfor %}",
    "{{ 'x' | append: 'y' | upcase }}",
    "a@b",
    "@",
    "+",
    "+1",
    "+999999999999999999",
    "2024-02-30",
    "0000-00-00",
    "9999-12-31T23:59:59Z",
    "AAAAAAAA",
    "!!!!",
    "=",
]
# Fields a request is recognised again by: AIP-155 request ids, client-chosen event and template ids, and the
# unique names of segments, journeys, offers and computed traits.
KEY_FIELDS = {"id", "request_id", "name"}
_LONG_UNITS = ["a", "é", "\U0001f600", "\x00", "a-", " ", "9"]
_LONG_LENGTHS = [65, 101, 129, 201, 257, 513, 1025, 2001, 8193, 40_000, 300_000]


def _tweaks() -> list[Callable[[str], str]]:
    return [
        lambda s: s + "\x00",
        lambda s: "\x00" + s,
        lambda s: s + "\n",
        lambda s: " " + s + " ",
        lambda s: s.upper(),
        lambda s: s[:-1],
        lambda s: s[1:],
        lambda s: s + s,
        lambda s: s + "x" * 300,
        lambda s: s + "\U0001f600",
        lambda s: s.replace("-", ""),
        lambda s: s + "-",
    ]


@dataclass(frozen=True)
class Pool:
    """Values seen in a service's seed requests, reused so generated requests name things that exist."""

    strings: tuple[str, ...] = ()
    ints: tuple[int, ...] = ()

    @classmethod
    def harvest(cls, messages: Iterable[Message]) -> Pool:
        """Every non-empty string and integer set anywhere in the messages (keys of maps included)."""
        strings: set[str] = set()
        ints: set[int] = set()
        for message in messages:
            for value in _scalars(message):
                if isinstance(value, str) and value:
                    strings.add(value)
                elif isinstance(value, int) and not isinstance(value, bool):
                    ints.add(value)
        return cls(tuple(sorted(strings)), tuple(sorted(ints)))


def _scalars(message: Message) -> Iterator[Any]:
    for field, value in message.ListFields():
        if _is_map(field):
            entry = submessage(field)
            for key in value:
                yield key
                if entry.fields_by_name["value"].type == F.TYPE_MESSAGE:
                    yield from _scalars(value[key])
                else:
                    yield value[key]
        elif field.type == F.TYPE_MESSAGE:
            for item in value if field.is_repeated else [value]:
                yield from _scalars(item)
        else:
            yield from value if field.is_repeated else [value]


def submessage(field: FieldDescriptor) -> Descriptor:
    """The message type of a message field."""
    assert field.message_type is not None, field.full_name
    return field.message_type


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == F.TYPE_MESSAGE and submessage(field).GetOptions().map_entry


def message_class(descriptor: Descriptor) -> type[Message]:
    """The generated class of a message type."""
    return GetMessageClass(descriptor)


class Builder:
    """Draws field values and whole messages of any type, preferring the pool's values."""

    # Below this depth submessages are left unset, except for the deliberately deep chains.
    max_depth = 4
    # A request holds at most this many very long strings or long lists, and a long list at most about
    # this many bytes: enough to cross every documented cap, not so much that building it takes seconds.
    big_values = 2
    big_bytes = 2_000_000

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self._strings = self._string_strategy()
        now = int(time.time())
        day = 86_400
        self._seconds = [now, now - 3600, now - 30 * day, now + day + 60, now - 5 * 366 * day, now + 600]
        self._seconds += [0, -1, -62_135_596_800, -62_135_596_801, 253_402_300_799, 253_402_300_800]
        self._seconds += [2**63 - 1, -(2**63), 2**31, -(2**31)]
        self._big_left = self.big_values
        self._keys = itertools.count(1)

    def request(self, draw: Draw, descriptor: Descriptor) -> Message:
        """A whole request of the type."""
        self._big_left = self.big_values
        return self.message(draw, descriptor)

    def _allow_big(self) -> bool:
        if self._big_left <= 0:
            return False
        self._big_left -= 1
        return True

    # --- scalars -------------------------------------------------------------------------------------

    def _string_strategy(self) -> st.SearchStrategy[str]:
        text = st.text(st.characters(exclude_categories=["Cs"]), max_size=24)
        long = st.builds(
            lambda unit, n: unit * n, st.sampled_from(_LONG_UNITS), st.sampled_from(_LONG_LENGTHS)
        )
        parts: list[st.SearchStrategy[str]] = [st.sampled_from(EDGE_STRINGS), text, long]
        if self.pool.strings:
            known = st.sampled_from(self.pool.strings)
            tweaked = st.builds(lambda s, tweak: tweak(s), known, st.sampled_from(_tweaks()))
            parts = [known, known, known, tweaked, *parts]
        return st.one_of(parts)

    def string(self, draw: Draw) -> str:
        value = str(draw(self._strings))
        if len(value) > 2000 and not self._allow_big():
            return value[:300]
        return value

    def integer(self, draw: Draw, field_type: int) -> int:
        low, high = _INT_RANGES[field_type]
        choice = draw(st.integers(0, 5))
        if choice == 0 and self.pool.ints:
            value = draw(st.sampled_from(self.pool.ints))
        elif choice <= 2:
            value = draw(st.sampled_from(_INT_EDGES))
        elif choice == 3:
            value = draw(st.integers(-3, 1100))
        else:
            value = draw(st.integers(low, high))
        return min(max(value, low), high)

    def floating(self, draw: Draw, field_type: int) -> float:
        if draw(st.booleans()):
            return float(draw(st.sampled_from(_FLOAT_EDGES)))
        return float(draw(st.floats(width=32 if field_type == F.TYPE_FLOAT else 64)))

    def enum(self, draw: Draw, field: FieldDescriptor) -> int:
        assert field.enum_type is not None
        numbers = [v.number for v in field.enum_type.values]
        if draw(st.integers(0, 4)) == 0:
            return int(draw(st.sampled_from([-1, max(numbers) + 1, 2**31 - 1, -(2**31), 1000])))
        return int(draw(st.sampled_from(numbers)))

    def scalar(self, draw: Draw, field: FieldDescriptor) -> Any:
        if field.type == F.TYPE_STRING:
            return self.string(draw)
        if field.type == F.TYPE_BYTES:
            return draw(st.one_of(st.binary(max_size=40), st.sampled_from([b"\x00" * 100_000, b"\xff" * 17])))
        if field.type == F.TYPE_BOOL:
            return draw(st.booleans())
        if field.type == F.TYPE_ENUM:
            return self.enum(draw, field)
        if field.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
            return self.floating(draw, field.type)
        return self.integer(draw, field.type)

    # --- well-known types ----------------------------------------------------------------------------

    def timestamp(self, draw: Draw) -> timestamp_pb2.Timestamp:
        seconds = int(draw(st.sampled_from(self._seconds)))
        if draw(st.integers(0, 3)) == 0:
            seconds += int(draw(st.integers(-(10**6), 10**6)))
            seconds = min(max(seconds, -(2**63)), 2**63 - 1)
        nanos = int(draw(st.sampled_from([0, 0, 500_000_000, 999_999_999, 10**9, -1, 2**31 - 1, -(2**31)])))
        return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)

    def duration(self, draw: Draw) -> duration_pb2.Duration:
        day = 86_400
        seconds = draw(
            st.one_of(
                st.sampled_from(
                    [0, 1, 59, 3600, day, 30 * day, 400 * day, 400 * day + 1, -1, -day, *_DURATION_EDGES]
                ),
                st.integers(-(2**63), 2**63 - 1),
            )
        )
        nanos = int(draw(st.sampled_from([0, 0, 1, 999_999_999, 10**9, -1, -(2**31), 2**31 - 1])))
        return duration_pb2.Duration(seconds=int(seconds), nanos=nanos)

    def json(self, draw: Draw, depth: int = 0) -> Any:
        """A JSON-like Python value: null, bool, number (NaN and infinities too), string, list or object."""
        kind = draw(st.integers(0, 9 if depth < 3 else 5))
        if kind == 0:
            return None
        if kind == 1:
            return draw(st.booleans())
        if kind in (2, 3):
            return (
                self.floating(draw, F.TYPE_DOUBLE)
                if draw(st.booleans())
                else float(draw(st.integers(-5, 10**4)))
            )
        if kind in (4, 5):
            return self.string(draw)
        if kind == 6:
            return self.deep_json(draw)
        if kind == 7:
            return [self.json(draw, depth + 1) for _ in range(draw(st.integers(0, 3)))]
        return {self.string(draw): self.json(draw, depth + 1) for _ in range(draw(st.integers(0, 4)))}

    def deep_json(self, draw: Draw) -> Any:
        """Lists or objects nested past the limits services and decoders apply (32, 64, 100)."""
        depth = int(draw(st.sampled_from([11, 31, 32, 33, 63, 64, 65, 99, 100, 101, 150])))
        leaf: Any = self.json(draw, depth=3)
        as_object = draw(st.booleans())
        for _ in range(depth):
            leaf = {"k": leaf} if as_object else [leaf]
        return leaf

    def json_object(self, draw: Draw) -> dict[str, Any]:
        if draw(st.integers(0, 15)) == 0:
            # Wide rather than deep: many keys, past size caps.
            return {f"k{i}": self.string(draw) for i in range(draw(st.sampled_from([200, 2000])))}
        if draw(st.integers(0, 9)) == 0:
            return {"deep": self.deep_json(draw)}
        return {self.string(draw): self.json(draw, 1) for _ in range(draw(st.integers(0, 4)))}

    def well_known(self, draw: Draw, descriptor: Descriptor) -> Message | None:
        name = descriptor.full_name
        if name == "google.protobuf.Timestamp":
            return self.timestamp(draw)
        if name == "google.protobuf.Duration":
            return self.duration(draw)
        if name == "google.protobuf.Value":
            return to_value(self.json(draw))
        if name == "google.protobuf.Struct":
            struct = struct_pb2.Struct()
            for key, item in self.json_object(draw).items():
                struct.fields[key].CopyFrom(to_value(item))
            return struct
        if name == "google.protobuf.ListValue":
            items = self.json(draw, 2)
            return to_value(items if isinstance(items, list) else [items]).list_value
        return None

    # --- messages ------------------------------------------------------------------------------------

    def message(self, draw: Draw, descriptor: Descriptor, depth: int = 0) -> Message:
        """A message with some fields set (one member per oneof), valid-looking or at the edges."""
        special = self.well_known(draw, descriptor)
        if special is not None:
            return special
        message = message_class(descriptor)()
        for oneof in descriptor.oneofs:
            members = list(oneof.fields)
            chosen = draw(st.integers(-1, len(members) - 1))
            if chosen >= 0:
                self.set_field(draw, message, members[chosen], depth)
        for field in descriptor.fields:
            if field.containing_oneof is None and draw(st.integers(0, 2)) > 0:
                self.set_field(draw, message, field, depth)
        return message

    def value(self, draw: Draw, field: FieldDescriptor, depth: int) -> Any:
        """One value for a (singular) field, or None when the nesting is already deep enough."""
        if field.type != F.TYPE_MESSAGE:
            return self.scalar(draw, field)
        if recursion_path(submessage(field)) and draw(st.integers(0, 9)) == 0:
            return deep_message(submessage(field), int(draw(st.sampled_from([11, 32, 33, 64, 101, 150]))))
        if depth >= self.max_depth:
            return None
        return self.message(draw, submessage(field), depth + 1)

    def values(self, draw: Draw, field: FieldDescriptor, depth: int) -> list[Any]:
        """Values for a repeated field: a few, or one repeated past any size cap."""
        if draw(st.integers(0, 11)) == 0 and self._allow_big():
            item = self.value(draw, field, depth)
            return (
                [] if item is None else self.repeated([item], int(draw(st.sampled_from([101, 1001, 10_001]))))
            )
        items = [self.value(draw, field, depth) for _ in range(draw(st.integers(0, 3)))]
        return [i for i in items if i is not None]

    def repeated(self, items: list[Any], times: int) -> list[Any]:
        """The items `times` times over, or fewer times when that would pass the byte budget."""
        size = sum(i.ByteSize() + 2 if isinstance(i, Message) else len(str(i)) + 2 for i in items)
        return items * max(1, min(times, self.big_bytes // max(size, 1)))

    def set_field(self, draw: Draw, message: Message, field: FieldDescriptor, depth: int) -> None:
        """Give one field of the message a drawn value (replacing what it had)."""
        message.ClearField(field.name)
        if _is_map(field):
            key_field = submessage(field).fields_by_name["key"]
            value_field = submessage(field).fields_by_name["value"]
            target = getattr(message, field.name)
            for _ in range(draw(st.integers(0, 3))):
                key, item = self.scalar(draw, key_field), self.value(draw, value_field, depth)
                if item is None:
                    continue
                if value_field.type == F.TYPE_MESSAGE:
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
            return
        if field.is_repeated:
            assign(message, field, self.values(draw, field, depth))
            return
        item = self.value(draw, field, depth)
        if item is not None:
            assign(message, field, item)

    def with_fresh_keys(self, seed: Message) -> Message:
        """A copy of the seed whose ids, request ids and names (the keys a repeat is recognised by) are new, so
        it is not just a repeat of a request made before. A key keeps its form (a letter and a number are
        added), so it stays valid where it was."""
        message = type(seed)()
        message.CopyFrom(seed)
        for holder, field, _ in list(_spots(message, 0)):
            is_key = field.name in KEY_FIELDS and field.type == F.TYPE_STRING and not field.is_repeated
            if is_key and getattr(holder, field.name):
                setattr(holder, field.name, f"{getattr(holder, field.name)}z{next(self._keys)}")
        return message

    def mutate(self, draw: Draw, seed: Message) -> Message:
        """The seed with up to three fields anywhere in it replaced, cleared or repeated (and, one time in two,
        new keys: the seed with new keys and nothing else changed is a new request that should succeed)."""
        self._big_left = self.big_values
        if draw(st.booleans()):
            message = self.with_fresh_keys(seed)
        else:
            message = type(seed)()
            message.CopyFrom(seed)
        for _ in range(draw(st.integers(0, 3))):
            spots = list(_spots(message, 0))
            if not spots:
                break
            holder, field, depth = draw(st.sampled_from(spots))
            action = draw(st.sampled_from(["replace", "replace", "replace", "clear", "repeat"]))
            if action == "clear":
                holder.ClearField(field.name)
            elif (
                action == "repeat"
                and field.is_repeated
                and not _is_map(field)
                and getattr(holder, field.name)
            ):
                items = [_copy(item) for item in getattr(holder, field.name)]
                times = int(draw(st.sampled_from([2, 3, 1001])))
                assign(holder, field, self.repeated(items, times))
            else:
                self.set_field(draw, holder, field, depth)
        return message


def _copy(item: Any) -> Any:
    if isinstance(item, Message):
        copied = type(item)()
        copied.CopyFrom(item)
        return copied
    return item


def _spots(message: Message, depth: int) -> Iterator[tuple[Message, Any, int]]:
    """Every (message, field, depth) of the message and of the submessages it holds, set or not."""
    for field in message.DESCRIPTOR.fields:
        yield message, field, depth
    for field, value in message.ListFields():
        if field.type != F.TYPE_MESSAGE:
            continue
        if _is_map(field):
            if submessage(field).fields_by_name["value"].type == F.TYPE_MESSAGE:
                for key in value:
                    yield from _spots(value[key], depth + 1)
        elif field.is_repeated:
            for item in value[:5]:
                yield from _spots(item, depth + 1)
        else:
            yield from _spots(value, depth + 1)


def assign(message: Message, field: FieldDescriptor, value: Any) -> None:
    """Set a field (singular or repeated, scalar or message) to a value, replacing what it had."""
    message.ClearField(field.name)
    target = getattr(message, field.name)
    if field.is_repeated:
        if field.type == F.TYPE_MESSAGE:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.extend(value)
    elif field.type == F.TYPE_MESSAGE:
        target.CopyFrom(value)
        target.SetInParent()
    else:
        setattr(message, field.name, value)


def to_value(item: Any) -> struct_pb2.Value:
    """A protobuf Value from a JSON-like Python value (NaN and infinities kept as numbers)."""
    value = struct_pb2.Value()
    if item is None:
        value.null_value = struct_pb2.NULL_VALUE
    elif isinstance(item, bool):
        value.bool_value = item
    elif isinstance(item, int | float):
        value.number_value = float(item)
    elif isinstance(item, str):
        value.string_value = item
    elif isinstance(item, list):
        value.list_value.SetInParent()
        for element in item:
            value.list_value.values.add().CopyFrom(to_value(element))
    else:
        value.struct_value.SetInParent()
        for key, element in item.items():
            value.struct_value.fields[key].CopyFrom(to_value(element))
    return value


# --- recursion -----------------------------------------------------------------------------------------


_RECURSION: dict[str, list[FieldDescriptor]] = {}


def recursion_path(descriptor: Descriptor) -> list[FieldDescriptor]:
    """The shortest chain of message fields leading from a message type back to itself (empty if none)."""
    if descriptor.full_name not in _RECURSION:
        _RECURSION[descriptor.full_name] = _find_recursion(descriptor)
    return _RECURSION[descriptor.full_name]


def _find_recursion(descriptor: Descriptor) -> list[FieldDescriptor]:
    queue: list[tuple[Descriptor, list[FieldDescriptor]]] = [(descriptor, [])]
    seen: set[str] = set()
    while queue:
        current, path = queue.pop(0)
        for field in current.fields:
            if field.type != F.TYPE_MESSAGE:
                continue
            if submessage(field).full_name == descriptor.full_name:
                return [*path, field]
            if submessage(field).full_name not in seen:
                seen.add(submessage(field).full_name)
                queue.append((submessage(field), [*path, field]))
    return []


def deep_message(descriptor: Descriptor, depth: int) -> Message:
    """A message of a recursive type nested `depth` times along its recursion path."""
    root = message_class(descriptor)()
    current = root
    for _ in range(depth):
        in_map = False
        for field in recursion_path(descriptor):
            if in_map:
                in_map = False  # the map entry's value field: current is that value already
            elif _is_map(field):
                current = getattr(current, field.name)["k"]
                in_map = True
            elif field.is_repeated:
                current = getattr(current, field.name).add()
            else:
                current = getattr(current, field.name)
                current.SetInParent()
    return root


# --- bytes ---------------------------------------------------------------------------------------------


def varint(value: int) -> bytes:
    """The protobuf varint encoding of a non-negative integer."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    """A field's key: its number and wire type."""
    return varint((number << 3) | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    """A length-delimited field (a string, bytes or a submessage)."""
    return tag(number, 2) + varint(len(payload)) + payload


def _paths_to_strings(descriptor: Descriptor, depth: int = 0) -> Iterator[list[FieldDescriptor]]:
    for field in descriptor.fields:
        if field.type == F.TYPE_STRING:
            yield [field]
        elif field.type == F.TYPE_MESSAGE and depth < 3:
            for rest in _paths_to_strings(submessage(field), depth + 1):
                yield [field, *rest]


def _wrap(path: Sequence[FieldDescriptor], payload: bytes) -> bytes:
    """The payload as the last field of the path, nested in the path's submessages."""
    encoded = length_delimited(path[-1].number, payload)
    for field in reversed(path[:-1]):
        encoded = length_delimited(field.number, encoded)
    return encoded


def _path_to_recursion(descriptor: Descriptor) -> tuple[list[FieldDescriptor], list[FieldDescriptor]]:
    """A chain of fields from the request to a recursive message type, and that type's recursion path."""
    queue: list[tuple[Descriptor, list[FieldDescriptor]]] = [(descriptor, [])]
    seen = {descriptor.full_name}
    while queue:
        current, path = queue.pop(0)
        cycle = recursion_path(current)
        if cycle:
            return path, cycle
        for field in current.fields:
            if field.type == F.TYPE_MESSAGE and submessage(field).full_name not in seen:
                seen.add(submessage(field).full_name)
                queue.append((submessage(field), [*path, field]))
    return [], []


def garbage(draw: Draw, descriptor: Descriptor, seeds: Sequence[bytes]) -> bytes:
    """Bytes that are not a well-formed request of the type (or are, with something hostile inside)."""
    seed = draw(st.sampled_from(list(seeds))) if seeds else b""
    rng = random.Random(draw(st.integers(0, 2**32)))
    kind = draw(
        st.sampled_from(
            [
                "random",
                "flip",
                "truncate",
                "insert",
                "unknown",
                "utf8",
                "wire_type",
                "deep",
                "empty",
                "repeat",
            ]
        )
    )
    if kind == "random":
        return rng.randbytes(rng.choice([1, 3, 16, 200, 4096]))
    if kind == "empty":
        return b""
    if kind == "flip" and seed:
        data = bytearray(seed)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if kind == "truncate" and len(seed) > 1:
        return seed[: rng.randrange(1, len(seed))]
    if kind == "insert":
        at = rng.randrange(len(seed) + 1)
        return seed[:at] + rng.randbytes(rng.randint(1, 12)) + seed[at:]
    if kind == "unknown":
        number = rng.choice([15, 99, 1000, 19_000, 2**29 - 1])
        size = int(draw(st.sampled_from([0, 10, 10_000, 1_500_000])))
        wire = rng.choice([0, 1, 2, 2, 2, 5, 6, 7])
        if wire == 0:
            field = tag(number, 0) + varint(2**64 - 1)
        elif wire == 1:
            field = tag(number, 1) + b"\xff" * 8
        elif wire == 5:
            field = tag(number, 5) + b"\xff" * 4
        elif wire == 2:
            field = length_delimited(number, b"x" * size)
        else:
            field = tag(number, wire) + b"\x01\x02"
        return seed + field
    if kind == "utf8":
        paths = list(_paths_to_strings(descriptor))
        if paths:
            path = draw(st.sampled_from(paths))
            return seed + _wrap(path, rng.choice([b"\xff\xfe", b"a\xc3", b"\xed\xa0\x80", b"\xc0\x80"]))
    if kind == "wire_type" and descriptor.fields:
        field = draw(st.sampled_from(list(descriptor.fields)))
        wrong = 0 if field.type in (F.TYPE_STRING, F.TYPE_BYTES, F.TYPE_MESSAGE) else 2
        payload = varint(300) if wrong == 0 else varint(3) + b"abc"
        return seed + tag(field.number, wrong) + payload
    if kind == "deep":
        lead, cycle = _path_to_recursion(descriptor)
        if cycle:
            depth = int(draw(st.sampled_from([33, 64, 101, 1000])))
            inner = b""
            for _ in range(depth):
                for link in reversed(cycle):
                    inner = length_delimited(link.number, inner)
            for link in reversed(lead):
                inner = length_delimited(link.number, inner)
            return seed + inner
    if kind == "repeat" and seed:
        return seed * int(draw(st.sampled_from([2, 100, 5000])))
    return seed + rng.randbytes(3)
