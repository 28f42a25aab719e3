"""The ProfileService servicer: checks requests, translates protobuf to domain calls, owns the transactions.

Reads (GetProfile, ListTimeline, the histories) run on autocommit sessions: one statement each needs no
transaction, and BEGIN/COMMIT would double the round trips of the hottest call.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from omni.profile.v1 import profile_pb2, profile_pb2_grpc
from omni_kit.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    OmniError,
    listed,
)
from omni_kit.idempotency import idempotent
from omni_kit.runtime import Runtime
from omni_profile import persons, validation, wire
from omni_profile import request_validation as checks
from omni_profile.computed import Definition
from omni_profile.computed_traits import ComputedTraits
from omni_profile.consents import Consents
from omni_profile.domain import EVENT_ID_REUSED, PERSON_ERASED, PERSON_NOT_FOUND, Event, TrackResult
from omni_profile.http import Intake, consume_stream
from omni_profile.identity_client import IdentityClient, Standing
from omni_profile.ingestion import Ingestion
from omni_profile.profiles import Profiles
from omni_profile.tracking import Tracker
from omni_profile.traits import Traits, TraitsRefused
from omni_profile.wire_definitions import definition_from_proto, definition_to_proto


@dataclass(frozen=True)
class Domain:
    """The domain objects the servicer works with, built in main."""

    ingestion: Ingestion
    traits: Traits
    consents: Consents
    computed_traits: ComputedTraits
    reads: async_sessionmaker[AsyncSession]
    """Autocommit sessions for reads."""


class ProfileServicer(profile_pb2_grpc.ProfileServiceServicer):
    """omni.profile.v1.ProfileService over the domain objects built in main."""

    def __init__(
        self, runtime: Runtime, tracker: Tracker, profiles: Profiles, identity: IdentityClient, domain: Domain
    ) -> None:
        self._runtime = runtime
        self._tracker = tracker
        self._profiles = profiles
        self._identity = identity
        self._domain = domain

    async def TrackEvent(
        self, request: profile_pb2.TrackEventRequest, context: grpc.aio.ServicerContext
    ) -> profile_pb2.TrackEventResponse:
        """Record one event; one that is not recorded (nor a duplicate) is refused with the status of its
        reason (refusal)."""
        now = datetime.now(UTC)
        validation.validate_track_event(request, now=now)
        event = wire.event_from_proto(request.event, received_at=now)
        (result,) = await self._ingest([event], [request.event], ["event"])
        if result.refused:
            raise refusal(result, event)
        return wire.track_result_to_proto(result)

    async def BatchTrackEvents(
        self, request: profile_pb2.BatchTrackEventsRequest, context: grpc.aio.ServicerContext
    ) -> profile_pb2.BatchTrackEventsResponse:
        """Record a batch of events; bad events are answered rejected, the others recorded."""
        now = datetime.now(UTC)
        validation.validate_batch(request)
        rejected: dict[int, list[FieldViolation]] = {}
        good, messages, paths = [], [], []
        for index, message in enumerate(request.events):
            problems = validation.event_violations(message, now=now)
            if problems:
                rejected[index] = problems
            else:
                good.append(wire.event_from_proto(message, received_at=now))
                messages.append(message)
                paths.append(f"events[{index}]")
        answers = iter(await self._ingest(good, messages, paths))
        response = profile_pb2.BatchTrackEventsResponse()
        for index in range(len(request.events)):
            result = TrackResult.rejected(rejected[index]) if index in rejected else next(answers)
            response.results.append(wire.track_result_to_proto(result))
            if result.refused:
                response.rejected_count += 1
            elif result.duplicate:
                response.duplicate_count += 1
            else:
                response.recorded_count += 1
        return response

    async def _ingest(
        self, events: list[Event], messages: list[profile_pb2.Event], paths: list[str]
    ) -> list[TrackResult]:
        """Record checked events, with the traits they carry set in the same transaction; paths[i] names
        events[i] in the request."""
        wanted = [wire.struct_to_dict(m.traits) if m.HasField("traits") else {} for m in messages]
        if not any(wanted):
            return await self._domain.ingestion.ingest(events)
        try:
            return await self._domain.ingestion.ingest(
                events, alongside=self._domain.traits.with_events(events, wanted)
            )
        except TraitsRefused as refused:
            # Checked already: only a rule the check does not know refuses traits here; nothing was written.
            prefix = f"{paths[refused.index]}.traits"
            raise InvalidArgument(
                message=f"the traits of an event were refused: {refused.error.message}",
                violations=[
                    FieldViolation(f"{prefix}.{v.field}" if v.field else prefix, v.description)
                    for v in refused.error.violations
                ],
            ) from refused

    async def StreamTrackEvents(
        self,
        request_iterator: AsyncIterator[profile_pb2.StreamTrackEventsRequest],
        context: grpc.aio.ServicerContext,
    ) -> profile_pb2.StreamTrackEventsResponse:
        """Record a stream of events as it arrives; bad events are reported by position, the others kept."""
        chunks = (request.events async for request in request_iterator)
        outcome = await consume_stream(chunks, Intake(self._domain.ingestion, self._domain.traits))
        return profile_pb2.StreamTrackEventsResponse(
            accepted=outcome.accepted,
            duplicates=outcome.duplicates,
            rejected=outcome.rejected,
            errors=[
                profile_pb2.StreamEventError(
                    position=r.position,
                    event_id=r.event_id,
                    message=r.message,
                    reason=r.reason,
                    field_violations=[
                        profile_pb2.StreamEventError.FieldViolation(field=v.field, description=v.description)
                        for v in listed(r.violations)
                    ],
                )
                for r in outcome.rejections
            ],
        )

    async def SetTraits(
        self, request: profile_pb2.SetTraitsRequest, context: grpc.aio.ServicerContext
    ) -> profile_pb2.SetTraitsResponse:
        """Set or remove traits, as far as the source's precedence allows; once per request id."""
        request_id = validation.validate_set_traits(request)
        asked = uuid.UUID(request.person_id)
        person_id = await self._known_person(asked)
        shown: list[uuid.UUID] = [asked]
        async with self._runtime.transaction() as session:

            async def set_traits() -> profile_pb2.SetTraitsResponse:
                current, ignored = await self._domain.traits.set_traits(
                    session, person_id, wire.struct_to_dict(request.traits), request.source, datetime.now(UTC)
                )
                profile = await self._profiles.get(session, current, require_known=False)
                if request_id:
                    # The profile holds what the ids merged into the person brought: erasing one of them
                    # (after an unmerge) removes the stored answer too.
                    shown.extend(await self._profiles.shown_persons(session, current))
                return profile_pb2.SetTraitsResponse(
                    profile=wire.profile_to_proto(profile), ignored_traits=ignored
                )

            return await idempotent(
                session,
                "SetTraits",
                request_id,
                request,
                profile_pb2.SetTraitsResponse,
                set_traits,
                persons=lambda _: shown,
            )

    async def SetConsent(
        self, request: profile_pb2.SetConsentRequest, context: grpc.aio.ServicerContext
    ) -> profile_pb2.SetConsentResponse:
        """Record consent for a channel and purpose; once per request id."""
        checks.validate_set_consent(request)
        asked = uuid.UUID(request.person_id)
        person_id = await self._known_person(asked)
        channel = wire.channel_name(request.consent.channel)
        assert channel is not None  # checked: the channel is required
        async with self._runtime.transaction() as session:

            async def set_consent() -> profile_pb2.SetConsentResponse:
                consent = await self._domain.consents.set_consent(
                    session,
                    person_id,
                    channel=channel,
                    state=wire.consent_state_name(request.consent.state),
                    source=request.consent.source,
                    now=datetime.now(UTC),
                    purpose=wire.purpose_name(request.consent.purpose),
                    double_opt_in=wire.double_opt_in_name(request.consent.double_opt_in),
                )
                return profile_pb2.SetConsentResponse(consent=wire.consent_to_proto(consent))

            return await idempotent(
                session,
                "SetConsent",
                request.request_id,
                request,
                profile_pb2.SetConsentResponse,
                set_consent,
                persons=lambda _: {asked, person_id},
            )

    async def GetProfile(
        self, request: profile_pb2.GetProfileRequest, context: grpc.aio.ServicerContext
    ) -> profile_pb2.GetProfileResponse:
        """The 360 view of a person."""
        checks.validate_get_profile(request)
        profile = await self._profiles.view(uuid.UUID(request.person_id), request.recent_event_count)
        return profile_pb2.GetProfileResponse(profile=wire.profile_to_proto(profile))

    async def BatchGetProfiles(
        self, request: profile_pb2.BatchGetProfilesRequest, context: grpc.aio.ServicerContext
    ) -> profile_pb2.BatchGetProfilesResponse:
        """Many 360 views, without recent events; a person profile does not know answers no profile."""
        checks.validate_batch_get_profiles(request)
        results = []
        for raw_id in request.person_ids:
            try:
                profile = await self._profiles.view(uuid.UUID(raw_id), 1)
            except NotFound:
                results.append(
                    profile_pb2.BatchGetProfilesResult(person_id=raw_id, not_found_reason=PERSON_NOT_FOUND)
                )
                continue
            message = wire.profile_to_proto(profile)
            del message.recent_events[:]
            results.append(profile_pb2.BatchGetProfilesResult(person_id=raw_id, profile=message))
        return profile_pb2.BatchGetProfilesResponse(results=results)

    async def ListTimeline(
        self, request: profile_pb2.ListTimelineRequest, context: grpc.aio.ServicerContext
    ) -> profile_pb2.ListTimelineResponse:
        """One page of a person's timeline, newest first."""
        checks.validate_list_timeline(request)
        async with self._domain.reads() as session:
            page, token = await self._profiles.timeline(
                session, uuid.UUID(request.person_id), request.page_size, request.page_token
            )
        return profile_pb2.ListTimelineResponse(
            events=[wire.event_to_proto(e) for e in page], next_page_token=token
        )

    async def ListTraitHistory(
        self, request: profile_pb2.ListTraitHistoryRequest, context: grpc.aio.ServicerContext
    ) -> profile_pb2.ListTraitHistoryResponse:
        """One page of a person's trait changes, newest first."""
        checks.validate_list_trait_history(request)
        async with self._domain.reads() as session:
            page, token = await self._profiles.trait_history(
                session,
                uuid.UUID(request.person_id),
                request.trait_name,
                request.page_size,
                request.page_token,
            )
        return profile_pb2.ListTraitHistoryResponse(
            trait_changes=[wire.trait_change_to_proto(c) for c in page], next_page_token=token
        )

    async def ListConsentHistory(
        self, request: profile_pb2.ListConsentHistoryRequest, context: grpc.aio.ServicerContext
    ) -> profile_pb2.ListConsentHistoryResponse:
        """One page of a person's consent changes, newest first."""
        checks.validate_list_consent_history(request)
        async with self._domain.reads() as session:
            page, token = await self._profiles.consent_history(
                session, uuid.UUID(request.person_id), request.page_size, request.page_token
            )
        return profile_pb2.ListConsentHistoryResponse(
            consents=[wire.consent_to_proto(c) for c in page], next_page_token=token
        )

    async def CreateComputedTrait(
        self, request: profile_pb2.CreateComputedTraitRequest, context: grpc.aio.ServicerContext
    ) -> profile_pb2.CreateComputedTraitResponse:
        """Define a computed trait, once per request id; it is backfilled in the background."""
        checks.validate_create_computed_trait(request)
        computed_traits = self._domain.computed_traits
        created: list[Definition] = []
        async with self._runtime.transaction() as session:

            async def create() -> profile_pb2.CreateComputedTraitResponse:
                stored = await computed_traits.create(session, definition_from_proto(request.computed_trait))
                created.append(stored)
                return profile_pb2.CreateComputedTraitResponse(computed_trait=definition_to_proto(stored))

            response = await idempotent(
                session,
                "CreateComputedTrait",
                request.request_id,
                request,
                profile_pb2.CreateComputedTraitResponse,
                create,
            )
        for stored in created:  # none when the answer was replayed: the definition was adopted then
            computed_traits.adopt(stored)
        return response

    async def ListComputedTraits(
        self, request: profile_pb2.ListComputedTraitsRequest, context: grpc.aio.ServicerContext
    ) -> profile_pb2.ListComputedTraitsResponse:
        """One page of computed-trait definitions, by name."""
        checks.validate_list_computed_traits(request)
        async with self._domain.reads() as session:
            page, token = await self._domain.computed_traits.list_page(
                session, request.page_size, request.page_token
            )
        return profile_pb2.ListComputedTraitsResponse(
            computed_traits=[definition_to_proto(d) for d in page], next_page_token=token
        )

    async def _known_person(self, person_id: uuid.UUID) -> uuid.UUID:
        """The live person behind an id: profile's own record first, else identity's; NotFound if neither,
        FailedPrecondition PERSON_ERASED if identity erased it (the rule events naming a person follow:
        tracking.Tracker.resolve_each)."""
        async with self._domain.reads() as session:
            current = await self._profiles.current_person(session, person_id)
        if current is not None:
            return current
        standing, current = await self._identity.standing_of(person_id)
        if standing is Standing.FORGOTTEN:
            raise persons.person_erased(person_id)
        if current is None:
            raise NotFound(
                message=f"person {person_id} is not known",
                reason=PERSON_NOT_FOUND,
                metadata={"person_id": str(person_id), "field": "person_id"},
            )
        return current


def refusal(result: TrackResult, event: Event) -> OmniError:
    """The error TrackEvent answers for an event it did not record, by the result's reason (the reason a
    batch gives per event); violation paths are the request's ("event.occurred_at")."""
    fields = [f"event.{v.field}" if v.field else "event" for v in result.violations]
    message = "; ".join(f"{f}: {v.description}" for f, v in zip(fields, result.violations, strict=True))
    if result.reason == PERSON_ERASED:
        return FailedPrecondition(
            message=f"the event was refused: {message}", reason=PERSON_ERASED, metadata={"field": fields[0]}
        )
    if result.reason == PERSON_NOT_FOUND:
        return NotFound(
            message=f"the event was refused: {message}",
            reason=PERSON_NOT_FOUND,
            metadata={"field": fields[0], "person_id": str(event.person_id)},
        )
    if result.reason == EVENT_ID_REUSED:
        return AlreadyExists(
            message=f"the event was refused: {message}",
            reason=EVENT_ID_REUSED,
            metadata={"source": event.source, "id": event.id, "person_id": str(result.person_id)},
        )
    return InvalidArgument(
        message="the event was refused",
        violations=[FieldViolation(f, v.description) for f, v in zip(fields, result.violations, strict=True)],
    )
