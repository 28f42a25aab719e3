"""Whether identity knows an identifier: how an alias call's previousId is told apart (cookie or user id)."""

from __future__ import annotations

import grpc

from omni.common.v1 import common_pb2
from omni.identity.v1 import identity_pb2, identity_pb2_grpc
from omni_kit.errors import Unavailable

# A value identity refuses is held by no one; the resolve that follows reports it on the message.
_NOT_HELD = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)


class IdentifierLookup:
    """Asks identity's LookupPerson, which creates nothing."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = identity_pb2_grpc.IdentityServiceStub(channel)

    async def held(self, type_: str, value: str) -> bool:
        """True when some person holds the identifier."""
        request = identity_pb2.LookupPersonRequest(identifier=common_pb2.Identifier(type=type_, value=value))
        try:
            await self._stub.LookupPerson(request)
        except grpc.aio.AioRpcError as error:
            if error.code() in _NOT_HELD:
                return False
            raise Unavailable(
                message=f"identity is unavailable: {error.details()}", reason="IDENTITY_UNAVAILABLE"
            ) from error
        return True
