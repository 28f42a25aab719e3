"""The ProfileService servicer: checks requests, translates protobuf to domain calls, owns the transactions."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import grpc

from omni.profile.v1 import profile_pb2, profile_pb2_grpc
from omni_kit.errors import NotFound
from omni_kit.runtime import Runtime
from omni_profile import validation, wire
from omni_profile.domain import Event, TrackResult
from omni_profile.http import Intake, consume_stream
from omni_profile.identity_client import IdentityClient
from omni_profile.profiles import Profiles
from omni_profile.tracking import Tracker


class ProfileServicer(profile_pb2_grpc.ProfileServiceServicer):
    """omni.profile.v1.ProfileService over the domain objects built in main."""

    def __init__(
        self, runtime: Runtime, tracker: Tracker, profiles: Profiles, identity: IdentityClient
    ) -> None:
        self._runtime = runtime
        self._tracker = tracker
        self._profiles = profiles
        self._identity = identity

    async def TrackEvent(
        self, request: profile_pb2.TrackEventRequest, context: grpc.aio.ServicerContext
    ) -> profile_pb2.TrackEventResponse:
        """Record one event."""
        now = datetime.now(UTC)
        validation.validate_track_event(request, now=now)
        event = wire.event_from_proto(request.event, received_at=now)
        (result,) = await self._track([event], ["event"], container="event")
        return profile_pb2.TrackEventResponse(person_id=str(result.person_id), duplicate=result.duplicate)

    async def BatchTrackEvents(
        self, request: profile_pb2.BatchTrackEventsRequest, context: grpc.aio.ServicerContext
    ) -> profile_pb2.BatchTrackEventsResponse:
        """Record a batch of events, all or nothing."""
        now = datetime.now(UTC)
        validation.validate_batch(request, now=now)
        batch = [wire.event_from_proto(e, received_at=now) for e in request.events]
        results = await self._track(batch, [f"events[{i}]" for i in range(len(batch))], container="events")
        return profile_pb2.BatchTrackEventsResponse(
            results=[
                profile_pb2.TrackEventResponse(person_id=str(r.person_id), duplicate=r.duplicate)
                for r in results
            ]
        )

    async def StreamTrackEvents(
        self,
        request_iterator: AsyncIterator[profile_pb2.StreamTrackEventsRequest],
        context: grpc.aio.ServicerContext,
    ) -> profile_pb2.StreamTrackEventsResponse:
        """Record a stream of events as it arrives; bad events are reported by position, the others kept."""
        chunks = (request.events async for request in request_iterator)
        outcome = await consume_stream(chunks, Intake(self._runtime, self._tracker, self._profiles))
        return profile_pb2.StreamTrackEventsResponse(
            accepted=outcome.accepted,
            duplicates=outcome.duplicates,
            rejected=outcome.rejected,
            errors=[
                profile_pb2.StreamEventError(
                    position=r.position,
                    event_id=r.event_id,
                    message=r.message,
                    field_violations=[
                        profile_pb2.StreamEventError.FieldViolation(field=v.field, description=v.description)
                        for v in r.violations
                    ],
                )
                for r in outcome.rejections
            ],
        )

    async def _track(self, batch: list[Event], paths: Sequence[str], *, container: str) -> list[TrackResult]:
        async with self._runtime.transaction() as session:
            recorded = await self._tracker.recorded(session, batch)
        await self._tracker.resolve(batch, paths, recorded, container=container)
        async with self._runtime.transaction() as session:
            return await self._tracker.record(session, batch, recorded)

    async def SetTraits(
        self, request: profile_pb2.SetTraitsRequest, context: grpc.aio.ServicerContext
    ) -> profile_pb2.SetTraitsResponse:
        """Set or remove traits."""
        validation.validate_set_traits(request)
        person_id = await self._known_person(uuid.UUID(request.person_id))
        async with self._runtime.transaction() as session:
            profile = await self._profiles.set_traits(
                session, person_id, wire.struct_to_dict(request.traits), request.source, datetime.now(UTC)
            )
        return profile_pb2.SetTraitsResponse(profile=wire.profile_to_proto(profile))

    async def SetConsent(
        self, request: profile_pb2.SetConsentRequest, context: grpc.aio.ServicerContext
    ) -> profile_pb2.SetConsentResponse:
        """Record consent for a channel."""
        validation.validate_set_consent(request)
        person_id = await self._known_person(uuid.UUID(request.person_id))
        channel = wire.channel_name(request.consent.channel)
        assert channel is not None  # validated: the channel is required
        async with self._runtime.transaction() as session:
            consent = await self._profiles.set_consent(
                session,
                person_id,
                channel,
                wire.consent_state_name(request.consent.state),
                request.consent.source,
                datetime.now(UTC),
            )
        return profile_pb2.SetConsentResponse(consent=wire.consent_to_proto(consent))

    async def GetProfile(
        self, request: profile_pb2.GetProfileRequest, context: grpc.aio.ServicerContext
    ) -> profile_pb2.GetProfileResponse:
        """The 360 view of a person."""
        validation.validate_get_profile(request)
        async with self._runtime.transaction() as session:
            profile = await self._profiles.get(
                session, uuid.UUID(request.person_id), request.recent_event_count
            )
        return profile_pb2.GetProfileResponse(profile=wire.profile_to_proto(profile))

    async def ListTimeline(
        self, request: profile_pb2.ListTimelineRequest, context: grpc.aio.ServicerContext
    ) -> profile_pb2.ListTimelineResponse:
        """One page of a person's timeline, newest first."""
        validation.validate_list_timeline(request)
        async with self._runtime.transaction() as session:
            page, token = await self._profiles.timeline(
                session, uuid.UUID(request.person_id), request.page_size, request.page_token
            )
        return profile_pb2.ListTimelineResponse(
            events=[wire.event_to_proto(e) for e in page], next_page_token=token
        )

    async def _known_person(self, person_id: uuid.UUID) -> uuid.UUID:
        """The live person behind an id: profile's own record first, else identity's; NotFound if neither."""
        async with self._runtime.transaction() as session:
            current = await self._profiles.current_person(session, person_id)
        if current is not None:
            return current
        current = await self._identity.current_person(person_id)
        if current is None:
            raise NotFound(
                message=f"person {person_id} is not known",
                reason="PERSON_NOT_FOUND",
                metadata={"person_id": str(person_id)},
            )
        return current
