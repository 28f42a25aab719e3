"""Fuzzing profile's RPCs through the real server (identity behind it)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from google.protobuf.descriptor import MethodDescriptor
from hypothesis import given
from hypothesis import strategies as st

from omni.profile.v1 import profile_pb2

from ..e2e.conftest import Omni
from .seeds import profile_seeds
from .support import Known, Target, fuzz, fuzz_settings, fuzz_target, rpcs

SERVICES = [profile_pb2.DESCRIPTOR.services_by_name["ProfileService"]]
KNOWN: dict[str, Known] = {}
# Batches and streams answer OK with each event's fate: when none was recorded, nothing may be written.
REFUSED_WHEN = {
    "BatchTrackEvents": lambda r: r.recorded_count == 0,
    "StreamTrackEvents": lambda r: r.accepted == 0,
}


@pytest.fixture(scope="module")
async def target(omni: Omni) -> AsyncIterator[Target]:
    """Profile with a person who has events, traits, consent, and a computed trait defined."""
    seeds = await profile_seeds(omni)
    async with fuzz_target(
        "profile",
        omni.runtimes["profile"],
        omni.channels["profile"],
        SERVICES,
        seeds,
        refused_when=REFUSED_WHEN,
        # A computed trait's backfill (started by CreateComputedTrait) writes profiles in the background.
        busy_when={"computed_traits": "state = 'backfilling'"},
    ) as t:
        yield t


@pytest.mark.parametrize("method", rpcs(SERVICES, "generated", KNOWN))
@fuzz_settings(25)
@given(data=st.data())
async def test_generated_requests(target: Target, method: MethodDescriptor, data: st.DataObject) -> None:
    await fuzz(target, method, "generated", data)


@pytest.mark.parametrize("method", rpcs(SERVICES, "mutated", KNOWN))
@fuzz_settings(25)
@given(data=st.data())
async def test_mutated_requests(target: Target, method: MethodDescriptor, data: st.DataObject) -> None:
    await fuzz(target, method, "mutated", data)


@pytest.mark.parametrize("method", rpcs(SERVICES, "garbage", KNOWN))
@fuzz_settings(15)
@given(data=st.data())
async def test_garbage_bytes(target: Target, method: MethodDescriptor, data: st.DataObject) -> None:
    await fuzz(target, method, "garbage", data)
