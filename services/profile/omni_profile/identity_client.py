"""Profile's client of the identity service: resolving identifier sets to persons, checking persons exist.

Identity refuses identifier sets one by one: a refused set comes back as SetRefused, with paths inside the set
("identifiers[0].value"), in its place among the resolutions. A refusal of the whole call comes back as a
domain error: its field violations are kept, with paths relative to the identity request
("requests[3].identifiers[0].value"), for the caller to re-anchor on its own request. Every
call's deadline is the configured one or, when less time is left, the remaining time of the call being
served (omni_kit.grpc_client does that for every channel it opens).
"""

from __future__ import annotations

import asyncio
import enum
import re
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import grpc

from omni.identity.v1 import identity_pb2, identity_pb2_grpc
from omni_kit.bus.envelope import length_delimited
from omni_kit.errors import FieldViolation, Unavailable, status_details
from omni_profile.domain import Identifier

SERVICE = "omni.identity.v1.IdentityService"
IDEMPOTENT_METHODS = ("ResolvePerson", "BatchResolvePersons", "GetPerson", "LookupPerson")

# What identity takes in one BatchResolvePersons (its MAX_BATCH and MAX_IDENTIFIERS_PER_BATCH); a larger
# call is refused as a whole, so profile splits what it resolves into calls within both.
MAX_SETS_PER_CALL = 1000
MAX_IDENTIFIERS_PER_CALL = 10_000

# GetPerson calls in flight at once when checking many persons (rare: persons profile holds no record of).
_CONCURRENT_LOOKUPS = 16
FORGOTTEN_REASON = "PERSON_FORGOTTEN"
"""Identity's ErrorInfo reason for the id of a person it erased."""

_REQUEST_PATH = re.compile(r"^requests\[(\d+)\](?:\.(.*))?$")
_UNAVAILABLE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass(frozen=True)
class IdentifierSet:
    """Identifiers seen together, where (the channel name, used as identity's source), and what carried them
    (the event's source and id: identity records it on the merges the set causes)."""

    identifiers: Sequence[Identifier]
    source: str
    reference: str = ""


@dataclass(frozen=True)
class Resolution:
    """Which person an identifier set belongs to, and which persons the resolve merged into it.

    person_id is None when every identifier of the set belonged to an erased person (identity keeps them as
    tombstones and, by its default policy, resolves nothing for them): the set is `forgotten`.
    """

    person_id: uuid.UUID | None
    merged_person_ids: tuple[uuid.UUID, ...] = ()

    @property
    def forgotten(self) -> bool:
        """Whether the identifiers were all an erased person's, so the set belongs to nobody."""
        return self.person_id is None


@dataclass(frozen=True)
class SetRefused:
    """Identity refused an identifier set (a malformed or placeholder identifier): nothing was resolved for it.
    violations are its first ones, with paths inside the set ("identifiers[0].value"); omitted counts the rest.
    """

    violations: tuple[FieldViolation, ...]
    omitted: int = 0


class Standing(enum.Enum):
    """What identity says of a person id."""

    KNOWN = "known"
    """A person, or one merged into another."""
    FORGOTTEN = "forgotten"
    """A person identity erased."""
    UNKNOWN = "unknown"
    """An id identity never gave out."""


@dataclass
class IdentifiersRejected(Exception):
    """Identity refused some identifiers; each violation names the request index it concerns (or None)."""

    message: str
    violations: list[tuple[int | None, FieldViolation]] = field(default_factory=list)


class IdentityClient:
    """Calls identity over a channel built with retries for its idempotent methods."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = identity_pb2_grpc.IdentityServiceStub(channel)
        # The batch request is written as bytes (batch_resolve_request): no message object per identifier.
        self._batch_resolve = channel.unary_unary(
            f"/{SERVICE}/BatchResolvePersons",
            request_serializer=None,
            response_deserializer=identity_pb2.BatchResolvePersonsResponse.FromString,
        )

    async def resolve(self, sets: Sequence[IdentifierSet]) -> list[Resolution | SetRefused]:
        """Resolve identifier sets in order: one BatchResolvePersons call, or as few as identity's limits allow
        (each sees what the earlier ones resolved, as later sets of one call do).

        Identity refuses sets one by one (refuse_sets_individually): a refused set is answered SetRefused and
        the others are resolved in the same call. Only a fault of the call as a whole raises
        IdentifiersRejected."""
        resolutions: list[Resolution | SetRefused] = []
        for start, chunk in _chunks(sets):
            try:
                response = await self._batch_resolve(batch_resolve_request(chunk))
            except grpc.aio.AioRpcError as error:
                raise _translate(error, offset=start) from error
            if len(response.resolutions) != len(chunk):
                raise Unavailable(message="identity answered a different number of resolutions than asked")
            refusals = {r.index: r for r in response.refusals}
            resolutions += [
                _set_refused(refusals[i])
                if i in refusals
                else Resolution(
                    # A forgotten set has no person (identity's Resolution.forgotten).
                    person_id=None if r.forgotten else uuid.UUID(r.person_id),
                    merged_person_ids=tuple(uuid.UUID(m) for m in r.merged_person_ids),
                )
                for i, r in enumerate(response.resolutions)
            ]
        return resolutions

    async def current_person(self, person_id: uuid.UUID) -> uuid.UUID | None:
        """The id of the person as identity knows it now (a merged id leads to the survivor); None if unknown
        or erased."""
        standing, current = await self._get_person(person_id)
        return current if standing is Standing.KNOWN else None

    async def standing_of(self, person_id: uuid.UUID) -> tuple[Standing, uuid.UUID | None]:
        """What identity says of a person id, and for a known one the id of the person now (a merged id leads
        to the survivor)."""
        return await self._get_person(person_id)

    async def standings(self, person_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, Standing]:
        """What identity says of each of these ids (a few GetPerson calls at a time). Raises Unavailable
        when identity cannot answer."""
        limit = asyncio.Semaphore(_CONCURRENT_LOOKUPS)

        async def one(person_id: uuid.UUID) -> tuple[uuid.UUID, Standing]:
            async with limit:
                standing, _ = await self._get_person(person_id)
            return person_id, standing

        return dict(await asyncio.gather(*(one(p) for p in set(person_ids))))

    async def _get_person(self, person_id: uuid.UUID) -> tuple[Standing, uuid.UUID | None]:
        try:
            response = await self._stub.GetPerson(identity_pb2.GetPersonRequest(person_id=str(person_id)))
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                info = status_details(error).error_info
                forgotten = info is not None and info.reason == FORGOTTEN_REASON
                return (Standing.FORGOTTEN if forgotten else Standing.UNKNOWN), None
            raise _translate(error) from error
        return Standing.KNOWN, uuid.UUID(response.person.id)


def _set_refused(refusal: identity_pb2.IdentifierSetRefusal) -> SetRefused:
    return SetRefused(
        tuple(FieldViolation(v.field, v.description) for v in refusal.field_violations),
        refusal.omitted_violation_count,
    )


# refuse_sets_individually = 2, true: the field's key (2 << 3, varint) and 1.
_REFUSE_SETS_INDIVIDUALLY = b"\x10\x01"


def batch_resolve_request(sets: Sequence[IdentifierSet]) -> bytes:
    """omni.identity.v1.BatchResolvePersonsRequest of these sets, encoded: requests = 1 (ResolvePersonRequest:
    identifiers = 1 (Identifier: type = 1, value = 2), source = 2, reference = 3), refuse_sets_individually = 2
    (true: a refused set is named in the answer, not a failure of the call)."""
    return (
        b"".join(
            [
                length_delimited(
                    1,
                    b"".join(
                        [
                            length_delimited(
                                1,
                                length_delimited(1, i.type.encode()) + length_delimited(2, i.value.encode()),
                            )
                            for i in s.identifiers
                        ]
                    )
                    + (length_delimited(2, s.source.encode()) if s.source else b"")
                    + (length_delimited(3, s.reference.encode()) if s.reference else b""),
                )
                for s in sets
            ]
        )
        + _REFUSE_SETS_INDIVIDUALLY
    )


def _chunks(sets: Sequence[IdentifierSet]) -> list[tuple[int, Sequence[IdentifierSet]]]:
    """The sets in consecutive runs identity takes in one call, each with the position of its first set."""
    chunks: list[tuple[int, Sequence[IdentifierSet]]] = []
    start = identifiers = 0
    for index, identifier_set in enumerate(sets):
        count = len(identifier_set.identifiers)
        if index > start and (
            index - start == MAX_SETS_PER_CALL or identifiers + count > MAX_IDENTIFIERS_PER_CALL
        ):
            chunks.append((start, sets[start:index]))
            start, identifiers = index, 0
        identifiers += count
    if start < len(sets):
        chunks.append((start, sets[start:]))
    return chunks


def _translate(error: grpc.aio.AioRpcError, *, offset: int = 0) -> Exception:
    """A domain error for identity's answer; refusals name positions in the whole list (offset: where the
    refused call's sets started)."""
    details = status_details(error)
    if details.code == grpc.StatusCode.INVALID_ARGUMENT:
        rejected = IdentifiersRejected(message=details.message or "identity refused the identifiers")
        for violation in details.field_violations:
            match = _REQUEST_PATH.match(violation.field)
            if match is None:
                rejected.violations.append((None, violation))
            else:
                index, rest = int(match.group(1)), match.group(2) or ""
                rejected.violations.append((offset + index, FieldViolation(rest, violation.description)))
        return rejected
    if details.code in _UNAVAILABLE_CODES:
        return Unavailable(
            message=f"identity is unavailable: {details.message}", reason="IDENTITY_UNAVAILABLE"
        )
    return Unavailable(
        message=f"identity failed ({details.code.name}): {details.message}", reason="IDENTITY_FAILED"
    )
