"""Rows of an import file (CSV or NDJSON) and the profile events they become.

A row is a flat mapping: CSV columns, or the keys of one JSON object per line. What the keys mean:

- ``id``: the event's id (unique per source). Without it the id is derived from the row's content (a hash),
  so importing the same row again is answered DUPLICATE instead of recorded twice.
- ``type``, ``channel`` (web, app, email, sms, push, store, call_center, webhook), ``occurred_at`` (ISO 8601;
  a time without a zone is UTC), ``person_id``, ``name``.
- identifier types (``email``, ``phone``, ``user_id``, ``anonymous_id``, ``device_id``, ``loyalty_card``,
  ``pos_customer_id``, ``push_token``): the identifiers of the person; NDJSON may also give
  ``identifiers`` as a list of ``{"type", "value"}``.
- ``properties``, ``traits``, ``context``, ``cart_item``: objects in NDJSON; in CSV, dotted columns
  (``properties.sku``, ``cart_item.unit_price.amount_minor``).
- any other key: a property of an event, a trait of a customer.
- keys starting with ``_`` are ignored (the rejects file adds ``_row``, ``_field`` and ``_reason``, so it
  can be fixed and imported as it is).

A CSV cell that reads as a JSON number, ``true`` or ``false`` becomes that value in properties and traits;
every other cell is a string, and an empty cell is left out.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from omni.common.v1 import common_pb2
from omni.profile.v1 import profile_pb2

IDENTIFIER_TYPES = (
    "email",
    "phone",
    "user_id",
    "anonymous_id",
    "device_id",
    "loyalty_card",
    "pos_customer_id",
    "push_token",
)
NESTED = ("properties", "traits", "context", "cart_item")
CUSTOMER_EVENT_TYPE = "identified"
"""The event a customer row becomes: profile sets the traits it carries, identity links its identifiers."""
FORMATS = ("csv", "ndjson")


@dataclass
class RowError(Exception):
    """A row that cannot become an event: the field at fault and why."""

    field: str
    reason: str


@dataclass
class Row:
    """One data row of the file: its number (1 = the first data row) and its fields, or why it is unreadable."""

    number: int
    fields: dict[str, Any]
    error: RowError | None = None


def detect_format(path: Path, given: str | None) -> str:
    """csv or ndjson: as given, else by the file's extension."""
    if given:
        return given
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".ndjson", ".jsonl", ".json"):
        return "ndjson"
    raise RowError(
        "FILE", f"cannot tell the format of {path.name}: name it .csv or .ndjson, or pass --format"
    )


def read_rows(path: Path, file_format: str) -> Iterator[Row]:
    """The file's data rows in order; an unreadable line is a row with an error, not the end."""
    if file_format == "csv":
        with path.open(newline="", encoding="utf-8-sig") as handle:
            for number, record in enumerate(csv.DictReader(handle), start=1):
                extra = record.pop(None, None)  # type: ignore[call-overload]
                if extra:
                    yield Row(number, {}, RowError("row", f"{len(extra)} more cells than the header has"))
                    continue
                yield Row(number, {k: v for k, v in record.items() if k is not None and v not in ("", None)})
        return
    with path.open("rb") as handle:
        number = 0
        for line in handle:
            if not line.strip():
                continue
            number += 1
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError as error:
                yield Row(number, {}, RowError("row", f"not JSON: {error}"))
                continue
            if not isinstance(value, dict):
                yield Row(number, {}, RowError("row", "must be a JSON object"))
                continue
            yield Row(number, value)


def count_rows(path: Path, file_format: str) -> int:
    """About how many data rows the file has (lines, less the CSV header), for the progress bar."""
    lines = 0
    last = b"\n"
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    if last != b"\n":
        lines += 1
    return max(0, lines - 1) if file_format == "csv" else lines


def _cell(value: Any, typed: bool) -> Any:
    """A CSV cell as a JSON scalar where it reads as one (numbers, true, false)."""
    if not typed or not isinstance(value, str):
        return value
    if value in ("true", "false") or value[:1].isdigit() or value[:1] == "-":
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
        if isinstance(parsed, bool | int | float):
            return parsed
    return value


def _nest(target: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = target.setdefault(part, {})
        if not isinstance(child, dict):
            raise RowError(dotted, f"{part} is both a value and an object")
        target = child
    target[parts[-1]] = value


def _timestamp(value: Any) -> datetime:
    if not isinstance(value, str):
        raise RowError("occurred_at", "must be an ISO 8601 time, e.g. 2026-05-01T12:00:00Z")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise RowError(
            "occurred_at", f"{value!r} is not an ISO 8601 time, e.g. 2026-05-01T12:00:00Z"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


CHANNELS = {
    name.removeprefix("CHANNEL_").lower(): number
    for name, number in common_pb2.Channel.items()
    if name != "CHANNEL_UNSPECIFIED"
}


def _channel(value: Any) -> int:
    name = str(value).strip().lower()
    number = CHANNELS.get(name.removeprefix("channel_"))
    if number is None:
        raise RowError("channel", f"{value!r} is not a channel; one of {', '.join(CHANNELS)}")
    return number


def _cart_item(value: dict[str, Any], item: common_pb2.CartItem) -> None:
    """A cart line (product_id, name, quantity, unit_price: amount_minor, currency_code), field by field:
    json_format would do the same at ten times the cost, and this runs for every cart row."""
    unknown = set(value) - {"product_id", "name", "quantity", "unit_price"}
    if unknown:
        raise RowError(f"cart_item.{sorted(unknown)[0]}", "is not a field of a cart line")
    item.product_id = str(value.get("product_id", ""))
    item.name = str(value.get("name", ""))
    try:
        item.quantity = int(value.get("quantity", 0))
    except (TypeError, ValueError):
        raise RowError("cart_item.quantity", "must be a whole number") from None
    price = value.get("unit_price")
    if price is None:
        return
    if not isinstance(price, dict) or set(price) - {"amount_minor", "currency_code"}:
        raise RowError("cart_item.unit_price", "must have amount_minor and currency_code")
    try:
        item.unit_price.amount_minor = int(price.get("amount_minor", 0))
    except (TypeError, ValueError):
        raise RowError("cart_item.unit_price.amount_minor", "must be a whole number (cents)") from None
    item.unit_price.currency_code = str(price.get("currency_code", ""))


def derived_id(kind: str, fields: dict[str, Any]) -> str:
    """The id of a row without one: a hash of its content, so the same row always has the same id."""
    canonical = orjson.dumps({"kind": kind, **fields}, option=orjson.OPT_SORT_KEYS)
    return f"{kind[:4]}-{hashlib.sha256(canonical).hexdigest()[:40]}"


def to_event(kind: str, fields: dict[str, Any], typed_cells: bool) -> profile_pb2.Event:
    """The profile event a row stands for (kind "events" or "customers"); RowError when it cannot be one."""
    fields = {k: v for k, v in fields.items() if not k.startswith("_")}
    leftover = "traits" if kind == "customers" else "properties"
    nested: dict[str, Any] = {}
    plain: dict[str, Any] = {}
    for key, value in fields.items():
        head = key.split(".", 1)[0]
        if head in NESTED and "." in key:
            _nest(nested, key, _cell(value, typed_cells and head != "cart_item"))
        elif key in NESTED:
            if not isinstance(value, dict):
                raise RowError(key, "must be an object")
            nested.setdefault(key, {}).update(value)
        else:
            plain[key] = value
    event = profile_pb2.Event(id=str(plain.pop("id", "") or derived_id(kind, fields)))
    if kind == "customers":
        event.type = CUSTOMER_EVENT_TYPE
        plain.pop("type", None)
    else:
        event_type = plain.pop("type", None)
        if not event_type:
            raise RowError("type", "is required (the event's type, e.g. order_completed)")
        event.type = str(event_type)
    if (channel := plain.pop("channel", None)) is not None:
        event.channel = _channel(channel)  # type: ignore[assignment]
    if (occurred := plain.pop("occurred_at", None)) is not None:
        event.occurred_at.FromDatetime(_timestamp(occurred))
    if (person_id := plain.pop("person_id", None)) is not None:
        event.person_id = str(person_id)
    if (name := plain.pop("name", None)) is not None and kind == "events":
        event.name = str(name)
    elif name is not None:
        plain["name"] = name
    listed = plain.pop("identifiers", None)
    if listed is not None:
        if not isinstance(listed, list) or not all(isinstance(i, dict) for i in listed):
            raise RowError("identifiers", 'must be a list of {"type": …, "value": …}')
        for item in listed:
            event.identifiers.add(type=str(item.get("type", "")), value=str(item.get("value", "")))
    for identifier_type in IDENTIFIER_TYPES:
        if (value := plain.pop(identifier_type, None)) is not None:
            event.identifiers.add(type=identifier_type, value=str(value))
    if not event.identifiers and not event.person_id:
        raise RowError(
            "identifiers", f"a row needs an identifier ({', '.join(IDENTIFIER_TYPES)}) or person_id"
        )
    for key, value in plain.items():
        nested.setdefault(leftover, {})[key] = _cell(value, typed_cells)
    try:
        if "properties" in nested:
            event.properties.update(nested["properties"])
        if "traits" in nested:
            event.traits.update(nested["traits"])
        if "context" in nested:
            event.context.update(nested["context"])
    except (ValueError, TypeError) as error:
        field = next(k for k in NESTED if k in nested)
        raise RowError(field, str(error)) from None
    if "cart_item" in nested:
        _cart_item(nested["cart_item"], event.cart_item)
    return event
