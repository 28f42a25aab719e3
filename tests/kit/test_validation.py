"""omni_kit.validation: the constraints a proto declares, as field violations with request paths."""

from __future__ import annotations

import time

import pytest
from buf.validate import validate_pb2

from omni.common.v1 import common_pb2
from omni.decisioning.v1 import decisioning_pb2 as d
from omni_kit import validation
from omni_kit.errors import InvalidArgument, Violations


def test_paths_name_nested_fields_and_list_items() -> None:
    request = d.CreateJourneyRequest(
        journey=d.Journey(
            name=" ", trigger_segment_id="x", channels=[common_pb2.CHANNEL_EMAIL, 0, 42], template_id="A B"
        )
    )
    violations = validation.check(request)
    assert {v.field for v in violations.items} == {
        "journey.name",
        "journey.trigger_segment_id",
        "journey.channels[1]",
        "journey.channels[2]",
        "journey.template_id",
    }
    described = {v.field: v.description for v in violations.items}
    assert described["journey.name"] == "required"
    assert described["journey.channels[1]"].startswith("must be CHANNEL_EMAIL, CHANNEL_SMS or CHANNEL_PUSH")


def test_omni_text_rules() -> None:
    request = d.CreateOfferRequest(
        offer=d.Offer(name="ten\x00off", description="two\nlines\tfine", touchpoints=["web", "pos\x07"])
    )
    assert [(v.field, v.description) for v in validation.check(request).items] == [
        ("offer.name", "holds control characters"),
        ("offer.touchpoints[1]", "holds control characters"),
    ]
    bad_description = d.CreateOfferRequest(offer=d.Offer(name="ok", description="bell\x07"))
    assert [v.field for v in validation.check(bad_description).items] == ["offer.description"]


def test_a_valid_request_has_no_violations_and_validate_raises_none() -> None:
    request = d.DecideRequest(
        person_id="0193a0b4-5f6e-7c3d-9a1b-2c3d4e5f6a7b", touchpoint="web_home", limit=3
    )
    assert not validation.check(request)
    validation.validate(request)


def test_check_adds_to_a_collector_under_a_prefix_and_validate_raises_all() -> None:
    violations = Violations()
    violations.add("page_token", "not a token this service issued")
    validation.check(d.ListJourneysRequest(page_size=-1), violations, prefix="requests[2]")
    assert [v.field for v in violations.items] == ["page_token", "requests[2].page_size"]
    with pytest.raises(InvalidArgument) as raised:
        validation.validate(d.DecideRequest(limit=21))
    assert {v.field for v in raised.value.violations} == {"person_id", "touchpoint", "limit"}


def test_check_counts_names_lists_past_their_limit_without_reading_them() -> None:
    # Two million empty touchpoints: protovalidate would read every one (and name each blank one).
    huge = d.Offer(touchpoints=[""] * 2_000_000)
    started = time.perf_counter()
    found = validation.check_counts(huge)
    assert time.perf_counter() - started < 0.1
    assert [(v.field, v.description) for v in found.items] == [
        ("touchpoints", "must contain no more than 100 item(s)")
    ]
    # Only the message's own lists, under a prefix if given, into the collector given.
    collected = Violations()
    many = d.Offer(touchpoints=["web"] * 101)
    assert validation.check_counts(many, collected, prefix="offer") is collected
    assert [v.field for v in collected.items] == ["offer.touchpoints"]
    assert not validation.check_counts(d.CreateOfferRequest(offer=many))
    assert not validation.check_counts(d.Offer(touchpoints=["web"] * 100))


def test_field_rules_are_what_the_proto_declares() -> None:
    assert validation.field_rules(d.Offer, "touchpoints").repeated.max_items == 100
    assert validation.field_rules(d.Offer, "name").string.max_len == 200
    assert validation.field_rules(d.Journey, "id") == validate_pb2.FieldRules()
