"""What an import row becomes: the event's fields, typed CSV cells, ids derived from the content, and the
field and reason of a row that cannot be an event."""

from __future__ import annotations

from pathlib import Path

import pytest

from omni.common.v1 import common_pb2
from omni_kit.commands import rows
from omni_kit.commands.connect import CliSettings, CommandError, load_settings
from omni_kit.commands.kinds import find
from omni_kit.commands.person import identifier_of


def test_a_csv_row_becomes_an_event_with_typed_properties_and_a_cart_line() -> None:
    event = rows.to_event(
        "events",
        {
            "type": "cart_item_added",
            "channel": "app",
            "occurred_at": "2026-11-02T10:00:00",
            "email": "ada@example.com",
            "device_id": "d-1",
            "properties.quantity": "2",
            "properties.zip": "01234",
            "properties.gift": "true",
            "colour": "red",
            "cart_item.product_id": "sku-1",
            "cart_item.quantity": "2",
            "cart_item.unit_price.amount_minor": "1999",
            "cart_item.unit_price.currency_code": "EUR",
            "_reason": "left over from a rejects file",
        },
        typed_cells=True,
    )
    assert event.type == "cart_item_added" and event.channel == common_pb2.CHANNEL_APP
    assert event.occurred_at.ToJsonString() == "2026-11-02T10:00:00Z"  # no zone: UTC
    assert [(i.type, i.value) for i in event.identifiers] == [
        ("email", "ada@example.com"),
        ("device_id", "d-1"),
    ]
    assert dict(event.properties) == {"quantity": 2, "zip": "01234", "gift": True, "colour": "red"}
    assert event.cart_item.unit_price.amount_minor == 1999 and event.cart_item.quantity == 2


def test_ids_come_from_the_row_or_its_content() -> None:
    row = {"type": "page_viewed", "anonymous_id": "a-1", "occurred_at": "2026-11-02T10:00:00Z"}
    first = rows.to_event("events", dict(row), typed_cells=True).id
    assert first == rows.to_event("events", dict(row), typed_cells=True).id
    assert first != rows.to_event("events", {**row, "path": "/x"}, typed_cells=True).id
    assert rows.to_event("events", {**row, "id": "e-7"}, typed_cells=True).id == "e-7"
    customer = rows.to_event("customers", {"email": "bob@example.com", "name": "Bob", "type": "x"}, True)
    assert customer.type == rows.CUSTOMER_EVENT_TYPE and dict(customer.traits) == {"name": "Bob"}


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"anonymous_id": "a"}, "type", "is required"),
        ({"type": "t"}, "identifiers", "needs an identifier"),
        ({"type": "t", "anonymous_id": "a", "channel": "fax"}, "channel", "is not a channel"),
        ({"type": "t", "anonymous_id": "a", "occurred_at": "soon"}, "occurred_at", "not an ISO 8601 time"),
        ({"type": "t", "anonymous_id": "a", "properties": 3}, "properties", "must be an object"),
    ],
)
def test_a_bad_row_names_its_field(fields: dict[str, object], field: str, reason: str) -> None:
    with pytest.raises(rows.RowError) as caught:
        rows.to_event("events", fields, typed_cells=False)
    assert caught.value.field == field and reason in caught.value.reason


def test_files_are_read_row_by_row_and_counted(tmp_path: Path) -> None:
    csv_file = tmp_path / "e.csv"
    csv_file.write_text("type,email\nx,a@example.com\ny,b@example.com,extra\n")
    read = list(rows.read_rows(csv_file, "csv"))
    assert read[0].fields == {"type": "x", "email": "a@example.com"} and read[1].error is not None
    assert rows.count_rows(csv_file, "csv") == 2
    ndjson = tmp_path / "e.ndjson"
    ndjson.write_text('{"type": "x"}\n\n[1]\n{oops\n')
    read = list(rows.read_rows(ndjson, "ndjson"))
    assert [r.number for r in read] == [1, 2, 3] and [r.error is None for r in read] == [True, False, False]
    assert rows.detect_format(ndjson, None) == "ndjson"
    with pytest.raises(rows.RowError):
        rows.detect_format(tmp_path / "e.xlsx", None)


def test_who_a_person_is(monkeypatch: pytest.MonkeyPatch) -> None:
    assert identifier_of("0190f3a4-7c1e-7000-8000-000000000001") is None
    assert identifier_of("Ada@Example.com") == common_pb2.Identifier(type="email", value="Ada@Example.com")
    assert identifier_of("+49 30 1234567") == common_pb2.Identifier(type="phone", value="+49 30 1234567")
    assert identifier_of("loyalty_card:LC-1") == common_pb2.Identifier(type="loyalty_card", value="LC-1")
    with pytest.raises(CommandError):
        identifier_of("ada")
    assert find("segments").name == "Segment" and find("ComputedTrait").plural == "computed_traits"
    with pytest.raises(CommandError):
        find("widgets")
    monkeypatch.setenv("OMNI_CLI_PROFILE_TARGET", "profile.omni:50051")
    monkeypatch.setenv("OMNI_CLI_TLS_CERT_FILE", "/x.pem")
    with pytest.raises(CommandError, match="go together"):
        load_settings()
    monkeypatch.delenv("OMNI_CLI_TLS_CERT_FILE")
    settings = CliSettings()
    assert settings.target("profile") == "profile.omni:50051" and settings.security() is None
