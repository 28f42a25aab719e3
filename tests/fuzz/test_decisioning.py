"""Fuzzing decisioning's RPCs through the real server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from google.protobuf.descriptor import MethodDescriptor
from hypothesis import given
from hypothesis import strategies as st

from omni.decisioning.v1 import decisioning_pb2, experiments_pb2, reports_pb2

from ..e2e.conftest import Omni
from .seeds import decisioning_seeds
from .support import Known, Target, fuzz, fuzz_settings, fuzz_target, rpcs

SERVICES = [
    decisioning_pb2.DESCRIPTOR.services_by_name["DecisioningService"],
    experiments_pb2.DESCRIPTOR.services_by_name["ExperimentService"],
    reports_pb2.DESCRIPTOR.services_by_name["ReportService"],
]
KNOWN: dict[str, Known] = {}


@pytest.fixture(scope="module")
async def target(omni: Omni) -> AsyncIterator[Target]:
    """Decisioning with an offer and a journey defined."""
    seeds = await decisioning_seeds(omni)
    async with fuzz_target(
        "decisioning", omni.runtimes["decisioning"], omni.channels["decisioning"], SERVICES, seeds
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
