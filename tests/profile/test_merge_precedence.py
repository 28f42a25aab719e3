"""A merge keeps, trait by trait, the value of the most trusted source, whichever person survives."""

from __future__ import annotations

import pytest

from omni.common.v1 import common_pb2
from omni.events.v1 import envelope_pb2
from omni.profile.v1 import events_pb2, profile_pb2
from omni_kit.bus import unpack

from .support import Services, event, get_profile, ident, struct, track, unique


def _merged_into(survivor: str):  # type: ignore[no-untyped-def]
    def matches(envelope: envelope_pb2.Envelope) -> bool:
        if envelope.type != "profile.profile_changed":
            return False
        return unpack(envelope, events_pb2.ProfileChangedEvent).person_id == survivor and bool(
            unpack(envelope, events_pb2.ProfileChangedEvent).merged_person_ids
        )

    return matches


async def _person(services: Services, identifier: common_pb2.Identifier) -> str:
    return (await track(services, event("page_viewed", identifiers=[identifier]))).person_id


async def _set(services: Services, person_id: str, source: str, **traits: str) -> None:
    await services.profile.SetTraits(
        profile_pb2.SetTraitsRequest(person_id=person_id, traits=struct(traits), source=source)
    )


@pytest.mark.parametrize("crm_on", ["older", "newer"])
async def test_the_crm_value_wins_over_the_web_value_in_a_merge(services: Services, crm_on: str) -> None:
    # Identity makes the older person the survivor: the crm value is on the survivor, or on the person merged.
    cookie, device = unique("cookie-"), unique("device-")
    older = await _person(services, ident("anonymous_id", cookie))
    newer = await _person(services, ident("device_id", device))
    crm, web = (older, newer) if crm_on == "older" else (newer, older)
    await _set(services, crm, "crm", plan="gold", city="Oslo")
    await _set(services, web, "web", plan="silver", nickname="ada99")

    login = await track(
        services, event("logged_in", identifiers=[ident("anonymous_id", cookie), ident("device_id", device)])
    )
    assert login.person_id == older

    await services.events.wait_for(_merged_into(older))
    profile = await get_profile(services, older)
    assert dict(profile.traits) == {"plan": "gold", "city": "Oslo", "nickname": "ada99"}
    assert profile.trait_metadata["plan"].source == "crm"
    assert profile.trait_metadata["nickname"].source == "web"
