"""Helpers of the identity tests: the running service, the events it published, request builders."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from omni.common.v1 import common_pb2
from omni.events.v1 import envelope_pb2
from omni.identity.v1 import identity_pb2, identity_pb2_grpc
from omni_kit.runtime import Runtime


@dataclass
class Identity:
    """A running identity service and a client of it."""

    runtime: Runtime
    stub: identity_pb2_grpc.IdentityServiceStub
    namespace: str


@dataclass
class EventLog:
    """Envelopes published on the test's namespace since the subscription started."""

    envelopes: list[envelope_pb2.Envelope] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def of_type(self, event_type: str) -> list[envelope_pb2.Envelope]:
        """The envelopes of one event type, in arrival order."""
        return [e for e in self.envelopes if e.type == event_type]

    async def wait_for(self, event_type: str, count: int = 1) -> list[envelope_pb2.Envelope]:
        """Wait (up to 5 s) until at least count envelopes of event_type arrived; return them."""
        async with asyncio.timeout(5.0):
            while len(self.of_type(event_type)) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.of_type(event_type)


def ident(type_: str, value: str) -> common_pb2.Identifier:
    """An identifier message."""
    return common_pb2.Identifier(type=type_, value=value)


def unique(prefix: str = "") -> str:
    """A value no other test uses."""
    return prefix + uuid.uuid4().hex[:12]


def pairs(identifiers: Iterable[common_pb2.Identifier]) -> set[tuple[str, str]]:
    """Identifier messages as (type, value) pairs."""
    return {(i.type, i.value) for i in identifiers}


async def resolve(
    identity: Identity, *identifiers: common_pb2.Identifier, source: str = "test", reference: str = ""
) -> identity_pb2.Resolution:
    """Resolve one identifier set and return its resolution."""
    response = await identity.stub.ResolvePerson(
        identity_pb2.ResolvePersonRequest(identifiers=list(identifiers), source=source, reference=reference)
    )
    return response.resolution


async def person(identity: Identity, person_id: str) -> identity_pb2.Person:
    """The person an id leads to."""
    return (await identity.stub.GetPerson(identity_pb2.GetPersonRequest(person_id=person_id))).person


async def unmerge(
    identity: Identity, person_id: str, *, request_id: str | None = None, reason: str = "wrong merge"
) -> identity_pb2.UnmergePersonResponse:
    """Split a merged person back out."""
    return await identity.stub.UnmergePerson(
        identity_pb2.UnmergePersonRequest(
            request_id=request_id or unique("unmerge-"), person_id=person_id, reason=reason
        )
    )


async def merge_persons(
    identity: Identity,
    survivor: str,
    merged: str,
    *,
    request_id: str | None = None,
    reason: str = "same customer",
) -> identity_pb2.MergePersonsResponse:
    """Merge one person into another as an operator."""
    return await identity.stub.MergePersons(
        identity_pb2.MergePersonsRequest(
            request_id=request_id or unique("merge-"),
            survivor_person_id=survivor,
            merged_person_id=merged,
            reason=reason,
        )
    )


async def forget(
    identity: Identity,
    person_id: str,
    *,
    request_id: str | None = None,
    requested_by: str = "dpo@example.com",
    reason: str = "erasure request",
) -> identity_pb2.ForgetPersonResponse:
    """Erase a person."""
    return await identity.stub.ForgetPerson(
        identity_pb2.ForgetPersonRequest(
            request_id=request_id or unique("forget-"),
            person_id=person_id,
            requested_by=requested_by,
            reason=reason,
        )
    )


async def identifiers_of(
    identity: Identity, person_id: str, page_size: int = 0
) -> list[identity_pb2.PersonIdentifier]:
    """Every identifier of a person with its attachment, fetched page by page."""
    found: list[identity_pb2.PersonIdentifier] = []
    token = ""
    while True:
        response = await identity.stub.ListPersonIdentifiers(
            identity_pb2.ListPersonIdentifiersRequest(
                person_id=person_id, page_size=page_size, page_token=token
            )
        )
        found += response.identifiers
        token = response.next_page_token
        if not token:
            return found


async def refused_links_of(
    identity: Identity, person_id: str, page_size: int = 0
) -> list[identity_pb2.RefusedLink]:
    """Every refused link involving a person, fetched page by page."""
    found: list[identity_pb2.RefusedLink] = []
    token = ""
    while True:
        response = await identity.stub.ListRefusedLinks(
            identity_pb2.ListRefusedLinksRequest(person_id=person_id, page_size=page_size, page_token=token)
        )
        found += response.refused_links
        token = response.next_page_token
        if not token:
            return found
