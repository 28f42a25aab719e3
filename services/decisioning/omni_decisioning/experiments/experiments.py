"""Experiments: defining them, moving them through their life, assigning persons, and their results."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from omni_decisioning.experiments import stats
from omni_decisioning.experiments.assignment import choose_arm, in_global_control
from omni_decisioning.experiments.entities import (
    GLOBAL_CONTROL_ARM,
    GLOBAL_CONTROL_ID,
    MARKETED_ARM,
    Arm,
    Assignment,
    Attachment,
    AttachmentKind,
    ConversionDefinition,
    Experiment,
    ExperimentState,
    NewExperiment,
)
from omni_decisioning.experiments.repository import ExperimentRepository
from omni_kit.errors import AlreadyExists, FailedPrecondition, NotFound
from omni_kit.ids import new_id

# The states each state may move to.
_NEXT = {
    ExperimentState.RUNNING: {ExperimentState.DRAFT},
    ExperimentState.STOPPED: {ExperimentState.RUNNING},
    ExperimentState.ARCHIVED: {ExperimentState.DRAFT, ExperimentState.STOPPED},
}


@dataclass(frozen=True)
class ArmResults:
    """One arm's results."""

    arm: Arm
    exposures: int
    conversions: int
    revenue_minor: int
    conversion_rate: stats.Interval
    revenue_per_exposure: stats.Interval
    conversion_lift: stats.Interval | None
    revenue_lift: stats.Interval | None
    incremental_lift: stats.Interval | None = None

    @property
    def significant(self) -> bool:
        """Whether the conversion lift's interval excludes 0."""
        return self.conversion_lift is not None and self.conversion_lift.excludes(0.0)

    @property
    def verdict(self) -> str:
        """The result in words."""
        if self.arm.control:
            return "control"
        if not self.significant or self.conversion_lift is None:
            return "not yet significant"
        return "better than control" if self.conversion_lift.low > 0 else "worse than control"


@dataclass(frozen=True)
class Results:
    """An experiment's results per arm, and the sample-ratio check."""

    experiment: Experiment | None
    arms: list[ArmResults]
    sample_ratio: stats.SampleRatioCheck


class Experiments:
    """Experiments as resources, and the assignment journeys ask for at each send."""

    def __init__(
        self,
        repository: ExperimentRepository,
        *,
        global_control_basis_points: int = 0,
        global_control_salt: str = "",
    ) -> None:
        self._repository = repository
        self._global_share = global_control_basis_points
        self._global_salt = global_control_salt

    async def create(self, session: AsyncSession, new: NewExperiment) -> Experiment:
        """Store a draft experiment; NotFound for an unknown definition, AlreadyExists for a taken name."""
        if await self._repository.get_definition(session, new.conversion_definition_id) is None:
            raise NotFound(
                message=f"no conversion definition {new.conversion_definition_id}",
                reason="CONVERSION_DEFINITION_NOT_FOUND",
                metadata={"field": "experiment.conversion_definition_id"},
            )
        if new.attachment.kind == AttachmentKind.JOURNEY and not await self._repository.journey_exists(
            session, uuid.UUID(new.attachment.value)
        ):
            raise NotFound(
                message=f"no journey {new.attachment.value}",
                reason="JOURNEY_NOT_FOUND",
                metadata={"field": "experiment.attachment.journey_id", "journey_id": new.attachment.value},
            )
        if new.attachment.kind == AttachmentKind.JOURNEY_STEP:
            journey_id, step_id = new.attachment.journey_and_step()
            if not await self._repository.journey_exists(session, journey_id):
                raise NotFound(
                    message=f"no journey {journey_id}",
                    reason="JOURNEY_NOT_FOUND",
                    metadata={
                        "field": "experiment.attachment.journey_step.journey_id",
                        "journey_id": str(journey_id),
                    },
                )
            if not await self._repository.message_step_exists(session, journey_id, step_id):
                raise NotFound(
                    message=f"journey {journey_id} has no message step {step_id!r} in its draft or a "
                    "published version",
                    reason="JOURNEY_STEP_NOT_FOUND",
                    metadata={"field": "experiment.attachment.journey_step.step_id", "step_id": step_id},
                )
        experiment = Experiment(
            **{name: getattr(new, name) for name in NewExperiment.__dataclass_fields__},
            id=new_id(),
            state=ExperimentState.DRAFT,
            create_time=datetime.now(UTC),
        )
        if not await self._repository.insert_experiment(session, experiment):
            raise AlreadyExists(
                message=f"an experiment named {new.name!r} exists already",
                reason="EXPERIMENT_EXISTS",
                metadata={"name": new.name},
            )
        return experiment

    async def get(
        self, session: AsyncSession, experiment_id: uuid.UUID, *, for_update: bool = False
    ) -> Experiment:
        """An experiment; NotFound otherwise."""
        experiment = await self._repository.get_experiment(session, experiment_id, for_update=for_update)
        if experiment is None:
            raise NotFound(
                message=f"no experiment {experiment_id}",
                reason="EXPERIMENT_NOT_FOUND",
                metadata={"experiment_id": str(experiment_id)},
            )
        return experiment

    async def page(
        self, session: AsyncSession, *, after: uuid.UUID | None, size: int, show_archived: bool
    ) -> tuple[list[Experiment], bool]:
        """One page of experiments after an id, and whether more follow."""
        rows = await self._repository.list_experiments(
            session, after=after, limit=size + 1, show_archived=show_archived
        )
        return rows[:size], len(rows) > size

    async def move(
        self, session: AsyncSession, experiment_id: uuid.UUID, state: ExperimentState
    ) -> Experiment:
        """Start, stop or archive; the same move again answers the experiment as it is."""
        experiment = await self.get(session, experiment_id, for_update=True)
        if experiment.state == state:
            return experiment
        if experiment.state not in _NEXT[state]:
            raise FailedPrecondition(
                message=f"a {experiment.state.value} experiment cannot become {state.value}",
                reason="EXPERIMENT_STATE",
                metadata={"state": experiment.state.value},
            )
        if not await self._repository.set_state(session, experiment_id, state, datetime.now(UTC)):
            raise FailedPrecondition(
                message=f"another experiment runs on {experiment.attachment.kind.value} "
                f"{experiment.attachment.value!r}",
                reason="EXPERIMENT_ATTACHMENT_BUSY",
                metadata={"attachment": experiment.attachment.value},
            )
        return await self.get(session, experiment_id)

    # --- The one assignment function sends call. ---
    async def assign(
        self,
        session: AsyncSession,
        attachments: Sequence[Attachment],
        person_id: uuid.UUID,
        *,
        request_id: str | None,
        at: datetime | None = None,
    ) -> Assignment:
        """What a send to the person does, logging the exposure: the global control group sends nothing;
        otherwise the running experiment on the first of `attachments` (most specific first: a journey step,
        the journey, the template sent) that has one puts the person in an arm by a stable hash. Call it at the
        moment the message would go, after every other reason not to send (consent, caps), so every arm's
        exposures are alike but for the arm."""
        at = at or datetime.now(UTC)
        if self._global_share:
            control = in_global_control(self._global_salt, person_id, self._global_share)
            await self._repository.log_exposure(
                session,
                experiment_id=GLOBAL_CONTROL_ID,
                person_id=person_id,
                arm=GLOBAL_CONTROL_ARM if control else MARKETED_ARM,
                at=at,
                request_id=None if control else request_id,
            )
            if control:
                return Assignment(global_control=True)
        running = {e.attachment: e for e in await self._repository.running_on(session, attachments)}
        experiment = next((running[a] for a in attachments if a in running), None)
        if experiment is None:
            return Assignment()
        arm = choose_arm(experiment.id, experiment.arms, person_id)
        await self._repository.log_exposure(
            session,
            experiment_id=experiment.id,
            person_id=person_id,
            arm=arm.name,
            at=at,
            request_id=None if arm.holdout else request_id,
        )
        return Assignment(
            experiment_id=experiment.id,
            arm=arm.name,
            holdout=arm.holdout,
            template_id=arm.template_id,
            channel=arm.channel,
            send_delay_s=arm.send_delay_s,
        )

    async def results(
        self, session: AsyncSession, experiment_id: uuid.UUID, definition_id: uuid.UUID | None
    ) -> Results:
        """Per arm: exposures, conversions within the definition's window after exposure, revenue, with
        intervals, lift against the control, and the sample-ratio check against the allocation."""
        experiment: Experiment | None = None
        if experiment_id == GLOBAL_CONTROL_ID:
            arms: tuple[Arm, ...] = (
                Arm(name=MARKETED_ARM, allocation_percent=max(0, 100 - self._global_share // 100)),
                Arm(name=GLOBAL_CONTROL_ARM, allocation_percent=self._global_share // 100, control=True),
            )
            shares = [10_000 - self._global_share, self._global_share]
        else:
            experiment = await self.get(session, experiment_id)
            arms = experiment.arms
            shares = [arm.allocation_percent for arm in arms]
            definition_id = definition_id or experiment.conversion_definition_id
        if definition_id is None:
            raise FailedPrecondition(
                message="the global control group's results need a conversion definition",
                reason="CONVERSION_DEFINITION_REQUIRED",
                metadata={"field": "conversion_definition_id"},
            )
        definition = await self.definition(session, definition_id)
        totals = await self._repository.arm_totals(session, experiment_id, definition)
        moments = {arm.name: totals.get(arm.name, (0, 0, 0, 0.0)) for arm in arms}
        control = next(arm for arm in arms if arm.control)
        c_exposures, c_converted, c_revenue, c_sq = moments[control.name]
        control_rate = stats.rate_moments(c_converted, c_exposures)
        control_revenue = stats.Moments(c_exposures, c_revenue, c_sq)
        holdout = next((arm for arm in arms if arm.holdout), None)
        holdout_rate = (
            stats.rate_moments(moments[holdout.name][1], moments[holdout.name][0])
            if holdout is not None
            else None
        )
        results = []
        for arm in arms:
            exposures, converted, revenue, revenue_sq = moments[arm.name]
            revenue_moments = stats.Moments(exposures, revenue, revenue_sq)
            results.append(
                ArmResults(
                    arm=arm,
                    exposures=exposures,
                    conversions=converted,
                    revenue_minor=revenue,
                    conversion_rate=stats.wilson(converted, exposures),
                    revenue_per_exposure=stats.mean_interval(revenue_moments),
                    conversion_lift=None
                    if arm.control
                    else stats.lift(stats.rate_moments(converted, exposures), control_rate),
                    revenue_lift=None if arm.control else stats.lift(revenue_moments, control_revenue),
                    incremental_lift=None
                    if holdout_rate is None or arm.holdout
                    else stats.lift(stats.rate_moments(converted, exposures), holdout_rate),
                )
            )
        check = stats.sample_ratio_mismatch([moments[arm.name][0] for arm in arms], shares)
        return Results(experiment=experiment, arms=results, sample_ratio=check)

    async def definition(self, session: AsyncSession, definition_id: uuid.UUID) -> ConversionDefinition:
        """A conversion definition; NotFound otherwise."""
        definition = await self._repository.get_definition(session, definition_id)
        if definition is None:
            raise NotFound(
                message=f"no conversion definition {definition_id}",
                reason="CONVERSION_DEFINITION_NOT_FOUND",
                metadata={"conversion_definition_id": str(definition_id)},
            )
        return definition
