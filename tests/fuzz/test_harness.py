"""The fuzz harness's own checks can fail: a write between a snapshot and its check is seen, garbage bytes reach
the server as such, and a known-good seed is accepted."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from omni.common.v1 import common_pb2
from omni.identity.v1 import identity_pb2

from ..e2e.conftest import Omni
from .support import Target, call, fuzz_target

SERVICES = [identity_pb2.DESCRIPTOR.services_by_name["IdentityService"]]
RESOLVE = SERVICES[0].methods_by_name["ResolvePerson"]


@pytest.fixture(scope="module")
async def target(omni: Omni) -> AsyncIterator[Target]:
    async with fuzz_target(
        "identity", omni.runtimes["identity"], omni.channels["identity"], SERVICES, {}
    ) as t:
        yield t


def _resolve(value: str) -> bytes:
    request = identity_pb2.ResolvePersonRequest(
        identifiers=[common_pb2.Identifier(type="email", value=value)]
    )
    return request.SerializeToString()


async def test_a_write_between_snapshot_and_check_is_seen(target: Target) -> None:
    before = await target.snapshot()
    outcome = await call(target, RESOLVE, [_resolve(f"h-{uuid.uuid4().hex[:8]}@example.com")])
    assert outcome.code == grpc.StatusCode.OK
    written = await target.writes_since(before)
    assert {"persons", "identifiers", "outbox"} <= set(written)


async def test_a_refusal_leaves_no_trace_and_garbage_is_refused(target: Target) -> None:
    before = await target.snapshot()
    refused = await call(target, RESOLVE, [_resolve("not an email")])
    garbage = await call(target, RESOLVE, [b"\xff\xff\xff"])
    assert refused.code == garbage.code == grpc.StatusCode.INVALID_ARGUMENT
    assert await target.writes_since(before) == {}
    await target.serving()
