"""The IdentityService servicer: validates requests, translates protobuf ⇄ domain, owns the transaction."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc
from sqlalchemy.exc import DBAPIError

from omni.identity.v1 import identity_pb2, identity_pb2_grpc
from omni_identity import paging
from omni_identity.events import OutboxPublisher, identifier_messages
from omni_identity.merge import MergeRecord
from omni_identity.normalise import IdentifierError, IdentifierKey, Normaliser
from omni_identity.persons import Persons
from omni_identity.repository import ConcurrentMerge, IdentityRepository, PersonRecord
from omni_identity.resolution import Resolution, ResolveRequest, dedupe
from omni_kit.errors import Unavailable, Violations
from omni_kit.ids import parse_uuid
from omni_kit.runtime import Runtime

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_BATCH = 1000
MAX_IDENTIFIERS_PER_REQUEST = 100
MAX_IDENTIFIERS_PER_BATCH = 10_000
_YIELD_EVERY = 500
MAX_SOURCE_LENGTH = 128

# Deadlock, serialisation failure, unique violation: the locks make them unexpected, but if one happens
# the whole transaction is safe to run again.
_RETRYABLE_SQLSTATES = {"40P01", "40001", "23505"}
_ATTEMPTS = 3
# Each run that a concurrent merge overtakes sees that merge in the next; merges only retire persons.
_MAX_RUNS = 50


class IdentityServicer(identity_pb2_grpc.IdentityServiceServicer):
    """gRPC face of the identity graph."""

    def __init__(self, runtime: Runtime, persons: Persons, normaliser: Normaliser) -> None:
        self._runtime = runtime
        self._persons = persons
        self._normaliser = normaliser

    async def ResolvePerson(
        self, request: identity_pb2.ResolvePersonRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.ResolvePersonResponse:
        """Resolve one identifier set."""
        violations = Violations()
        resolve = self._resolve_request(request, "", violations)
        violations.raise_if_any()
        assert resolve is not None
        [resolution] = await self._resolve([resolve])
        return identity_pb2.ResolvePersonResponse(resolution=_resolution_message(resolution))

    async def BatchResolvePersons(
        self, request: identity_pb2.BatchResolvePersonsRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.BatchResolvePersonsResponse:
        """Resolve many identifier sets in order, in one transaction."""
        violations = Violations()
        violations.check(len(request.requests) > 0, "requests", "at least one request is required")
        violations.check(
            len(request.requests) <= MAX_BATCH, "requests", f"at most {MAX_BATCH} requests per batch"
        )
        total = sum(len(item.identifiers) for item in request.requests)
        violations.check(
            total <= MAX_IDENTIFIERS_PER_BATCH,
            "requests",
            f"at most {MAX_IDENTIFIERS_PER_BATCH} identifiers in all the requests of a batch",
        )
        violations.raise_if_any()
        resolves = []
        since_yield = 0
        for i, item in enumerate(request.requests):
            resolves.append(self._resolve_request(item, f"requests[{i}].", violations))
            since_yield += len(item.identifiers)
            if since_yield >= _YIELD_EVERY:
                # Phone parsing costs ~25 µs a number: let other calls run between slices of a big batch.
                await asyncio.sleep(0)
                since_yield = 0
        violations.raise_if_any()
        resolutions = await self._resolve([r for r in resolves if r is not None])
        return identity_pb2.BatchResolvePersonsResponse(
            resolutions=[_resolution_message(r) for r in resolutions]
        )

    async def GetPerson(
        self, request: identity_pb2.GetPersonRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.GetPersonResponse:
        """Show a person; a merged person's id leads to the survivor."""
        violations = Violations()
        person_id = _person_id(request.person_id, "person_id", violations)
        violations.raise_if_any()
        assert person_id is not None
        async with self._runtime.transaction() as session:
            person = await self._persons.get(IdentityRepository(session), person_id)
        return identity_pb2.GetPersonResponse(person=_person_message(person))

    async def LookupPerson(
        self, request: identity_pb2.LookupPersonRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.LookupPersonResponse:
        """Find the person holding one identifier, creating nothing."""
        violations = Violations()
        key = None
        if violations.check(request.HasField("identifier"), "identifier", "is required"):
            key = self._identifier(
                request.identifier.type, request.identifier.value, "identifier", violations
            )
        violations.raise_if_any()
        assert key is not None
        async with self._runtime.transaction() as session:
            person = await self._persons.lookup(IdentityRepository(session), key)
        return identity_pb2.LookupPersonResponse(person=_person_message(person))

    async def ListPersonMerges(
        self, request: identity_pb2.ListPersonMergesRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.ListPersonMergesResponse:
        """List a person's lineage, a page at a time."""
        violations = Violations()
        person_id = _person_id(request.person_id, "person_id", violations)
        limit = after = None
        try:
            limit = paging.page_size(request.page_size)
        except ValueError as error:
            violations.add("page_size", str(error))
        try:
            after = paging.decode_token(request.page_token)
        except ValueError as error:
            violations.add("page_token", str(error))
        violations.raise_if_any()
        assert person_id is not None and limit is not None
        async with self._runtime.transaction() as session:
            _, merges = await self._persons.lineage(
                IdentityRepository(session), person_id, after=after, limit=limit + 1
            )
        response = identity_pb2.ListPersonMergesResponse(merges=[_merge_message(m) for m in merges[:limit]])
        if len(merges) > limit:
            response.next_page_token = paging.encode_token(merges[limit - 1].id)
        return response

    def _resolve_request(
        self, request: identity_pb2.ResolvePersonRequest, prefix: str, violations: Violations
    ) -> ResolveRequest | None:
        """Validate and normalise one identifier set, recording violations under prefix (None if it has any)."""
        count = len(request.identifiers)
        violations.check(count > 0, f"{prefix}identifiers", "at least one identifier is required")
        violations.check(
            count <= MAX_IDENTIFIERS_PER_REQUEST,
            f"{prefix}identifiers",
            f"at most {MAX_IDENTIFIERS_PER_REQUEST} identifiers per request",
        )
        violations.check(
            len(request.source) <= MAX_SOURCE_LENGTH,
            f"{prefix}source",
            f"is longer than {MAX_SOURCE_LENGTH} characters",
        )
        keys = []
        valid = count > 0
        for i, identifier in enumerate(request.identifiers):
            key = self._identifier(identifier.type, identifier.value, f"{prefix}identifiers[{i}]", violations)
            if key is None:
                valid = False
            else:
                keys.append(key)
        if not valid:
            return None
        return ResolveRequest(identifiers=dedupe(keys), source=request.source.strip())

    def _identifier(
        self, type_name: str, value: str, path: str, violations: Violations
    ) -> IdentifierKey | None:
        try:
            return self._normaliser.normalise(type_name, value)
        except IdentifierError as error:
            violations.add(f"{path}.{error.part}", error.description)
            return None

    async def _resolve(self, requests: Sequence[ResolveRequest]) -> list[Resolution]:
        async def work() -> list[Resolution]:
            async with self._runtime.transaction() as session:
                publisher = OutboxPublisher(self._runtime.outbox, session)
                return await self._persons.resolve(IdentityRepository(session), publisher, requests)

        return await _retrying(work)


async def _retrying(work: Callable[[], Awaitable[T]]) -> T:
    """Run a transaction again when a concurrent merge overtook it or the database aborted it."""
    aborts = 0
    for _ in range(_MAX_RUNS):
        try:
            return await work()
        except ConcurrentMerge as overtaken:
            # Expected now and then under concurrency: the locks were released, the next run sees the merge.
            log.debug("resolve overtaken by a merge, running again: %s", overtaken)
        except DBAPIError as error:
            sqlstate = _sqlstate(error)
            if sqlstate not in _RETRYABLE_SQLSTATES:
                raise
            aborts += 1
            log.warning("resolve aborted (SQLSTATE %s), attempt %d of %d", sqlstate, aborts, _ATTEMPTS)
            if aborts == _ATTEMPTS:
                raise Unavailable(message="the identity graph is busy; try again") from error
            await asyncio.sleep(0.01 * aborts)
    raise Unavailable(message="the identity graph kept changing under this request; try again")


def _sqlstate(error: DBAPIError) -> str | None:
    orig = error.orig
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def _person_id(value: str, path: str, violations: Violations) -> uuid.UUID | None:
    if not value.strip():
        violations.add(path, "is required")
        return None
    parsed = parse_uuid(value.strip())
    if parsed is None:
        violations.add(path, "is not a person id (a UUID)")
    return parsed


def _resolution_message(resolution: Resolution) -> identity_pb2.Resolution:
    return identity_pb2.Resolution(
        person_id=str(resolution.person_id),
        created=resolution.created,
        merged_person_ids=[str(pid) for pid in resolution.merged_person_ids],
        added_identifiers=identifier_messages(resolution.added_identifiers),
    )


def _merge_message(merge: MergeRecord) -> identity_pb2.Merge:
    message = identity_pb2.Merge(
        id=str(merge.id),
        survivor_person_id=str(merge.survivor_id),
        merged_person_id=str(merge.merged_id),
        cause_identifiers=identifier_messages(merge.cause_identifiers),
        source=merge.source,
    )
    message.merge_time.FromDatetime(merge.merged_at)
    return message


def _person_message(person: PersonRecord) -> identity_pb2.Person:
    message = identity_pb2.Person(
        id=str(person.id),
        identifiers=identifier_messages(person.identifiers),
        merged_person_ids=[str(pid) for pid in person.merged_person_ids],
    )
    message.create_time.FromDatetime(person.created_at)
    return message
