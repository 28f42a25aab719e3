"""From what a till read to a person, and what decisioning offers them at the till.

A phone number typed at a till is read in the store's region (`phonenumbers`), so "030 1234567" at a Berlin
store is +49301234567, then looked up at identity like every identifier (identity normalises again, the same
way). The two calls on the identification's path, identity's LookupPerson and decisioning's Decide, each get
`terminal_call_timeout_s`: a till is never kept waiting on a service that does not answer.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field

import grpc
import phonenumbers
from google.protobuf import struct_pb2

from omni.common.v1 import common_pb2
from omni.decisioning.v1 import decisioning_pb2, decisioning_pb2_grpc
from omni.gateway.v1 import gateway_pb2
from omni.identity.v1 import identity_pb2, identity_pb2_grpc
from omni_kit.errors import FieldViolation, InvalidArgument, Unavailable, Violations
from omni_kit.ids import parse_uuid

IDENTIFIER_TYPES: dict[int, str] = {
    gateway_pb2.TERMINAL_IDENTIFIER_TYPE_LOYALTY_CARD: "loyalty_card",
    gateway_pb2.TERMINAL_IDENTIFIER_TYPE_PHONE: "phone",
    gateway_pb2.TERMINAL_IDENTIFIER_TYPE_EMAIL: "email",
    gateway_pb2.TERMINAL_IDENTIFIER_TYPE_USER_ID: "user_id",
}
"""The till's identifier types, as identity names them."""

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_VALUE = "customer_identified.identifier_value"


def identifier_of(
    found: gateway_pb2.CustomerIdentified, region: str, violations: Violations
) -> common_pb2.Identifier | None:
    """The identifier to look up, normalised where the store's context matters (a national phone number);
    None with a violation recorded when the value cannot be one of its type."""
    kind = IDENTIFIER_TYPES.get(found.identifier_type)
    value = found.identifier_value.strip()
    if kind is None or violations.names(_VALUE):
        return None
    if kind == "phone":
        try:
            number = phonenumbers.parse(value, region)
        except phonenumbers.NumberParseException:
            number = None
        if number is None or not phonenumbers.is_valid_number(number):
            violations.add(_VALUE, f"not a valid phone number (national numbers are read in {region})")
            return None
        value = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    elif kind == "email" and not _EMAIL.match(value):
        violations.add(_VALUE, "not an email address")
        return None
    return common_pb2.Identifier(type=kind, value=value)


@dataclass(frozen=True)
class Decision:
    """Decisioning's answer for the till, or why there is none."""

    decision_id: str = ""
    actions: list[decisioning_pb2.Action] = field(default_factory=list)
    error: str = ""


class Recognition:
    """Asks identity who a customer is and decisioning what to offer them at the till."""

    def __init__(
        self,
        identity: identity_pb2_grpc.IdentityServiceAsyncStub,
        decisioning: decisioning_pb2_grpc.DecisioningServiceAsyncStub,
        *,
        touchpoint: str,
        offer_limit: int,
        timeout_s: float,
    ) -> None:
        self._identity = identity
        self._decisioning = decisioning
        self._touchpoint = touchpoint
        self._offer_limit = offer_limit
        self._timeout_s = timeout_s

    async def person_of(self, identifier: common_pb2.Identifier) -> uuid.UUID | None:
        """The person holding the identifier (after merges, the survivor); None if nobody does.

        Raises InvalidArgument when identity refuses the value, Unavailable when it does not answer in time.
        """
        try:
            response = await self._identity.LookupPerson(
                identity_pb2.LookupPersonRequest(identifier=identifier), timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(
                    message="identity refused the identifier",
                    violations=[FieldViolation(_VALUE, error.details() or "refused by identity")],
                ) from error
            raise Unavailable(
                message=f"identity did not answer: {error.code().name}", reason="IDENTITY_UNAVAILABLE"
            ) from error
        return parse_uuid(response.person.id)

    async def decide(self, person_id: uuid.UUID, store_id: str, terminal_id: str) -> Decision:
        """Decisioning's offers for the person at the till; an empty decision with the error when decisioning
        does not answer in time (the till still gets the person's messages)."""
        context = struct_pb2.Struct()
        context.update({"store_id": store_id, "terminal_id": terminal_id})
        try:
            response = await self._decisioning.Decide(
                decisioning_pb2.DecideRequest(
                    person_id=str(person_id),
                    touchpoint=self._touchpoint,
                    channel=common_pb2.CHANNEL_STORE,
                    context=context,
                    limit=self._offer_limit,
                ),
                timeout=self._timeout_s,
            )
        except grpc.aio.AioRpcError as error:
            return Decision(error=f"decisioning: {error.code().name}")
        return Decision(response.decision_id, list(response.actions))
