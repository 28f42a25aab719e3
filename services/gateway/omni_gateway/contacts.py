"""What the gateway learns about a person at send time: the address from identity; traits, cart and consents
from profile.

Personal data stays in identity and profile; the gateway asks for it per send and keeps only the address
it sent to on the message.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import grpc
from google.protobuf import json_format

from omni.identity.v1 import identity_pb2, identity_pb2_grpc
from omni.profile.v1 import profile_pb2, profile_pb2_grpc
from omni_gateway.consent import Consent, ConsentState
from omni_gateway.domain import PermanentFailure, TransientFailure
from omni_gateway.rendering import CartLine
from omni_gateway.wire import channel_from_proto, purpose_from_proto

# Answers that will not change if asked again; anything else (UNAVAILABLE, DEADLINE_EXCEEDED …) may.
_FINAL_CODES = frozenset(
    {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}
)
_STATES = {
    profile_pb2.CONSENT_STATE_GRANTED: ConsentState.GRANTED,
    profile_pb2.CONSENT_STATE_DENIED: ConsentState.DENIED,
    profile_pb2.CONSENT_STATE_REVOKED: ConsentState.REVOKED,
}


@dataclass(frozen=True)
class PersonData:
    """The profile data a template is rendered with, and the consents the send is checked against."""

    traits: dict[str, Any] = field(default_factory=dict)
    cart: list[CartLine] = field(default_factory=list)
    consents: list[Consent] = field(default_factory=list)


class Contacts:
    """Reads addresses from identity and profiles from profile, over their gRPC APIs."""

    def __init__(
        self,
        identity: identity_pb2_grpc.IdentityServiceAsyncStub,
        profile: profile_pb2_grpc.ProfileServiceAsyncStub,
    ) -> None:
        self._identity = identity
        self._profile = profile

    async def email_of(self, person_id: uuid.UUID) -> str:
        """The person's first email address (after merges, the survivor's).

        Raises PermanentFailure when the person is unknown or has no email, TransientFailure when identity
        cannot answer now.
        """
        try:
            response = await self._identity.GetPerson(identity_pb2.GetPersonRequest(person_id=str(person_id)))
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise PermanentFailure("person not found") from error
            raise _failure("identity", error) from error
        for identifier in response.person.identifiers:
            if identifier.type == "email" and identifier.value:
                return identifier.value
        raise PermanentFailure("no email address")

    async def data_of(self, person_id: uuid.UUID) -> PersonData:
        """The person's traits, cart and consents; a person without a profile has none of them.

        Raises TransientFailure when profile cannot answer now: without the consents nothing may be sent.
        """
        try:
            response = await self._profile.GetProfile(
                profile_pb2.GetProfileRequest(person_id=str(person_id), recent_event_count=0)
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return PersonData()
            raise _failure("profile", error) from error
        profile = response.profile
        traits = json_format.MessageToDict(profile.traits) if profile.HasField("traits") else {}
        cart = [
            CartLine(
                product_id=item.product_id,
                name=item.name,
                quantity=item.quantity,
                unit_price_minor=item.unit_price.amount_minor,
                currency=item.unit_price.currency_code,
            )
            for item in profile.cart.items
        ]
        consents = [c for c in map(_consent, profile.consents) if c is not None]
        return PersonData(traits=traits, cart=cart, consents=consents)


def _consent(consent: profile_pb2.Consent) -> Consent | None:
    """The domain consent of profile's; None for answers that bear on no message (personalization or
    analytics, a channel or state this build does not know)."""
    channel = channel_from_proto(consent.channel)
    purpose = purpose_from_proto(consent.purpose)
    state = _STATES.get(consent.state)
    if channel is None or purpose is None or state is None:
        return None
    return Consent(
        channel=channel,
        purpose=purpose,
        state=state,
        contact_allowed=consent.contact_allowed,
        pending_confirmation=consent.double_opt_in == profile_pb2.DOUBLE_OPT_IN_STATE_PENDING_CONFIRMATION,
        updated_at=consent.update_time.ToDatetime(tzinfo=UTC) if consent.HasField("update_time") else None,
    )


def _failure(service: str, error: grpc.aio.AioRpcError) -> PermanentFailure | TransientFailure:
    text = f"{service}: {error.code().name}: {error.details() or ''}".rstrip(": ")
    if error.code() in _FINAL_CODES:
        return PermanentFailure(text)
    return TransientFailure(text)
