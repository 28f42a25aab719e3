"""The journey engine: persons enter multi-step journeys (a segment entered, an event, an API trigger, the
members a segment had at publish) under the journey's entry rule, and each run takes its steps as durable
jobs (omni_kit.scheduler, kind "journey.step", one job per run keyed by its id).

A job's effect — the step taken, its record, the send it requests, the next job — commits in the job's
transaction, so a step runs at least once and its effect counts once; a send's request id is the run, the
step and how often the run took that step (`journey-run:<run>:<step>:<visit>`), so a step taken again after
a crash asks for the same send and the gateway sends it once. Steps that need no waiting run one after the
other in one job; a wait ends the job with the next one scheduled at the wait's end.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict
from sqlalchemy.ext.asyncio import AsyncSession

from omni.decisioning.v1 import decisioning_pb2 as d
from omni.events.v1 import envelope_pb2
from omni_decisioning.channel_choice import choose_channel
from omni_decisioning.contact_policy import RETENTION, Cap, Contact, earliest_start, reached_cap
from omni_decisioning.entities import DecideQuery, Decision
from omni_decisioning.events import Publisher
from omni_decisioning.experiments.entities import Assignment, Attachment, AttachmentKind
from omni_decisioning.experiments.experiments import Experiments
from omni_decisioning.models import JourneyRow
from omni_decisioning.orchestration import spec as specs
from omni_decisioning.orchestration.steps import (
    as_text,
    bucket,
    choose_branch,
    matches,
    next_time_of_day,
    trait_instant,
    zone_of,
)
from omni_decisioning.orchestration.store import Run, StepRecord, Store
from omni_decisioning.repository import Repository
from omni_kit import contact
from omni_kit.ids import new_id
from omni_kit.scheduler import Job, cancel, schedule, schedule_many

log = logging.getLogger(__name__)

STEP_JOB = "journey.step"
ENTER_MEMBERS_JOB = "journey.enter_members"
# Steps taken one after another in one job before the rest is left to a next job (a loop without waits).
_MAX_STEPS_PER_JOB = 50
_MEMBERS_PAGE = 500
_DEFAULT_HOLD = timedelta(hours=1)
_UTC = ZoneInfo("UTC")


class TraitSetter(Protocol):
    """Sets traits on a person's profile (profile's SetTraits), idempotently per request id."""

    async def __call__(self, person_id: uuid.UUID, traits: dict[str, Any], request_id: str) -> None: ...


class Decide(Protocol):
    """Next-best-action: the ranked offers for a person at a touchpoint."""

    async def __call__(self, query: DecideQuery) -> Decision: ...


@dataclass(frozen=True)
class Taken:
    """What a step came to: its outcome and why, and where the run goes."""

    outcome: str
    detail: str
    next_step: str | None
    """The step next; None ends the run (completed)."""
    due_at: datetime | None = None
    """When the next step is due (None: at once)."""
    stay: bool = False
    """The run stays at this step (a message held, an event waited for) until due_at."""


@dataclass
class _Writes:
    """What the steps taken in one transaction write, made at its end in one statement each: the step
    records (in the order taken), the runs' new positions, their next jobs, the sends' contact log rows and
    outbox rows; and the verdicts read ahead for the message steps due."""

    records: list[StepRecord] = field(default_factory=list)
    runs: dict[uuid.UUID, Run] = field(default_factory=dict)
    jobs: dict[str, tuple[datetime | None, str | None]] = field(default_factory=dict)
    verdicts: dict[uuid.UUID, contact.PersonVerdicts] = field(default_factory=dict)
    contacts: list[tuple[str, uuid.UUID, int, datetime]] = field(default_factory=list)
    """Sends to count against contact caps: (request id, person, channel, when)."""
    sends: list[envelope_pb2.Envelope] = field(default_factory=list)

    def save(self, run: Run) -> None:
        self.runs[run.id] = run

    def schedule(self, run: Run, due_at: datetime | None, step: str | None) -> None:
        self.save(run)
        self.jobs[str(run.id)] = (due_at, step)


class Engine:
    """Enters persons into journeys and takes their runs' steps."""

    def __init__(
        self,
        store: Store,
        repository: Repository,
        publisher: Publisher,
        *,
        caps: Sequence[Cap] = (),
        time_zone: ZoneInfo = _UTC,
        set_traits: TraitSetter | None = None,
        decide: Decide | None = None,
        experiments: Experiments | None = None,
    ) -> None:
        self._store = store
        self._repository = repository
        self._publisher = publisher
        self._caps = tuple(caps)
        self._zone = time_zone
        self._set_traits = set_traits
        self._decide = decide
        self._experiments = experiments
        self._specs: dict[tuple[uuid.UUID, int], d.JourneySpec] = {}

    async def _load_specs(self, session: AsyncSession, versions: set[tuple[uuid.UUID, int]]) -> None:
        """Cache the versions not cached yet, in one query."""
        missing = versions - self._specs.keys()
        for key, stored in (await self._store.specs(session, missing)).items():
            self._specs[key] = specs.from_json(stored)

    async def _flush(self, session: AsyncSession, writes: _Writes) -> None:
        await self._store.add_steps(session, writes.records)
        await self._store.save_runs(session, list(writes.runs.values()))
        if writes.jobs:
            await schedule_many(
                session,
                STEP_JOB,
                {key: due for key, (due, _) in writes.jobs.items()},
                {key: {"step": step} for key, (_, step) in writes.jobs.items()},
                replace=True,
            )
        await self._repository.log_contacts(session, writes.contacts, source="journey", retention=RETENTION)
        await self._publisher.stage_sends(session, writes.sends)
        writes.records.clear()
        writes.runs.clear()
        writes.jobs.clear()
        writes.contacts.clear()
        writes.sends.clear()

    async def spec(self, session: AsyncSession, journey_id: uuid.UUID, version: int) -> d.JourneySpec | None:
        """A published version's spec (cached: versions never change)."""
        cached = self._specs.get((journey_id, version))
        if cached is None:
            stored = await self._store.spec(session, journey_id, version)
            if stored is None:
                return None
            cached = self._specs[(journey_id, version)] = specs.from_json(stored)
        return cached

    # -- entries -------------------------------------------------------------------------------------------

    async def enter(
        self,
        session: AsyncSession,
        journey: JourneyRow,
        person_id: uuid.UUID,
        *,
        trigger_id: str,
        properties: dict[str, Any],
        due_at: datetime | None = None,
    ) -> Run | str:
        """Start a run of the journey's latest version for the person, or say why the entry rule refuses."""
        spec = await self.spec(session, journey.id, journey.version)
        if spec is None or journey.state != "published":
            return "the journey is not live"
        rule = spec.entry_rule
        key = ""
        if rule.key_property:
            value = properties.get(rule.key_property)
            if value is None or value == "":
                return f"no {rule.key_property!r} to key the run by"
            key = as_text(value)
        await self._store.lock_entry(session, journey.id, person_id, key)
        if await self._store.has_trigger(session, journey.id, person_id, trigger_id):
            return "this trigger started a run already"
        earlier = await self._store.earlier_runs(
            session, journey.id, person_id, key if rule.key_property else None
        )
        now = datetime.now(UTC)
        frequency = rule.frequency or d.EntryRule.FREQUENCY_ONCE
        of = f" for {rule.key_property} {key}" if key else ""
        if any(state == "active" for _, state in earlier):
            return f"a run{of} is going already"
        if frequency == d.EntryRule.FREQUENCY_ONCE and earlier:
            return f"entered once already{of}"
        if frequency == d.EntryRule.FREQUENCY_ONCE_PER_PERIOD and earlier:
            period = rule.period.ToTimedelta()
            if now - earlier[0][0] < period:
                return f"entered within the last {period}{of}"
        first = spec.steps[0]
        run = Run(
            id=new_id(),
            journey_id=journey.id,
            version=journey.version,
            person_id=person_id,
            key=key,
            trigger_id=trigger_id,
            state="active",
            current_step=first.id,
            due_at=due_at or now,
            visits={},
            data={"trigger": properties},
            start_time=now,
        )
        await self._store.insert_run(session, run)
        await schedule(session, STEP_JOB, str(run.id), due_at, {"step": first.id}, replace=True)
        log.info("journey %s: person %s entered (run %s%s)", journey.id, person_id, run.id, of)
        return run

    async def on_segment_entered(
        self, session: AsyncSession, person_id: uuid.UUID, segment_id: uuid.UUID, event_id: uuid.UUID
    ) -> None:
        """Enter the person into every live journey the segment starts."""
        for journey in await self._store.live_journeys(session, segment_id=segment_id):
            await self.enter(session, journey, person_id, trigger_id=f"segment:{event_id}", properties={})

    async def on_event(
        self,
        session: AsyncSession,
        *,
        person_id: uuid.UUID,
        event_id: str,
        event_type: str,
        at: datetime,
        properties: dict[str, Any],
    ) -> None:
        """A tracked event: kept if a journey names its type; it ends runs whose exit criteria it meets, moves
        runs waiting for it, and enters the person into journeys it starts."""
        if not await self._store.event_type_named(session, event_type):
            return
        await self._store.keep_event(
            session,
            event_id=event_id,
            person_id=person_id,
            event_type=event_type,
            at=at,
            properties=properties,
        )
        writes = _Writes()
        for run in await self._store.active_runs(session, person_id=person_id, lock=True):
            spec = await self.spec(session, run.journey_id, run.version)
            if spec is None:
                continue
            key_property = spec.entry_rule.key_property

            def key_matches(match_key: bool, key_property: str = key_property, run: Run = run) -> bool:
                return not match_key or as_text(properties.get(key_property, "")) == run.key

            criterion = next(
                (
                    c
                    for c in spec.exit_criteria
                    if c.event_type == event_type
                    and matches(c.filters, properties)
                    and key_matches(c.match_key)
                ),
                None,
            )
            if criterion is not None:
                self._end(writes, run, "exited", f"exit criterion {event_type}", kind="exit_criterion")
                await cancel(session, STEP_JOB, str(run.id))
                continue
            step = specs.step_by_id(spec, run.current_step or "")
            if (
                step is not None
                and specs.kind_of(step) == "wait_for_event"
                and run.data.get("waiting") == step.id
                and step.wait_for_event.event_type == event_type
                and matches(step.wait_for_event.filters, properties)
                and key_matches(step.wait_for_event.match_key)
            ):
                run.data.pop("waiting", None)
                nxt = step.wait_for_event.on_event or None
                self._record(writes, run, step, Taken("event", f"{event_type} {event_id}", nxt))
                if nxt is None:
                    self._end(writes, run, "completed", "completed", kind=None)
                    await cancel(session, STEP_JOB, str(run.id))
                else:
                    run.current_step, run.due_at = nxt, at if at > datetime.now(UTC) else datetime.now(UTC)
                    writes.schedule(run, None, nxt)
        # Written before entries: an entry reads the person's runs as they now are.
        await self._flush(session, writes)
        for journey in await self._store.live_journeys(session, event_type=event_type):
            spec = await self.spec(session, journey.id, journey.version)
            if spec is not None and matches(spec.entry.event.filters, properties):
                await self.enter(
                    session, journey, person_id, trigger_id=f"event:{event_id}", properties=properties
                )

    async def enter_members(self, session: AsyncSession, jobs: Sequence[Job]) -> None:
        """Job: enter a page of a segment's members (as decisioning knows them) into a journey, then schedule
        the next page. For a segment entry published with enter_existing_members, and for a campaign: each
        run's first step then falls due at the campaign's time (in the person's time zone, with local_time),
        spaced to the campaign's speed limit."""
        for job in jobs:
            journey = await self._store.journey(session, uuid.UUID(job.payload["journey_id"]))
            version = int(job.payload.get("version", 0))
            if journey is None or journey.state != "published" or journey.version != version:
                continue  # archived, paused or published anew meanwhile: this version's page is not entered
            spec = await self.spec(session, journey.id, version)
            if spec is None:
                continue
            kind = spec.entry.WhichOneof("kind")
            campaign = spec.entry.campaign if kind == "campaign" else None
            segment = (
                spec.entry.campaign.segment_id if campaign is not None else spec.entry.segment.segment_id
            )
            after = uuid.UUID(job.payload["after"]) if job.payload.get("after") else None
            members = await self._store.members(session, uuid.UUID(segment), after=after, limit=_MEMBERS_PAGE)
            entered = int(job.payload.get("entered", 0))
            base = (
                datetime.fromisoformat(job.payload["base"]) if job.payload.get("base") else datetime.now(UTC)
            )
            for person_id in members:
                due_at = None
                if campaign is not None:
                    due_at = await self._campaign_due(session, campaign, person_id, base, entered)
                started = await self.enter(
                    session,
                    journey,
                    person_id,
                    trigger_id=f"{'campaign' if campaign is not None else 'existing'}:{version}",
                    properties={},
                    due_at=due_at,
                )
                if not isinstance(started, str):
                    entered += 1
            if len(members) == _MEMBERS_PAGE:
                payload = {
                    **job.payload,
                    "after": str(members[-1]),
                    "entered": entered,
                    "base": base.isoformat(),
                }
                await schedule(session, ENTER_MEMBERS_JOB, job.key, None, payload, replace=True)

    async def _campaign_due(
        self,
        session: AsyncSession,
        campaign: d.CampaignEntryTrigger,
        person_id: uuid.UUID,
        base: datetime,
        index: int,
    ) -> datetime:
        """When a campaign's run starts for a person: at the campaign's time (its wall clock in the person's
        zone, with local_time; at once if that passed), and no sooner than its place in the speed limit allows."""
        now = datetime.now(UTC)
        start = campaign.start_time.ToDatetime(tzinfo=UTC) if campaign.HasField("start_time") else now
        if campaign.local_time:
            traits = await self._store.traits(session, person_id)
            zone = zone_of(traits, "", self._zone)
            start = start.replace(tzinfo=None).replace(tzinfo=zone).astimezone(UTC)
        due = max(start, now)
        if campaign.per_minute:
            # The n-th person no sooner than n / per_minute minutes after the campaign began to enter them.
            due = max(due, base + timedelta(minutes=index / campaign.per_minute))
        return due

    # -- steps ---------------------------------------------------------------------------------------------

    async def run_steps(self, session: AsyncSession, jobs: Sequence[Job]) -> None:
        """Job handler of "journey.step": take each run's due step (and those following without a wait).

        Set-based over the claimed batch: one query loads (and locks) the runs with their journeys, the
        versions not cached come in one more, the consent verdicts of the persons whose due step is a message
        in one; the steps' records, the runs' new positions and their next jobs are written with one
        statement each at the end. What a step itself reads and writes (a message's contact log and outbox
        row, a condition's facts) stays per step, in the order taken."""
        due = {uuid.UUID(job.key): str(job.payload.get("step", "")) for job in jobs}
        loaded = [
            (run, journey)
            for run, journey in await self._store.runs_to_step(session, list(due))
            # ended, or moved on by an event meanwhile: the job is stale
            if run.state == "active" and run.current_step == due[run.id]
        ]
        await self._load_specs(
            session,
            {(run.journey_id, run.version) for run, _ in loaded}
            | {(j.id, j.version) for _, j in loaded if j is not None and j.version > 0},
        )
        writes = _Writes()
        messages = set()
        for run, _ in loaded:
            spec = self._specs.get((run.journey_id, run.version))
            step = specs.step_by_id(spec, run.current_step or "") if spec is not None else None
            if step is not None and specs.kind_of(step) == "message":
                messages.add(run.person_id)
        if messages:
            writes.verdicts = await contact.verdicts_of(session, messages)
        for run, journey in loaded:
            await self._advance(session, writes, run, journey)
        await self._flush(session, writes)

    async def _advance(
        self, session: AsyncSession, writes: _Writes, run: Run, journey: JourneyRow | None
    ) -> None:
        step_id = run.current_step or ""
        if journey is None or journey.state == "archived":
            self._end(writes, run, "exited", "journey archived", kind=None)
            return
        if journey.state == "paused":
            return  # taken up again by ResumeJourney, at the due time it keeps
        spec = await self.spec(session, run.journey_id, run.version)
        if journey.version > run.version:
            latest = await self.spec(session, journey.id, journey.version)
            if (
                latest is not None
                and latest.version_policy == d.JourneySpec.VERSION_POLICY_MOVE_AT_NEXT_STEP
                and specs.step_by_id(latest, step_id) is not None
            ):
                run.version, spec = journey.version, latest
        if spec is None:
            self._end(writes, run, "exited", f"version {run.version} is gone", kind=None)
            return
        for _ in range(_MAX_STEPS_PER_JOB):
            step = specs.step_by_id(spec, run.current_step or "")
            if step is None:
                self._end(
                    writes,
                    run,
                    "exited",
                    f"no step {run.current_step!r} in version {run.version}",
                    kind=None,
                )
                return
            run.visits[step.id] = run.visits.get(step.id, 0) + 1
            taken = await self._take(session, writes, journey, run, step)
            self._record(writes, run, step, taken)
            if taken.stay:
                run.due_at = taken.due_at
                writes.schedule(run, taken.due_at, step.id)
                return
            if taken.next_step is None:
                reason = "exit step" if specs.kind_of(step) == "exit" else "completed"
                self._end(writes, run, "completed", reason, kind=None)
                return
            run.current_step = taken.next_step
            if taken.due_at is not None and taken.due_at > datetime.now(UTC):
                run.due_at = taken.due_at
                writes.schedule(run, taken.due_at, taken.next_step)
                return
        run.due_at = datetime.now(UTC)
        writes.schedule(run, None, run.current_step)

    async def _take(
        self, session: AsyncSession, writes: _Writes, journey: JourneyRow, run: Run, step: d.JourneyStep
    ) -> Taken:
        kind = specs.kind_of(step)
        now = datetime.now(UTC)
        if kind == "message":
            return await self._message(session, writes, run, step)
        if kind == "wait":
            if run.data.get("waiting") == step.id:
                # A wait that ends the run (no next step) stayed at itself until it was over.
                run.data.pop("waiting", None)
                return Taken("waited", "the wait is over", None)
            taken = await self._wait(session, run, step.wait, now)
            if taken.next_step is None and taken.due_at is not None:
                run.data["waiting"] = step.id
                return Taken(taken.outcome, taken.detail, step.id, taken.due_at, stay=True)
            return taken
        if kind == "wait_for_event":
            rule = step.wait_for_event
            if run.data.get("waiting") == step.id:
                run.data.pop("waiting", None)
                return Taken(
                    "timeout",
                    f"no {rule.event_type} within {rule.timeout.ToTimedelta()}",
                    rule.on_timeout or None,
                )
            run.data["waiting"] = step.id
            until = now + rule.timeout.ToTimedelta()
            return Taken(
                "waiting", f"for {rule.event_type} until {until.isoformat()}", step.id, until, stay=True
            )
        if kind == "condition":
            holds, why = await self._condition(session, run, step.condition, now)
            return Taken(
                "true" if holds else "false",
                why,
                (step.condition.if_true if holds else step.condition.if_false) or None,
            )
        if kind == "random_split":
            value = bucket(journey.id, step.id, run.person_id)
            branch = choose_branch(step.random_split, value)
            return Taken(f"branch {branch.name}", f"bucket {value} of 100", branch.next or None)
        if kind == "update_profile":
            return await self._update_profile(run, step)
        if kind == "decide":
            return await self._decide_offer(run, step)
        return Taken("exit", "exit step", None)

    async def _message(self, session: AsyncSession, writes: _Writes, run: Run, step: d.JourneyStep) -> Taken:
        rule = step.message
        nxt = rule.next or None
        # A send an experiment arm's send_delay_s put off: its request id was fixed (and exposed) then.
        delayed = run.data.pop("delayed", None)
        put_off = delayed if isinstance(delayed, dict) and delayed.get("step") == step.id else None
        verdicts = writes.verdicts.get(run.person_id)
        if verdicts is None:
            verdicts = (await contact.verdicts_of(session, [run.person_id]))[run.person_id]
        channel = choose_channel(list(rule.channels), verdicts)
        if channel is None:
            return Taken("skipped", "no channel of the step has the person's marketing consent", nxt)
        if self._caps:
            await self._repository.lock_person_contacts(session, run.person_id)
            now = datetime.now(UTC)
            since = earliest_start(self._caps, now, self._zone)
            assert since is not None
            contacts = [
                Contact(channel=c, at=at)
                for c, at in await self._repository.contacts_since(session, run.person_id, since)
            ] + [  # sends of this transaction not written yet
                Contact(channel=c, at=at) for _, person, c, at in writes.contacts if person == run.person_id
            ]
            cap = reached_cap(self._caps, contacts, channel, now, self._zone)
            if cap is not None:
                if rule.on_cap == d.MessageStep.CAP_ACTION_HOLD:
                    hold = (
                        rule.hold_for.ToTimedelta()
                        if rule.HasField("hold_for") and rule.hold_for.ToTimedelta() > timedelta(0)
                        else _DEFAULT_HOLD
                    )
                    until = now + hold
                    if put_off is not None:
                        run.data["delayed"] = put_off
                    return Taken(
                        "held",
                        f"{cap.describe()} reached; tried again at {until.isoformat()}",
                        step.id,
                        until,
                        stay=True,
                    )
                return Taken("skipped", f"{cap.describe()} reached", nxt)
        request_id = (
            str(put_off["request_id"])
            if put_off is not None
            else f"journey-run:{run.id}:{step.id}:{run.visits[step.id]}"
        )
        template_id = rule.template_id
        arm = ""
        # --- Experiments: the message would go now, so the step asks for the person's assignment. ---
        assignment = await self._assign(session, run, step, request_id)
        if assignment.global_control:
            return Taken("global_control", "in the global control group: no marketing is sent", nxt)
        if assignment.holdout:
            return Taken(
                "holdout", f"experiment {assignment.experiment_id}, arm {assignment.arm}: nothing sent", nxt
            )
        if assignment.experiment_id is not None:
            if assignment.send_delay_s and put_off is None:
                # A send-time arm: the step is taken again after the delay (consent and caps checked anew).
                until = datetime.now(UTC) + timedelta(seconds=assignment.send_delay_s)
                run.data["delayed"] = {"step": step.id, "request_id": request_id}
                return Taken(
                    "delayed",
                    f"experiment {assignment.experiment_id} arm {assignment.arm}: sent at {until.isoformat()}",
                    step.id,
                    until,
                    stay=True,
                )
            template_id = assignment.template_id or template_id
            # The arm's channel where the person's verdicts allow marketing on it, else the step's choice.
            channel = (
                choose_channel([assignment.channel], verdicts) if assignment.channel else None
            ) or channel
            arm = f", experiment {assignment.experiment_id} arm {assignment.arm}"
        # --- end of experiments. ---
        writes.contacts.append((request_id, run.person_id, channel, datetime.now(UTC)))
        variables: dict[str, Any] = {}
        if run.data.get("trigger"):
            variables["trigger"] = run.data["trigger"]
        if run.data.get("offer"):
            variables["offer"] = run.data["offer"]
        if run.key:
            variables["key"] = run.key
        writes.sends.append(
            self._publisher.send_request(
                request_id=request_id,
                person_id=run.person_id,
                channel=channel,
                template_id=template_id,
                journey_id=run.journey_id,
                contact_verdict_version=verdicts.version,
                variables=variables or None,
            )
        )
        return Taken(
            "sent", f"{_channel_name(channel)}, template {template_id}, request {request_id}{arm}", nxt
        )

    async def _assign(
        self, session: AsyncSession, run: Run, step: d.JourneyStep, request_id: str
    ) -> Assignment:
        """The person's assignment for this message step (an experiment on the step, else on the journey, else
        on the step's template; the global control group), its exposure logged; without experiments, a send."""
        if self._experiments is None:
            return Assignment()
        attachments = [
            Attachment.journey_step(run.journey_id, step.id),
            Attachment(AttachmentKind.JOURNEY, str(run.journey_id)),
            Attachment(AttachmentKind.TEMPLATE, step.message.template_id),
        ]
        return await self._experiments.assign(session, attachments, run.person_id, request_id=request_id)

    async def _wait(self, session: AsyncSession, run: Run, rule: d.WaitStep, now: datetime) -> Taken:
        until_kind = rule.WhichOneof("until")
        nxt = rule.next or None
        if until_kind == "duration":
            until = now + rule.duration.ToTimedelta()
        elif until_kind == "time_of_day":
            traits = await self._store.traits(session, run.person_id)
            zone = zone_of(traits, rule.time_of_day.time_zone, self._zone)
            until = next_time_of_day(now, rule.time_of_day, zone)
        else:
            traits = await self._store.traits(session, run.person_id)
            instant = trait_instant(traits.get(rule.trait_date.trait), zone_of(traits, "", self._zone))
            if instant is None:
                return Taken("no date", f"trait {rule.trait_date.trait} holds no date; not waited", nxt)
            until = instant + rule.trait_date.offset.ToTimedelta()
        if until <= now:
            return Taken("passed", f"{until.isoformat()} has passed", nxt)
        return Taken("waiting", f"until {until.isoformat()}", nxt, until)

    async def _condition(
        self, session: AsyncSession, run: Run, rule: d.ConditionStep, now: datetime
    ) -> tuple[bool, str]:
        which = rule.WhichOneof("condition")
        if which == "in_segment_id":
            member = await self._store.is_member(session, run.person_id, uuid.UUID(rule.in_segment_id))
            return member, f"{'in' if member else 'not in'} segment {rule.in_segment_id}"
        if which == "trait":
            traits = await self._store.traits(session, run.person_id)
            value = traits.get(rule.trait.trait)
            holds = value is not None and (not rule.trait.equals or as_text(value) == rule.trait.equals)
            return holds, f"trait {rule.trait.trait} is {value!r}"
        window = rule.event_in_window
        since = now - window.window.ToTimedelta()
        spec = await self.spec(session, run.journey_id, run.version)
        key = None
        if window.match_key and spec is not None:
            key = (spec.entry_rule.key_property, run.key)
        found = await self._store.event_since(session, run.person_id, window.event_type, since, key)
        return found, f"{window.event_type} {'seen' if found else 'not seen'} since {since.isoformat()}"

    async def _update_profile(self, run: Run, step: d.JourneyStep) -> Taken:
        rule = step.update_profile
        value = MessageToDict(rule.value) if rule.HasField("value") else None
        if self._set_traits is None:
            raise RuntimeError("no profile to set traits on")
        request_id = f"journey-run:{run.id}:{step.id}:{run.visits[step.id]}"
        await self._set_traits(run.person_id, {rule.trait: value}, request_id)
        return Taken("set", f"{rule.trait} = {value!r}", rule.next or None)

    async def _decide_offer(self, run: Run, step: d.JourneyStep) -> Taken:
        rule = step.decide
        if self._decide is None:
            raise RuntimeError("no decider")
        decision = await self._decide(
            DecideQuery(
                person_id=run.person_id,
                touchpoint=rule.touchpoint,
                channel=0,
                context={"journey_id": str(run.journey_id), "run_id": str(run.id)},
                limit=1,
            )
        )
        if not decision.actions:
            run.data.pop("offer", None)
            return Taken(
                "no offer",
                f"nothing eligible at {rule.touchpoint} (decision {decision.id})",
                rule.next or None,
            )
        offer = decision.actions[0].offer
        run.data["offer"] = {"id": str(offer.id), "name": offer.name, "description": offer.description}
        return Taken(f"offer {offer.name}", f"decision {decision.id} at {rule.touchpoint}", rule.next or None)

    # -- run bookkeeping -----------------------------------------------------------------------------------

    def _record(self, writes: _Writes, run: Run, step: d.JourneyStep, taken: Taken) -> None:
        writes.records.append(
            StepRecord(
                run.id,
                step_id=step.id,
                kind=specs.kind_of(step),
                at=datetime.now(UTC),
                outcome=taken.outcome,
                detail=taken.detail,
                next_step=step.id if taken.stay else taken.next_step,
            )
        )

    def _end(self, writes: _Writes, run: Run, state: str, reason: str, *, kind: str | None) -> None:
        now = datetime.now(UTC)
        if kind is not None:
            writes.records.append(
                StepRecord(
                    run.id,
                    step_id=run.current_step or "",
                    kind=kind,
                    at=now,
                    outcome=state,
                    detail=reason,
                    next_step=None,
                )
            )
        run.state, run.end_reason, run.end_time = state, reason, now
        run.current_step, run.due_at = None, None
        run.data.pop("waiting", None)
        writes.save(run)

    # -- lifecycle hooks -----------------------------------------------------------------------------------

    async def end_runs(self, session: AsyncSession, journey_id: uuid.UUID, reason: str) -> int:
        """End every run of the journey still going (archive); return how many."""
        runs = await self._store.active_runs(session, journey_id=journey_id, lock=True)
        writes = _Writes()
        for run in runs:
            self._end(writes, run, "exited", reason, kind="archive")
        await self._flush(session, writes)
        await cancel(session, STEP_JOB, [str(run.id) for run in runs])
        return len(runs)

    async def resume_runs(self, session: AsyncSession, journey_id: uuid.UUID) -> int:
        """Schedule the due step of every run still going (resume): at its due time, or now if it passed."""
        runs = await self._store.active_runs(session, journey_id=journey_id)
        await schedule_many(
            session,
            STEP_JOB,
            {str(run.id): run.due_at for run in runs},
            {str(run.id): {"step": run.current_step} for run in runs},
            replace=True,
        )
        return len(runs)


def _channel_name(channel: int) -> str:
    from omni.common.v1 import common_pb2

    try:
        return common_pb2.Channel.Name(common_pb2.Channel.ValueType(channel))
    except ValueError:
        return str(channel)


def struct(values: dict[str, Any]) -> struct_pb2.Struct:
    """A Struct of plain values."""
    message = struct_pb2.Struct()
    message.update(values)
    return message
