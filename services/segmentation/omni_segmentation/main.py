"""Wiring of the segmentation service: settings, runtime, consumers, the clock and the gRPC servicer."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from omni.segmentation.v1 import segmentation_pb2_grpc
from omni_kit.idempotency import keep_answers_purged
from omni_kit.lineage import PERSON_LINEAGE
from omni_kit.runtime import Runtime
from omni_kit.settings import ServiceSettings
from omni_segmentation.api import SegmentationServicer
from omni_segmentation.catalog import SegmentCatalog
from omni_segmentation.clock import Clock
from omni_segmentation.consumers import CONSUMED, EventHandlers
from omni_segmentation.erasure import PersonEraser
from omni_segmentation.facts import FactsRecorder
from omni_segmentation.membership import MembershipEvaluator
from omni_segmentation.merge import PersonMerger
from omni_segmentation.repository import Repository
from omni_segmentation.unmerge import PersonUnmerger
from omni_segmentation.vocabulary import Vocabulary

MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = "omni.segmentation.v1.SegmentationService"


class Settings(ServiceSettings):
    """Segmentation's settings, from OMNI_SEGMENTATION_* variables."""

    model_config = SettingsConfigDict(env_prefix="OMNI_SEGMENTATION_", extra="ignore", frozen=True)

    grpc_port: int = Field(15053, ge=0, le=65535, description="Port of the gRPC server; 0 picks a free one.")
    clock_batch_size: int = Field(
        500, ge=1, le=10_000, description="Persons evaluated per clock transaction (due checks, backfills)."
    )
    purge_interval_s: float = Field(300.0, gt=0, description="How often old event occurrences are purged.")
    sizes_interval_s: float = Field(
        3600.0, gt=0, description="How often every segment's member count is recorded as today's size."
    )
    event_retention_floor_s: int = Field(
        86_400,
        ge=0,
        description="Event occurrences are kept at least this long, even if no segment counts over so long.",
    )


async def start(settings: Settings) -> Runtime:
    """Open the runtime, start the consumer and the clock, serve gRPC; return the running runtime."""
    runtime = Runtime("segmentation", settings, migrations=MIGRATIONS)
    await runtime.open()
    try:
        repository = Repository()
        catalog = SegmentCatalog(repository)
        evaluator = MembershipEvaluator(repository, catalog, runtime.outbox)
        vocabulary = Vocabulary(repository)
        handlers = EventHandlers(
            FactsRecorder(repository, evaluator, PERSON_LINEAGE, vocabulary, catalog),
            PersonMerger(repository, evaluator),
            PersonUnmerger(repository, evaluator),
            PersonEraser(repository),
            PERSON_LINEAGE,
        )
        clock = Clock(
            runtime.transaction,
            repository,
            catalog,
            evaluator,
            batch_size=settings.clock_batch_size,
            purge_interval_s=settings.purge_interval_s,
            retention_floor=timedelta(seconds=settings.event_retention_floor_s),
            sizes_interval_s=settings.sizes_interval_s,
        )
        # One consumer for every consumed type keeps a person's events in the order the stream holds them.
        runtime.add_consumer(durable="facts", event_types=CONSUMED, handler=handlers)
        clock.register(runtime.jobs)
        await runtime.when_database_answers(clock.start)
        await keep_answers_purged(runtime)
        servicer = SegmentationServicer(
            runtime, repository, catalog, evaluator, vocabulary, on_segment_created=runtime.jobs.wake
        )
        await runtime.serve(
            service_names=[SERVICE_NAME],
            register=lambda server: segmentation_pb2_grpc.add_SegmentationServiceServicer_to_server(
                servicer, server
            ),
        )
    except BaseException:
        await runtime.close()
        raise
    return runtime
