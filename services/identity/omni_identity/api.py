"""The IdentityService servicer: validates requests, translates protobuf ⇄ domain, owns the transaction."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc
from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncSession

from omni.identity.v1 import identity_pb2, identity_pb2_grpc
from omni_identity import messages, paging
from omni_identity.changes import Resolution, ResolveRequest
from omni_identity.events import OutboxPublisher, identifier_messages
from omni_identity.normalise import IdentifierError, IdentifierKey, Normaliser
from omni_identity.operator_repository import OperatorRepository
from omni_identity.operators import Operators
from omni_identity.persons import Persons
from omni_identity.repository import ConcurrentMerge, IdentityRepository
from omni_identity.resolution import dedupe
from omni_kit import validation
from omni_kit.db import CONFLICT_SQLSTATES, retry_transaction
from omni_kit.errors import FailedPrecondition, FieldViolation, Unavailable, Violations
from omni_kit.grouping import Groups
from omni_kit.idempotency import idempotent
from omni_kit.runtime import Runtime

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R", bound=Message)

# A batch's sets may hold at most 100 identifiers each (identity.proto), and no more than this in all.
MAX_IDENTIFIERS_PER_BATCH = 10_000
_YIELD_EVERY = 500

# Deadlock, serialisation failure, unique violation: the locks make them unexpected, but if one happens
# the whole transaction is safe to run again.
_RETRYABLE_SQLSTATES = CONFLICT_SQLSTATES | {"23505"}
# Each run that a concurrent merge overtakes sees that merge in the next; merges only retire persons.
_MAX_RUNS = 50


class IdentityServicer(identity_pb2_grpc.IdentityServiceServicer):
    """gRPC face of the identity graph."""

    def __init__(
        self, runtime: Runtime, persons: Persons, operators: Operators, normaliser: Normaliser
    ) -> None:
        self._runtime = runtime
        self._persons = persons
        self._operators = operators
        self._normaliser = normaliser
        # Single resolves arriving together go in one transaction (omni_kit.grouping), resolved in arrival
        # order exactly like BatchResolvePersons (a later request sees what the earlier ones did). One group in
        # flight: once the graph's statements stopped scanning (see repository.py), a group's transaction took
        # less time than the Python work of the calls around it, and a second slot only made the groups
        # smaller and the work per call larger (at 1,000 calls/s offered, 597 answered a second with two
        # slots, 891 with one).
        self._singles: Groups[ResolveRequest, Resolution] = Groups(self._resolve, max_in_flight=1)

    async def ResolvePerson(
        self, request: identity_pb2.ResolvePersonRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.ResolvePersonResponse:
        """Resolve one identifier set."""
        # Counted before anything reads the identifiers: 4 MB hold half a million.
        validation.check_counts(request).raise_if_any()
        violations = validation.check(request)
        resolve = self._resolve_request(request, "", violations)
        violations.raise_if_any()
        assert resolve is not None
        resolution = await self._singles.call(resolve)
        if resolution.forgotten:
            # Nothing was written: the request held only identifiers of forgotten persons.
            raise FailedPrecondition(
                message="every identifier belongs to a forgotten person; drop the event",
                reason="PERSON_FORGOTTEN",
            )
        return identity_pb2.ResolvePersonResponse(resolution=messages.resolution_message(resolution))

    async def BatchResolvePersons(
        self, request: identity_pb2.BatchResolvePersonsRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.BatchResolvePersonsResponse:
        """Resolve many identifier sets in order, in one transaction."""
        # Counted before anything reads the sets: 4 MB hold two million empty ones.
        violations = validation.check_counts(request)
        if not violations:
            total = sum(len(item.identifiers) for item in request.requests)
            violations.check(
                total <= MAX_IDENTIFIERS_PER_BATCH,
                "requests",
                f"at most {MAX_IDENTIFIERS_PER_BATCH} identifiers in all the requests of a batch",
            )
        violations.raise_if_any()
        if not (request.requests and all(map(messages.surely_well_formed, request.requests))):
            validation.check(request, violations)
        resolves = []
        since_yield = 0
        for i, item in enumerate(request.requests):
            resolves.append(self._resolve_request(item, f"requests[{i}].", violations))
            since_yield += len(item.identifiers)
            if since_yield >= _YIELD_EVERY:
                # Phone parsing costs ~25 µs a number: let other calls run between slices of a big batch.
                await asyncio.sleep(0)
                since_yield = 0
        if not request.refuse_sets_individually:
            violations.raise_if_any()
            resolutions = await self._resolve([r for r in resolves if r is not None])
            return identity_pb2.BatchResolvePersonsResponse(
                resolutions=[messages.resolution_message(r) for r in resolutions]
            )
        refused = messages.violations_by_set(violations, len(request.requests))
        for i, resolve in enumerate(resolves):
            if resolve is None and i not in refused:
                refused[i] = [FieldViolation("identifiers", "holds no identifier to resolve")]
        kept = [r for i, r in enumerate(resolves) if r is not None and i not in refused]
        answers = iter(await self._resolve(kept) if kept else [])
        return identity_pb2.BatchResolvePersonsResponse(
            resolutions=[
                identity_pb2.Resolution() if i in refused else messages.resolution_message(next(answers))
                for i in range(len(resolves))
            ],
            refusals=[messages.refusal_message(i, refused[i]) for i in sorted(refused)],
        )

    async def GetPerson(
        self, request: identity_pb2.GetPersonRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.GetPersonResponse:
        """Show a person; a merged person's id leads to the survivor."""
        validation.validate(request)
        person_id = uuid.UUID(request.person_id)
        async with self._runtime.transaction() as session:
            person = await self._persons.get(IdentityRepository(session), person_id)
        return identity_pb2.GetPersonResponse(person=messages.person_message(person))

    async def BatchGetPersons(
        self, request: identity_pb2.BatchGetPersonsRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.BatchGetPersonsResponse:
        """Show many persons in one read transaction; an unknown or forgotten id answers no person."""
        validation.validate(request)
        results = []
        async with self._runtime.transaction() as session:
            repository = IdentityRepository(session)
            for raw_id in request.person_ids:
                record = await repository.person(uuid.UUID(raw_id))
                if record is None:
                    results.append(
                        identity_pb2.BatchGetPersonsResult(
                            person_id=raw_id, not_found_reason="PERSON_NOT_FOUND"
                        )
                    )
                elif record.forgotten_at is not None:
                    results.append(
                        identity_pb2.BatchGetPersonsResult(
                            person_id=raw_id, not_found_reason="PERSON_FORGOTTEN"
                        )
                    )
                else:
                    results.append(
                        identity_pb2.BatchGetPersonsResult(
                            person_id=raw_id, person=messages.person_message(record)
                        )
                    )
        return identity_pb2.BatchGetPersonsResponse(results=results)

    async def LookupPerson(
        self, request: identity_pb2.LookupPersonRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.LookupPersonResponse:
        """Find the person holding one identifier, creating nothing."""
        validation.validate(request)
        violations = Violations()
        key = self._identifier(request.identifier.type, request.identifier.value, "identifier", violations)
        violations.raise_if_any()
        assert key is not None
        async with self._runtime.transaction() as session:
            person = await self._persons.lookup(IdentityRepository(session), key)
        return identity_pb2.LookupPersonResponse(person=messages.person_message(person))

    async def ListPersonMerges(
        self, request: identity_pb2.ListPersonMergesRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.ListPersonMergesResponse:
        """List a person's lineage, a page at a time."""
        violations = validation.check(request)
        after = messages.page_token(request.page_token, paging.MERGES, violations)
        violations.raise_if_any()
        person_id, limit = uuid.UUID(request.person_id), paging.page_size(request.page_size)
        async with self._runtime.transaction() as session:
            _, merges = await self._persons.lineage(
                IdentityRepository(session), person_id, after=after, limit=limit + 1
            )
        response = identity_pb2.ListPersonMergesResponse(
            merges=[messages.merge_message(m) for m in merges[:limit]]
        )
        if len(merges) > limit:
            response.next_page_token = paging.encode_token(merges[limit - 1].id, paging.MERGES)
        return response

    async def ListPersonIdentifiers(
        self, request: identity_pb2.ListPersonIdentifiersRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.ListPersonIdentifiersResponse:
        """List a person's identifiers with how each was attached, a page at a time."""
        violations = validation.check(request)
        after = messages.page_token(request.page_token, paging.IDENTIFIERS, violations)
        violations.raise_if_any()
        person_id, limit = uuid.UUID(request.person_id), paging.page_size(request.page_size)
        async with self._runtime.transaction() as session:
            records = await self._persons.identifiers(
                IdentityRepository(session), person_id, after=after, limit=limit + 1
            )
        response = identity_pb2.ListPersonIdentifiersResponse(
            identifiers=[messages.person_identifier_message(r) for r in records[:limit]]
        )
        if len(records) > limit:
            response.next_page_token = paging.encode_token(records[limit - 1].id, paging.IDENTIFIERS)
        return response

    async def ListRefusedLinks(
        self, request: identity_pb2.ListRefusedLinksRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.ListRefusedLinksResponse:
        """List the refused links involving a person, a page at a time."""
        violations = validation.check(request)
        after = messages.page_token(request.page_token, paging.REFUSED_LINKS, violations)
        violations.raise_if_any()
        person_id, limit = uuid.UUID(request.person_id), paging.page_size(request.page_size)
        async with self._runtime.transaction() as session:
            links = await self._persons.refused_links(
                IdentityRepository(session), person_id, after=after, limit=limit + 1
            )
        response = identity_pb2.ListRefusedLinksResponse(
            refused_links=[messages.refused_link_message(link) for link in links[:limit]]
        )
        if len(links) > limit:
            response.next_page_token = paging.encode_token(links[limit - 1].id, paging.REFUSED_LINKS)
        return response

    async def MergePersons(
        self, request: identity_pb2.MergePersonsRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.MergePersonsResponse:
        """Merge one person into another on an operator's word."""
        violations = validation.check(request)
        if not (violations.names("survivor_person_id") or violations.names("merged_person_id")):
            survivor_id, merged_id = (
                uuid.UUID(request.survivor_person_id),
                uuid.UUID(request.merged_person_id),
            )
            if survivor_id == merged_id:
                violations.add(
                    "merged_person_id", "is the survivor itself; a person cannot be merged with itself"
                )
        violations.raise_if_any()
        request_id, reason = request.request_id, request.reason.strip()

        async def work(session: AsyncSession) -> tuple[identity_pb2.MergePersonsResponse, list[uuid.UUID]]:
            merged = await self._operators.merge(
                OperatorRepository(session),
                IdentityRepository(session),
                OutboxPublisher(self._runtime.outbox, session),
                survivor_id,
                merged_id,
                reason,
                request_id=request_id,
            )
            response = identity_pb2.MergePersonsResponse(
                person=messages.person_message(merged.survivor), merge=messages.merge_message(merged.merge)
            )
            return response, [merged.survivor.id, *merged.survivor.merged_person_ids]

        return await run_once(
            self._runtime, "merge", request_id, request, identity_pb2.MergePersonsResponse, work
        )

    async def UnmergePerson(
        self, request: identity_pb2.UnmergePersonRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.UnmergePersonResponse:
        """Split a merged person back out of the person it was merged into."""
        validation.validate(request)
        request_id, reason = request.request_id, request.reason.strip()
        person_id = uuid.UUID(request.person_id)

        async def work(session: AsyncSession) -> tuple[identity_pb2.UnmergePersonResponse, list[uuid.UUID]]:
            unmerged = await self._operators.unmerge(
                OperatorRepository(session),
                IdentityRepository(session),
                OutboxPublisher(self._runtime.outbox, session),
                person_id,
                reason,
            )
            response = identity_pb2.UnmergePersonResponse(
                restored_person=messages.person_message(unmerged.restored),
                survivor_person=messages.person_message(unmerged.survivor),
                moved_identifiers=identifier_messages(unmerged.moved),
                merge=messages.merge_message(unmerged.merge),
            )
            # The answer shows both persons' identifiers: erasing any person of either tree removes it.
            restored, survivor = unmerged.restored, unmerged.survivor
            return response, [
                restored.id,
                *restored.merged_person_ids,
                survivor.id,
                *survivor.merged_person_ids,
            ]

        return await run_once(
            self._runtime, "unmerge", request_id, request, identity_pb2.UnmergePersonResponse, work
        )

    async def ForgetPerson(
        self, request: identity_pb2.ForgetPersonRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.ForgetPersonResponse:
        """Erase a person, leaving tombstones and an audit record."""
        validation.validate(request)
        request_id, person_id = request.request_id, uuid.UUID(request.person_id)
        requested_by, reason = request.requested_by.strip(), request.reason.strip()

        async def work(session: AsyncSession) -> tuple[identity_pb2.ForgetPersonResponse, list[uuid.UUID]]:
            forgotten = await self._operators.forget(
                OperatorRepository(session),
                OutboxPublisher(self._runtime.outbox, session),
                person_id,
                requested_by=requested_by,
                reason=reason,
                request_id=request_id,
            )
            response = identity_pb2.ForgetPersonResponse(erasure=messages.erasure_message(forgotten.erasure))
            return response, list(forgotten.erasure.person_ids)

        return await run_once(
            self._runtime, "forget", request_id, request, identity_pb2.ForgetPersonResponse, work
        )

    def _resolve_request(
        self, request: identity_pb2.ResolvePersonRequest, prefix: str, violations: Violations
    ) -> ResolveRequest | None:
        """Normalise one identifier set (what identity.proto declares is checked apart), recording what the
        normaliser refuses under prefix; None if it refuses any, or there is nothing to resolve."""
        keys = []
        valid = True
        normalise = self._normaliser.normalise
        for i, identifier in enumerate(request.identifiers):
            try:
                keys.append(normalise(identifier.type, identifier.value))
            except IdentifierError as error:
                violations.add(f"{prefix}identifiers[{i}].{error.part}", error.description)
                valid = False
        if not (valid and keys):
            return None
        return ResolveRequest(
            identifiers=dedupe(keys), source=request.source.strip(), reference=request.reference.strip()
        )

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

        return await retrying(work)


OPERATOR_SCOPE = "operator"
"""Merges, unmerges and erasures share their request ids: one id names one operator call."""


async def run_once(
    runtime: Runtime,
    kind: str,
    request_id: str,
    request: Message,
    response_type: type[R],
    work: Callable[[AsyncSession], Awaitable[tuple[R, list[uuid.UUID]]]],
) -> R:
    """Run an operator change once per request id (omni_kit.idempotency, one scope for merges, unmerges and
    erasures): a repeat answers the stored answer, the same id with another request is refused
    (ALREADY_EXISTS). work returns the answer and the persons it shows (erasing any of them removes the
    stored answer)."""

    async def attempt() -> R:
        async with runtime.transaction() as session:
            shown: list[uuid.UUID] = []

            async def change() -> R:
                response, person_ids = await work(session)
                shown.extend(person_ids)
                return response

            return await idempotent(
                session,
                kind,
                request_id,
                request,
                response_type,
                change,
                scope=OPERATOR_SCOPE,
                persons=lambda _: shown,
            )

    return await retrying(attempt)


async def retrying(work: Callable[[], Awaitable[T]]) -> T:
    """Run a transaction again when a concurrent merge overtook it (the locks were released, the next run sees
    the merge) or the database aborted it for a reason a new run resolves (deadlock, serialisation failure,
    a unique key taken meanwhile)."""
    return await retry_transaction(
        work,
        name="identity transaction",
        attempts=_MAX_RUNS,
        sqlstates=_RETRYABLE_SQLSTATES,
        conflicts=(ConcurrentMerge,),
        exhausted=lambda error: Unavailable(message="the identity graph is busy; try again"),
    )
