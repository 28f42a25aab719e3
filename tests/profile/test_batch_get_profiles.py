"""BatchGetProfiles: many profiles in one call (the gateway's traits and carts for a batch of sends)."""

from __future__ import annotations

import uuid

import grpc
import pytest

from omni.profile.v1 import profile_pb2
from omni_kit.errors import status_details

from .support import Services, event, struct, track


async def test_each_id_is_answered_in_order_and_an_unknown_one_without_a_profile(services: Services) -> None:
    first = (await track(services, event("page_viewed"))).person_id
    await services.profile.SetTraits(
        profile_pb2.SetTraitsRequest(person_id=first, traits=struct({"first_name": "Ada"}), source="test")
    )
    second = (await track(services, event("page_viewed"))).person_id
    unknown = str(uuid.uuid4())

    response = await services.profile.BatchGetProfiles(
        profile_pb2.BatchGetProfilesRequest(person_ids=[second, unknown, first])
    )

    got_second, missing, got_first = response.results
    assert got_second.person_id == second and got_second.profile.person_id == second
    assert got_first.profile.traits["first_name"] == "Ada"
    assert not got_first.profile.recent_events
    assert missing.person_id == unknown and not missing.HasField("profile")
    assert missing.not_found_reason == "PERSON_NOT_FOUND"


@pytest.mark.parametrize(
    ("person_ids", "fields"),
    [
        ([], {"person_ids"}),
        ([str(uuid.uuid4()), "nope"], {"person_ids[1]"}),
        ([str(uuid.uuid4())] * 501, {"person_ids"}),
    ],
    ids=["none", "malformed", "too-many"],
)
async def test_bad_ids_are_refused(services: Services, person_ids: list[str], fields: set[str]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await services.profile.BatchGetProfiles(profile_pb2.BatchGetProfilesRequest(person_ids=person_ids))
    details = status_details(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == fields
