"""Wiring of the decisioning service: settings, migrations, and start()."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import grpc
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import SettingsConfigDict
from sqlalchemy.ext.asyncio import AsyncSession

from omni.common.v1 import common_pb2
from omni.decisioning.v1 import decisioning_pb2_grpc, experiments_pb2_grpc, reports_pb2_grpc
from omni.gateway.v1 import gateway_pb2_grpc
from omni.profile.v1 import profile_pb2_grpc
from omni.segmentation.v1 import segmentation_pb2_grpc
from omni_decisioning.api import DecisioningServicer
from omni_decisioning.consumers import CONSUMED, EventHandlers
from omni_decisioning.contact_policy import Cap, Period
from omni_decisioning.decide import Decider
from omni_decisioning.evaluation.evaluate import Evaluator
from omni_decisioning.evaluation.repository import EvaluationRepository
from omni_decisioning.events import Publisher
from omni_decisioning.experiments.api import ExperimentServicer, ReportServicer
from omni_decisioning.experiments.consumers import OUTCOME_EVENTS, OutcomeHandlers
from omni_decisioning.experiments.experiments import Experiments
from omni_decisioning.experiments.outcomes import Outcomes
from omni_decisioning.experiments.repository import ExperimentRepository, OutcomeRepository
from omni_decisioning.journeys import Journeys
from omni_decisioning.learning.arbitration import Arbiter
from omni_decisioning.learning.outcomes import Learning
from omni_decisioning.learning.repository import LearningRepository
from omni_decisioning.offers import Offers
from omni_decisioning.orchestration.api import JourneyFlows
from omni_decisioning.orchestration.consumers import CONSUMED as PROFILE_CONSUMED
from omni_decisioning.orchestration.consumers import ProfileEventHandlers
from omni_decisioning.orchestration.engine import ENTER_MEMBERS_JOB, STEP_JOB, Engine
from omni_decisioning.orchestration.lifecycle import Lifecycle
from omni_decisioning.orchestration.profile import PROFILE_SERVICE, ProfileTraits
from omni_decisioning.orchestration.store import Store
from omni_decisioning.read_models import ReadModels
from omni_decisioning.references import GATEWAY_SERVICE, SEGMENTATION_SERVICE, References
from omni_decisioning.repository import Repository
from omni_kit.grpc_client import channel
from omni_kit.idempotency import keep_answers_purged
from omni_kit.lineage import PERSON_LINEAGE, Erasure, Lineage, Merge
from omni_kit.runtime import Runtime
from omni_kit.settings import ServiceSettings

MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = "omni.decisioning.v1.DecisioningService"
EXPERIMENT_SERVICE_NAME = "omni.decisioning.v1.ExperimentService"
REPORT_SERVICE_NAME = "omni.decisioning.v1.ReportService"


class ContactCap(BaseModel):
    """At most max_messages marketing messages per period, on one channel or all of them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_messages: int = Field(ge=0, le=10_000)
    period: Period
    channel: Literal["", "email", "sms", "push"] = ""

    def cap(self) -> Cap:
        channels = {
            "": 0,
            "email": common_pb2.CHANNEL_EMAIL,
            "sms": common_pb2.CHANNEL_SMS,
            "push": common_pb2.CHANNEL_PUSH,
        }
        return Cap(max_messages=self.max_messages, period=self.period, channel=channels[self.channel])


class Settings(ServiceSettings):
    """Decisioning's settings, from OMNI_DECISIONING_* environment variables."""

    model_config = SettingsConfigDict(env_prefix="OMNI_DECISIONING_", extra="ignore", frozen=True)

    grpc_port: int = Field(15054, ge=0, le=65535, description="Port of the gRPC server; 0 picks a free one.")
    segmentation_target: str = Field(
        "127.0.0.1:15053",
        description="host:port of segmentation, asked whether a new journey's segment exists.",
    )
    profile_target: str = Field(
        "127.0.0.1:15052",
        description="host:port of profile, whose SetTraits a journey's update-profile step calls.",
    )
    gateway_target: str = Field(
        "127.0.0.1:15055", description="host:port of the gateway, asked about a new journey's template."
    )
    client_timeout_s: float = Field(
        5.0, gt=0, description="Deadline of each call to segmentation or the gateway."
    )
    journey_reentry_s: int = Field(
        86_400,
        ge=0,
        description="A journey starts at most once per person within this many seconds; 0 turns the guard off.",
    )
    contact_caps: list[ContactCap] = Field(
        default_factory=list,
        max_length=20,
        description='Caps on marketing messages per person, e.g. [{"max_messages": 2, "period": "week"}, '
        '{"max_messages": 1, "period": "day", "channel": "sms"}]; none: no caps.',
    )
    learning_draws: int = Field(
        2000,
        ge=100,
        le=1_000_000,
        description="Monte Carlo draws estimating a learned decision's propensities, per set of eligible offers "
        "(kept until the model is reloaded).",
    )
    learning_refresh_s: float = Field(
        1.0,
        ge=0,
        description="How old the outcome counts behind the learned propensities may get before Decide reloads "
        "them (a changed learning policy is reloaded at once).",
    )
    time_zone: str = Field(
        "UTC",
        description="The IANA time zone of calendar days and weeks in contact caps, e.g. Europe/Berlin.",
    )

    global_control_basis_points: int = Field(
        0,
        ge=0,
        le=5_000,
        description="The share of all persons kept in the global control group (no marketing at all), in "
        "hundredths of a percent: 500 is 5%; 0 keeps no global control group.",
    )
    global_control_salt: str = Field(
        "omni",
        min_length=1,
        max_length=100,
        description="Salt of the global control group's hash; changing it draws a new group.",
    )

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise ValueError(f"not an IANA time zone: {value!r}") from error
        return value


async def start(settings: Settings) -> Runtime:
    """Open the database and event log, start the consumer of read-model events, and serve gRPC."""
    runtime = Runtime("decisioning", settings, migrations=MIGRATIONS)
    await runtime.open()
    repository = Repository()
    publisher = Publisher(runtime.outbox)
    experiment_repository = ExperimentRepository()
    experiments = Experiments(
        experiment_repository,
        global_control_basis_points=settings.global_control_basis_points,
        global_control_salt=settings.global_control_salt,
    )
    journeys = Journeys(
        repository,
        publisher,
        reentry_window=timedelta(seconds=settings.journey_reentry_s),
        caps=[cap.cap() for cap in settings.contact_caps],
        time_zone=ZoneInfo(settings.time_zone),
        experiments=experiments,
    )
    read_models = ReadModels(repository, PERSON_LINEAGE)
    flow_store = Store()

    async def merged(session: AsyncSession, merges: Sequence[Merge]) -> None:
        await read_models.persons_merged(session, merges)
        for merge in merges:
            await flow_store.merge_persons(session, merge.survivor_id, merge.merged_ids)

    async def erased(session: AsyncSession, erasure: Erasure) -> None:
        await read_models.persons_forgotten(session, erasure)
        await flow_store.forget_persons(session, list(erasure.person_ids))
        await experiment_repository.forget_persons(session, erasure.person_ids)

    lineage = Lineage(
        PERSON_LINEAGE, on_merge=merged, on_unmerge=read_models.person_unmerged, on_erase=erased
    )
    store = flow_store
    profile = runtime.track_channel(
        channel(
            settings.profile_target,
            service=PROFILE_SERVICE,
            idempotent_methods=["SetTraits"],
            timeout_s=settings.client_timeout_s,
            security=runtime.client_security,
        )
    )
    learning = Learning(
        LearningRepository(),
        Arbiter(draws=settings.learning_draws, refresh_s=settings.learning_refresh_s),
    )
    decider = Decider(runtime, repository, publisher, learning)
    engine = Engine(
        store,
        repository,
        publisher,
        caps=[cap.cap() for cap in settings.contact_caps],
        time_zone=ZoneInfo(settings.time_zone),
        set_traits=ProfileTraits(profile_pb2_grpc.ProfileServiceStub(profile)),  # type: ignore[arg-type]
        decide=decider.decide,
        experiments=experiments,
    )
    handlers = EventHandlers(read_models, journeys, lineage, engine)
    runtime.add_consumer(durable="read-models", event_types=CONSUMED, handler=handlers.handle)
    profile_handlers = ProfileEventHandlers(engine, store, read_models)
    runtime.add_consumer(
        durable="journey-profile", event_types=PROFILE_CONSUMED, handler=profile_handlers.handle
    )
    runtime.add_job_kind(STEP_JOB, engine.run_steps, lease=timedelta(seconds=60), batch_size=100)
    runtime.add_job_kind(ENTER_MEMBERS_JOB, engine.enter_members, lease=timedelta(minutes=5), batch_size=1)
    outcomes = Outcomes(OutcomeRepository(), experiment_repository)
    runtime.add_consumer(
        durable="outcomes",
        event_types=OUTCOME_EVENTS,
        handler=OutcomeHandlers(outcomes, PERSON_LINEAGE).handle,
    )
    await keep_answers_purged(runtime)
    # Asked only when a journey or offer is created; Decide calls nobody.
    segmentation = runtime.track_channel(
        channel(
            settings.segmentation_target,
            service=SEGMENTATION_SERVICE,
            idempotent_methods=["GetSegment"],
            timeout_s=settings.client_timeout_s,
            security=runtime.client_security,
        )
    )
    gateway = runtime.track_channel(
        channel(
            settings.gateway_target,
            service=GATEWAY_SERVICE,
            idempotent_methods=["GetTemplate"],
            timeout_s=settings.client_timeout_s,
            security=runtime.client_security,
        )
    )
    references = References(
        segmentation_pb2_grpc.SegmentationServiceStub(segmentation),  # type: ignore[arg-type]
        gateway_pb2_grpc.GatewayServiceStub(gateway),  # type: ignore[arg-type]
    )
    servicer = DecisioningServicer(
        runtime,
        journeys=journeys,
        offers=Offers(repository),
        decider=decider,
        references=references,
        learning=learning,
        evaluator=Evaluator(EvaluationRepository()),
        flows=JourneyFlows(
            lifecycle=Lifecycle(store, engine),
            engine=engine,
            store=store,
            references=references,
            read_models=read_models,
        ),
    )
    experiment_servicer = ExperimentServicer(runtime, experiments, references)
    report_servicer = ReportServicer(runtime, experiment_repository, outcomes)

    def register(server: grpc.aio.Server) -> None:
        decisioning_pb2_grpc.add_DecisioningServiceServicer_to_server(servicer, server)
        experiments_pb2_grpc.add_ExperimentServiceServicer_to_server(experiment_servicer, server)
        reports_pb2_grpc.add_ReportServiceServicer_to_server(report_servicer, server)

    await runtime.serve(
        service_names=[SERVICE_NAME, EXPERIMENT_SERVICE_NAME, REPORT_SERVICE_NAME], register=register
    )
    return runtime
