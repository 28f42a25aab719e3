"""Journeys: defining them, and starting them when a person enters their trigger segment."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from opentelemetry import trace
from sqlalchemy.ext.asyncio import AsyncSession

from omni_decisioning.channel_choice import choose_channel
from omni_decisioning.contact_policy import RETENTION, Cap, Contact, earliest_start, reached_cap
from omni_decisioning.entities import Journey, JourneyRun, NewJourney, RunOutcome, SegmentEntry
from omni_decisioning.events import Publisher
from omni_decisioning.experiments.entities import Assignment, Attachment, AttachmentKind
from omni_decisioning.experiments.experiments import Experiments
from omni_decisioning.reentry import is_reentry
from omni_decisioning.repository import Repository
from omni_kit import contact
from omni_kit.errors import AlreadyExists
from omni_kit.ids import new_id

log = logging.getLogger(__name__)
_UTC = ZoneInfo("UTC")
tracer = trace.get_tracer("omni_decisioning.journeys")


def send_request_id(journey: Journey, entry: SegmentEntry) -> str:
    """The idempotency key of a journey's send: one send per journey and triggering event."""
    return f"journey:{journey.id}:{entry.event_id}"


class Journeys:
    """Creates and lists journeys and runs them on segment entries."""

    def __init__(
        self,
        repository: Repository,
        publisher: Publisher,
        *,
        reentry_window: timedelta,
        caps: Sequence[Cap] = (),
        time_zone: ZoneInfo = _UTC,
        experiments: Experiments | None = None,
    ) -> None:
        self._repository = repository
        self._publisher = publisher
        self._reentry_window = reentry_window
        self._caps = tuple(caps)
        self._zone = time_zone
        self._experiments = experiments

    async def create(self, session: AsyncSession, new: NewJourney) -> Journey:
        """Store a new journey; AlreadyExists when its name is taken."""
        journey = Journey(
            id=new_id(),
            name=new.name,
            trigger_segment_id=new.trigger_segment_id,
            channels=new.channels,
            template_id=new.template_id,
            create_time=datetime.now(UTC),
        )
        if not await self._repository.insert_journey(session, journey):
            raise AlreadyExists(
                message=f"a journey named {new.name!r} exists already",
                reason="JOURNEY_EXISTS",
                metadata={"name": new.name},
            )
        return journey

    async def page(
        self, session: AsyncSession, *, after: uuid.UUID | None, size: int
    ) -> tuple[list[Journey], bool]:
        """One page of journeys in creation order after the given id, and whether more follow."""
        rows = await self._repository.list_journeys(session, after=after, limit=size + 1)
        return rows[:size], len(rows) > size

    async def on_segment_entered(self, session: AsyncSession, entry: SegmentEntry) -> list[JourneyRun]:
        """Start every journey the segment triggers for the person, once per triggering event."""
        journeys = await self._repository.journeys_triggered_by(session, entry.segment_id)
        if not journeys:
            return []
        if self._caps:
            # Taken before any journey's own lock, so every transaction takes the locks in one order.
            await self._repository.lock_person_contacts(session, entry.person_id)
        verdicts = (await contact.verdicts_of(session, [entry.person_id]))[entry.person_id]
        runs = []
        for journey in journeys:
            # A span per run, so the send request (and the gateway's send) hangs under the journey in traces.
            with tracer.start_as_current_span(
                "journey run",
                attributes={"omni.journey_id": str(journey.id), "omni.person_id": str(entry.person_id)},
            ) as span:
                run = await self._run(session, journey, entry, verdicts)
                if run is not None:
                    span.set_attribute("omni.journey_run.outcome", run.outcome.value)
                    runs.append(run)
        return runs

    async def _run(
        self, session: AsyncSession, journey: Journey, entry: SegmentEntry, verdicts: contact.PersonVerdicts
    ) -> JourneyRun | None:
        await self._repository.lock_journey_person(session, journey.id, entry.person_id)
        if await self._repository.has_run_for_trigger(
            session, journey_id=journey.id, person_id=entry.person_id, trigger_event_id=entry.event_id
        ):
            return None
        started = await self._repository.started_run_times(
            session,
            journey_id=journey.id,
            person_id=entry.person_id,
            around=entry.occurred_at,
            window=self._reentry_window,
        )
        channel: int | None = None
        request_id: str | None = None
        template_id = journey.template_id
        if is_reentry(started, entry.occurred_at, self._reentry_window):
            outcome = RunOutcome.SUPPRESSED_REENTRY
        else:
            channel = choose_channel(journey.channels, verdicts)
            if channel is None:
                outcome = RunOutcome.NO_CONSENTED_CHANNEL
            elif await self._capped(session, entry.person_id, channel):
                outcome = RunOutcome.CAPPED
            else:
                outcome = RunOutcome.SEND_REQUESTED
                request_id = send_request_id(journey, entry)
                # --- Experiments: the one place a journey send asks for its assignment. ---
                assignment = await self._assign(session, journey, entry.person_id, request_id)
                if not assignment.sends:
                    # A holdout or the global control group: nothing is sent; the exposure is logged.
                    outcome = RunOutcome.GLOBAL_CONTROL if assignment.global_control else RunOutcome.HOLDOUT
                    request_id = None
                else:
                    template_id = assignment.template_id or template_id
                    # The arm's channel where the person's verdicts allow marketing on it.
                    channel = choose_channel([assignment.channel], verdicts) if assignment.channel else None
                    channel = channel or choose_channel(journey.channels, verdicts)
                # --- end of experiments. ---
            if request_id is not None and channel is not None:
                # Counted at once, in this transaction: a journey triggered a moment later sees it.
                await self._repository.log_contact(
                    session,
                    request_id=request_id,
                    person_id=entry.person_id,
                    channel=channel,
                    at=datetime.now(UTC),
                    source="journey",
                    retention=RETENTION,
                )
        run = JourneyRun(
            id=new_id(),
            journey_id=journey.id,
            person_id=entry.person_id,
            trigger_event_id=entry.event_id,
            trigger_time=entry.occurred_at,
            outcome=outcome,
            channel=channel,
            request_id=request_id,
            create_time=datetime.now(UTC),
        )
        await self._repository.insert_run(session, run)
        if request_id is not None and channel is not None:
            await self._publisher.send_requested(
                session,
                request_id=request_id,
                person_id=entry.person_id,
                channel=channel,
                template_id=template_id,
                journey_id=journey.id,
                contact_verdict_version=verdicts.version,
            )
        log.info("journey %s for person %s: %s", journey.id, entry.person_id, outcome.value)
        return run

    async def _assign(
        self, session: AsyncSession, journey: Journey, person_id: uuid.UUID, request_id: str
    ) -> Assignment:
        """The person's assignment for this send (experiments on the journey, else on its template; the
        global control group), its exposure logged; no experiments configured: an ordinary send."""
        if self._experiments is None:
            return Assignment()
        attachments = [
            Attachment(AttachmentKind.JOURNEY, str(journey.id)),
            Attachment(AttachmentKind.TEMPLATE, journey.template_id),
        ]
        return await self._experiments.assign(session, attachments, person_id, request_id=request_id)

    async def _capped(self, session: AsyncSession, person_id: uuid.UUID, channel: int) -> bool:
        """Whether a marketing send on `channel` would break a cap (the caller holds the person's contact lock
        to the end of the transaction, so journeys running at once for the person count each other's sends)."""
        if not self._caps:
            return False
        now = datetime.now(UTC)
        since = earliest_start(self._caps, now, self._zone)
        assert since is not None
        contacts = [
            Contact(channel=c, at=at)
            for c, at in await self._repository.contacts_since(session, person_id, since)
        ]
        cap = reached_cap(self._caps, contacts, channel, now, self._zone)
        if cap is not None:
            log.info("person %s: %s reached", person_id, cap.describe())
        return cap is not None
