"""What the gateway learns about a person at send time: who the person is now and their address from
identity; traits and cart from profile. (Whether the person may be contacted is profile's verdict, kept by
the gateway as it is announced: omni_kit.contact.)

Personal data stays in identity and profile; the gateway asks for it per send and keeps only the address
it sent to on the message.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import json_format

from omni.identity.v1 import identity_pb2, identity_pb2_grpc
from omni.profile.v1 import profile_pb2, profile_pb2_grpc
from omni_gateway.domain import PermanentFailure, TransientFailure
from omni_gateway.providers.base import PersonContacts
from omni_gateway.rendering import CartLine
from omni_kit.ids import parse_uuid

BATCH = 500
"""Ids per BatchGetPersons call (identity's limit)."""

# Answers that will not change if asked again; anything else (UNAVAILABLE, DEADLINE_EXCEEDED …) may.
_FINAL_CODES = frozenset(
    {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}
)


@dataclass(frozen=True)
class PersonData:
    """The profile data a template is rendered with."""

    traits: dict[str, Any] = field(default_factory=dict)
    cart: list[CartLine] = field(default_factory=list)


class Contacts:
    """Reads addresses from identity and profiles from profile, over their gRPC APIs."""

    def __init__(
        self,
        identity: identity_pb2_grpc.IdentityServiceAsyncStub,
        profile: profile_pb2_grpc.ProfileServiceAsyncStub,
    ) -> None:
        self._identity = identity
        self._profile = profile

    async def person_of(self, person_id: uuid.UUID) -> PersonContacts:
        """The person an id stands for now (after merges, the survivor) and its identifiers by type, in
        identity's order; each channel's provider picks the address it needs (`address_of`).

        Raises PermanentFailure when the person is unknown, TransientFailure when identity cannot answer now.
        """
        try:
            response = await self._identity.GetPerson(identity_pb2.GetPersonRequest(person_id=str(person_id)))
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise PermanentFailure("person not found") from error
            raise _failure("identity", error) from error
        return _contacts(person_id, response.person)

    async def persons_of(
        self, person_ids: list[uuid.UUID]
    ) -> dict[uuid.UUID, PersonContacts | PermanentFailure]:
        """What `person_of` says of each of these ids, in one call to identity (BatchGetPersons, at most
        BATCH ids a call): the person, or PermanentFailure("person not found") for an unknown or forgotten
        id. Raises TransientFailure when identity cannot answer now (the caller may ask one by one later)."""
        found: dict[uuid.UUID, PersonContacts | PermanentFailure] = {}
        unique_ids = list(dict.fromkeys(person_ids))
        for start in range(0, len(unique_ids), BATCH):
            chunk = unique_ids[start : start + BATCH]
            try:
                response = await self._identity.BatchGetPersons(
                    identity_pb2.BatchGetPersonsRequest(person_ids=[str(i) for i in chunk])
                )
            except grpc.aio.AioRpcError as error:
                raise _failure("identity", error) from error
            for asked, result in zip(chunk, response.results, strict=False):
                if not result.HasField("person"):
                    found[asked] = PermanentFailure("person not found")
                    continue
                found[asked] = _contacts(asked, result.person)
        return found

    async def data_of_many(self, person_ids: list[uuid.UUID]) -> dict[uuid.UUID, PersonData]:
        """What `data_of` says of each of these ids, in one call to profile (BatchGetProfiles, at most BATCH
        ids a call); a person without a profile has no traits and no cart. Raises TransientFailure when
        profile cannot answer now."""
        found: dict[uuid.UUID, PersonData] = {}
        unique_ids = list(dict.fromkeys(person_ids))
        for start in range(0, len(unique_ids), BATCH):
            chunk = unique_ids[start : start + BATCH]
            try:
                response = await self._profile.BatchGetProfiles(
                    profile_pb2.BatchGetProfilesRequest(person_ids=[str(i) for i in chunk])
                )
            except grpc.aio.AioRpcError as error:
                raise _failure("profile", error) from error
            for asked, result in zip(chunk, response.results, strict=False):
                found[asked] = _data(result.profile) if result.HasField("profile") else PersonData()
        return found

    async def data_of(self, person_id: uuid.UUID) -> PersonData:
        """The person's traits and cart; a person without a profile has none of them.

        Raises TransientFailure when profile cannot answer now.
        """
        try:
            response = await self._profile.GetProfile(
                profile_pb2.GetProfileRequest(person_id=str(person_id), recent_event_count=0)
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return PersonData()
            raise _failure("profile", error) from error
        return _data(response.profile)


def _data(profile: profile_pb2.Profile) -> PersonData:
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
    return PersonData(traits=traits, cart=cart)


def _contacts(asked: uuid.UUID, person: identity_pb2.Person) -> PersonContacts:
    identifiers: dict[str, list[str]] = {}
    for identifier in person.identifiers:
        if identifier.value:
            identifiers.setdefault(identifier.type, []).append(identifier.value)
    return PersonContacts(parse_uuid(person.id) or asked, identifiers)


def _failure(service: str, error: grpc.aio.AioRpcError) -> PermanentFailure | TransientFailure:
    text = f"{service}: {error.code().name}: {error.details() or ''}".rstrip(": ")
    if error.code() in _FINAL_CODES:
        return PermanentFailure(text)
    return TransientFailure(text)
