"""Sizes of JSON as the limits count them: compact JSON in UTF-8 bytes; and trimming a Struct to a size.

An "é" is two bytes, as it is stored, not the six of the "\\u00e9" escape `json.dumps` writes by default.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from google.protobuf import struct_pb2

from omni_kit.errors import FieldViolation
from omni_profile import validation, wire


def dropped(path: str, description: str) -> FieldViolation:
    """The warning for a value left out of what was recorded."""
    return FieldViolation(path, f"{description}; left out, the rest was recorded")


def json_size(value: Any) -> int:
    """The size of a JSON value as compact JSON, in UTF-8 bytes (an "é" is two, not the six of its escape)."""
    try:
        return _encoded_size(value)
    except RecursionError:
        # A value nested a few hundred levels (a bad trait, left out later) is measured without recursion.
        return _size_without_recursion(value)


def _encoded_size(value: Any) -> int:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return len(text.encode("utf-8", "surrogatepass"))


def _size_without_recursion(value: Any) -> int:
    size = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            # Braces, a colon per entry, commas between entries.
            size += 2 + len(item) + max(len(item) - 1, 0)
            size += sum(_encoded_size(str(key)) for key in item)
            stack.extend(item.values())
        elif isinstance(item, list):
            size += 2 + max(len(item) - 1, 0)
            stack.extend(item)
        else:
            size += _encoded_size(item)
    return size


def trim(struct: struct_pb2.Struct, path: str, limit: int) -> list[FieldViolation]:
    """Leave out a Struct's largest entries until it is at most limit bytes as JSON; the warnings."""
    if not validation.json_size_over(struct, limit):
        return []
    sizes = {
        key: len(orjson.dumps({key: wire.value_to_python(value)})) - 2 for key, value in struct.fields.items()
    }
    total = validation.json_size(struct)
    warnings: list[FieldViolation] = []
    for key in sorted(sizes, key=lambda k: (-sizes[k], k)):
        if total <= limit:
            break
        del struct.fields[key]
        total -= sizes[key] + 1
        reason = f"the {path} was over {limit // 1024} KB as JSON and this was among its largest parts"
        warnings.append(dropped(f"{path}.{key}", reason))
    return warnings
