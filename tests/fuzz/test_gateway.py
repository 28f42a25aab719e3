"""Fuzzing the gateway's RPCs through the real server (identity and profile behind it)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from google.protobuf.descriptor import MethodDescriptor
from hypothesis import given
from hypothesis import strategies as st

from omni.gateway.v1 import gateway_pb2

from ..e2e.conftest import Omni
from .seeds import gateway_seeds
from .support import Known, Target, fuzz, fuzz_settings, fuzz_target, rpcs

SERVICES = [gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"]]
KNOWN: dict[str, Known] = {}


@pytest.fixture(scope="module")
async def target(omni: Omni) -> AsyncIterator[Target]:
    """The gateway with a template and a message sent to a consenting person."""
    seeds = await gateway_seeds(omni)
    async with fuzz_target(
        "gateway", omni.runtimes["gateway"], omni.channels["gateway"], SERVICES, seeds
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
