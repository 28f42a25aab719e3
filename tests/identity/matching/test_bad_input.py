"""Bad input to the MatchingService: INVALID_ARGUMENT with the offending fields, and nothing written."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import pytest

from omni.common.v1 import common_pb2
from omni.identity.v1 import matching_pb2
from omni_kit.errors import status_details

from .conftest import count_rows
from .support import TABLES, MatchingServer, person, with_fields


async def refused(server: MatchingServer, call: Callable[[], Awaitable[object]]) -> set[str]:
    """Make a call that must fail with INVALID_ARGUMENT and write nothing; return the violated fields."""
    before = [await count_rows(server, table) for table in TABLES]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call()
    details = status_details(raised.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.error_info is not None and details.error_info.reason == "INVALID_ARGUMENT"
    assert [await count_rows(server, table) for table in TABLES] == before
    return details.fields


def match_call(
    server: MatchingServer, record: matching_pb2.PersonRecord | None, **kwargs: str
) -> Callable[[], Awaitable[object]]:
    """A MatchRecord call, ready to make."""
    request = matching_pb2.MatchRecordRequest(record=record, **kwargs)
    return lambda: server.stub.MatchRecord(request)


async def test_missing_record(server: MatchingServer) -> None:
    assert await refused(server, match_call(server, None)) == {"record"}


async def test_empty_record(server: MatchingServer) -> None:
    assert await refused(server, match_call(server, matching_pb2.PersonRecord())) == {"record"}


async def test_record_of_blanks_and_punctuation(server: MatchingServer) -> None:
    blank = matching_pb2.PersonRecord(given_name="  ", surname="--", postcode=" . ")
    assert await refused(server, match_call(server, blank)) == {"record"}


@pytest.mark.parametrize(
    "birth",
    [
        matching_pb2.CalendarDate(year=1971, month=13, day=1),
        matching_pb2.CalendarDate(year=1971, month=2, day=30),
        matching_pb2.CalendarDate(year=0, month=0, day=0),
        matching_pb2.CalendarDate(year=1700, month=1, day=1),
        matching_pb2.CalendarDate(year=2999, month=1, day=1),
    ],
)
async def test_malformed_date_of_birth(server: MatchingServer, birth: matching_pb2.CalendarDate) -> None:
    record = with_fields(person(), date_of_birth=birth)
    assert await refused(server, match_call(server, record)) == {"record.date_of_birth"}


async def test_oversize_fields(server: MatchingServer) -> None:
    record = with_fields(person(), surname="x" * 257, address_1="y" * 1000)
    assert await refused(server, match_call(server, record)) == {"record.surname", "record.address_1"}


async def test_bad_identifiers(server: MatchingServer) -> None:
    record = person()
    record.identifiers.extend(
        [
            common_pb2.Identifier(type="email", value="not an address"),
            common_pb2.Identifier(type="shoe_size", value="42"),
        ]
    )
    assert await refused(server, match_call(server, record)) == {
        "record.identifiers[0].value",
        "record.identifiers[1].type",
    }


async def test_too_many_identifiers(server: MatchingServer) -> None:
    record = person()
    record.identifiers.extend(common_pb2.Identifier(type="user_id", value=f"u{i}") for i in range(21))
    assert await refused(server, match_call(server, record)) == {"record.identifiers"}


async def test_oversize_source_and_request_id(server: MatchingServer) -> None:
    call = match_call(server, person(), source="s" * 129, request_id="r" * 129)
    assert await refused(server, call) == {"source", "request_id"}


async def test_control_characters(server: MatchingServer) -> None:
    # PostgreSQL cannot store a NUL in text: it must be refused as bad input, not fail as an internal error.
    record = with_fields(person(), given_name="Ad\x00a", postcode="2000\n")
    call = match_call(server, record, source="store\x00", request_id="r\x1f")
    assert await refused(server, call) == {"record.given_name", "record.postcode", "source", "request_id"}


async def test_batch_with_one_bad_record_writes_none(server: MatchingServer) -> None:
    bad = with_fields(person(), date_of_birth=matching_pb2.CalendarDate(year=1980, month=4, day=31))
    request = matching_pb2.BatchMatchRecordsRequest(
        records=[person(), bad, person(), matching_pb2.PersonRecord()]
    )
    fields = await refused(server, lambda: server.stub.BatchMatchRecords(request))
    assert fields == {"records[1].date_of_birth", "records[3]"}


async def test_empty_batch(server: MatchingServer) -> None:
    request = matching_pb2.BatchMatchRecordsRequest()
    assert await refused(server, lambda: server.stub.BatchMatchRecords(request)) == {"records"}


async def test_oversize_batch(server: MatchingServer) -> None:
    request = matching_pb2.BatchMatchRecordsRequest(records=[person(surname="x")] * 1001)
    assert await refused(server, lambda: server.stub.BatchMatchRecords(request)) == {"records"}


async def test_training_with_bad_limits(server: MatchingServer) -> None:
    request = matching_pb2.TrainMatchModelRequest(max_records=200_001, request_id="r" * 129)
    fields = await refused(server, lambda: server.stub.TrainMatchModel(request))
    assert fields == {"max_records", "request_id"}


async def test_training_with_a_nul_in_the_request_id(server: MatchingServer) -> None:
    request = matching_pb2.TrainMatchModelRequest(request_id="nightly\x00")
    assert await refused(server, lambda: server.stub.TrainMatchModel(request)) == {"request_id"}


@pytest.mark.parametrize(
    ("request_fields", "violated"),
    [
        ({"person_id": ""}, {"person_id"}),
        ({"person_id": "not-a-uuid"}, {"person_id"}),
        ({"person_id": "0190a4a0-0000-7000-8000-000000000000", "page_size": -1}, {"page_size"}),
        ({"person_id": "0190a4a0-0000-7000-8000-000000000000", "page_token": "bogus"}, {"page_token"}),
    ],
)
async def test_listing_decisions_with_bad_arguments(
    server: MatchingServer, request_fields: dict[str, object], violated: set[str]
) -> None:
    request = matching_pb2.ListMatchDecisionsRequest(**request_fields)  # type: ignore[arg-type]
    assert await refused(server, lambda: server.stub.ListMatchDecisions(request)) == violated
