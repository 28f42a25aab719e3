"""Helpers of the matching tests: the running server and record builders."""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from omni.identity.v1 import identity_pb2_grpc, matching_pb2, matching_pb2_grpc
from omni_kit.runtime import Runtime

TABLES = ("person_records", "person_record_keys", "match_decisions", "match_models")


@dataclass
class MatchingServer:
    """A running identity server and clients of its two services."""

    runtime: Runtime
    stub: matching_pb2_grpc.MatchingServiceStub
    identity: identity_pb2_grpc.IdentityServiceStub


def unique_word(length: int = 9, rng: random.Random | None = None) -> str:
    """A made-up name no other test uses."""
    chooser = rng or random.SystemRandom()
    return "".join(chooser.choice(string.ascii_lowercase) for _ in range(length))


def unique_postcode() -> str:
    """A postcode no other test uses (letters and digits, as UK postcodes have)."""
    return "T" + unique_word(6).upper()


def person(**fields: object) -> matching_pb2.PersonRecord:
    """A complete record of a made-up person; fields override."""
    values: dict[str, object] = {
        "given_name": unique_word().capitalize(),
        "surname": unique_word().capitalize(),
        "date_of_birth": matching_pb2.CalendarDate(year=1971, month=3, day=14),
        "street_number": "12",
        "address_1": f"{unique_word().capitalize()} St",
        "address_2": "Unit 4",
        "suburb": unique_word().capitalize(),
        "postcode": unique_postcode(),
        "state": "NSW",
    }
    values.update(fields)
    return matching_pb2.PersonRecord(**values)  # type: ignore[arg-type]


def with_fields(record: matching_pb2.PersonRecord, **fields: object) -> matching_pb2.PersonRecord:
    """A copy of a record with some fields changed."""
    copy = matching_pb2.PersonRecord()
    copy.CopyFrom(record)
    for name, value in fields.items():
        if isinstance(value, matching_pb2.CalendarDate):
            getattr(copy, name).CopyFrom(value)
        elif isinstance(value, list):
            del getattr(copy, name)[:]
            getattr(copy, name).extend(value)
        else:
            setattr(copy, name, value)
    return copy
