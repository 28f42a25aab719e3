"""Profile as a journey's update-profile step reaches it: SetTraits, once per request id."""

from __future__ import annotations

import uuid
from typing import Any

from google.protobuf import struct_pb2

from omni.profile.v1 import profile_pb2, profile_pb2_grpc

PROFILE_SERVICE = "omni.profile.v1.ProfileService"


class ProfileTraits:
    """Sets traits through profile's SetTraits (source "journey"); a repeated request id sets nothing again."""

    def __init__(self, stub: profile_pb2_grpc.ProfileServiceAsyncStub) -> None:
        self._stub = stub

    async def __call__(self, person_id: uuid.UUID, traits: dict[str, Any], request_id: str) -> None:
        values = struct_pb2.Struct()
        values.update(traits)
        await self._stub.SetTraits(
            profile_pb2.SetTraitsRequest(
                person_id=str(person_id), traits=values, source="journey", request_id=request_id[:128]
            )
        )
