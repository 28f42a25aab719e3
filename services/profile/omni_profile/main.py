"""Wiring of the profile service: settings, migrations, and start()."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict
from sqlalchemy.ext.asyncio import async_sessionmaker

from omni.profile.v1 import profile_pb2_grpc
from omni_kit import grpc_client
from omni_kit.idempotency import keep_answers_purged
from omni_kit.runtime import Runtime
from omni_kit.security import http_tls
from omni_kit.settings import ServiceSettings
from omni_profile import consumers
from omni_profile.api import Domain, ProfileServicer
from omni_profile.computed_traits import ComputedTraits
from omni_profile.consents import Consents
from omni_profile.contact_verdicts import Republisher
from omni_profile.erasure import Eraser
from omni_profile.http import (
    EndpointLimits,
    HttpEndpoint,
    IdentifierLookup,
    Intake,
    SourceSetting,
    WriteKey,
)
from omni_profile.http.sources import Source, check_write_key
from omni_profile.identity_client import IDEMPOTENT_METHODS, SERVICE, IdentityClient
from omni_profile.ingestion import Ingestion
from omni_profile.merge import Merger
from omni_profile.precedence import DEFAULT_RANKING, SourcePolicy
from omni_profile.profiles import Profiles
from omni_profile.repository import ProfileReader
from omni_profile.tracking import Tracker
from omni_profile.traits import Traits

MIGRATIONS = Path(__file__).parent / "migrations"

AllowedOrigin = Annotated[str, Field(pattern=r"^(\*|https?://[^/\s]+)$", max_length=256)]
"""An origin as browsers send it (scheme://host[:port], no path), or * for any."""
SERVICE_NAME = "omni.profile.v1.ProfileService"


class Settings(ServiceSettings):
    """The profile service's settings, from OMNI_PROFILE_* variables."""

    model_config = SettingsConfigDict(env_prefix="OMNI_PROFILE_", extra="ignore", frozen=True)

    grpc_port: int = Field(15052, ge=0, le=65535, description="Port of the gRPC server; 0 picks a free one.")
    identity_target: str = Field("127.0.0.1:15051", description="host:port of the identity service.")
    identity_timeout_s: float = Field(5.0, gt=0, description="Deadline of each call to identity.")
    trait_source_ranking: tuple[str, ...] = Field(
        DEFAULT_RANKING,
        min_length=1,
        description="Trait sources from the most to the least trusted; a source ranked lower does not "
        "overwrite a value set by a higher one (unlisted sources rank last).",
    )
    trait_stale_after_days: int = Field(
        365, ge=1, description="After this many days any source may overwrite a trait's value."
    )
    read_pool_size: int = Field(
        8,
        ge=1,
        le=100,
        description="Connections of the pool GetProfile reads through (besides db_pool_size).",
    )
    computed_traits_refresh_s: float = Field(
        5.0,
        gt=0,
        description="How often the computed-trait definitions are reloaded; a new definition is backfilled "
        "once it is that old (every replica applies it to new events by then).",
    )
    computed_traits_backfill_slice: int = Field(
        100,
        ge=1,
        le=10_000,
        description="Persons recomputed per transaction when backfilling a computed trait.",
    )
    http_host: str = Field("0.0.0.0", description="Address the Segment-compatible HTTP endpoint binds.")
    http_port: int = Field(
        8088, ge=0, le=65535, description="Port of the Segment-compatible HTTP endpoint; 0 picks a free one."
    )
    write_keys: dict[WriteKey, SourceSetting] = Field(
        default_factory=dict,
        description='Write key → source, as JSON: {"sha256:<hex>": "web"} (the key\'s hash, from `omni '
        'write-key web`; only the hash is kept) or {"wk_pos": {"name": "pos", "channel": "store"}} (a plain '
        "key, for the laptop run). Two keys of one source both work (rotation). The HTTP endpoint runs only "
        "when at least one write key is set.",
    )
    http_allowed_origins: tuple[AllowedOrigin, ...] = Field(
        ("*",),
        min_length=1,
        description='Origins whose pages may post events from a browser, as a JSON list: ["*"] (any, the '
        'default) or e.g. ["https://shop.example", "https://www.shop.example"]. An allowed origin is '
        "answered with itself and Access-Control-Allow-Credentials; another gets 403.",
    )
    http_idle_timeout_s: float = Field(
        15.0,
        gt=0,
        description="A connection that has not sent a whole request's headers this long after it opened or "
        "after its last answer is closed.",
    )
    http_body_timeout_s: float = Field(
        30.0, gt=0, description="A request whose body has not all arrived this long after its headers is 408."
    )
    http_write_key_failures: int = Field(
        20,
        ge=1,
        description="Failed write-key attempts (401) from one client address within "
        "HTTP_WRITE_KEY_FAILURE_WINDOW_S after which it is answered 429 until the oldest leaves the window.",
    )
    http_write_key_failure_window_s: float = Field(
        60.0, gt=0, description="The window failed write-key attempts are counted in, in seconds."
    )

    @field_validator("write_keys")
    @classmethod
    def _write_keys_well_formed(cls, value: dict[str, Source]) -> dict[str, Source]:
        for key in value:
            check_write_key(key)
        return value

    http_rate_limit_per_s: float | None = Field(
        None,
        gt=0,
        description="Requests a second each source (the write key's) may send on average; over it, 429 with "
        "Retry-After. Off when unset.",
    )
    http_rate_limit_burst: float | None = Field(
        None, ge=1, description="Requests a source may send at once (default: one second's worth)."
    )


class ProfileRuntime(Runtime):
    """Profile's runtime: the shared parts, plus the Segment-compatible HTTP endpoint when it runs."""

    http: HttpEndpoint | None = None
    reader: ProfileReader | None = None

    async def close(self) -> None:
        """Stop the HTTP endpoint (letting in-flight requests finish), then everything else."""
        if self.http is not None:
            await self.http.stop()
        await super().close()
        if self.reader is not None:
            await self.reader.close()


async def start(settings: Settings) -> ProfileRuntime:
    """Open the database and event log, register the consumers and serve ProfileService."""
    runtime = ProfileRuntime("profile", settings, migrations=MIGRATIONS)
    try:
        await _wire(runtime, settings)
    except BaseException:
        await runtime.close()
        raise
    return runtime


async def _wire(runtime: ProfileRuntime, settings: Settings) -> None:
    await runtime.open()
    identity_channel = runtime.track_channel(
        grpc_client.channel(
            settings.identity_target,
            service=SERVICE,
            idempotent_methods=list(IDEMPOTENT_METHODS),
            timeout_s=settings.identity_timeout_s,
            security=runtime.client_security,
        )
    )
    identity = IdentityClient(identity_channel)
    policy = SourcePolicy(
        ranking=settings.trait_source_ranking, stale_after=timedelta(days=settings.trait_stale_after_days)
    )
    computed_traits = ComputedTraits(
        runtime.outbox,
        refresh_s=settings.computed_traits_refresh_s,
        backfill_slice=settings.computed_traits_backfill_slice,
    )

    async def load_computed_traits() -> None:
        async with runtime.transaction() as session:
            await computed_traits.refresh(session)

    await runtime.when_database_answers(load_computed_traits)
    catalog = computed_traits.current
    tracker = Tracker(identity, runtime.outbox, catalog)
    traits = Traits(runtime.outbox, policy)
    runtime.reader = ProfileReader(
        settings.database_url,
        size=settings.read_pool_size,
        statement_timeout_ms=settings.db_statement_timeout_ms,
    )
    await runtime.when_database_answers(runtime.reader.open)
    profiles = Profiles(catalog, runtime.reader)
    merger = Merger(runtime.outbox, policy, catalog)
    # One durable for identity's three lineage events, so they apply in the order identity made them.
    lineage = consumers.lineage(merger, Eraser(runtime.outbox))
    runtime.add_consumer(durable="identity-lineage", event_types=lineage.event_types, handler=lineage)
    runtime.add_consumer(
        durable="segment-memberships",
        event_types=[consumers.PERSON_ENTERED_SEGMENT, consumers.PERSON_EXITED_SEGMENT],
        handler=consumers.SegmentMembershipHandler(),
    )
    runtime.add_consumer(
        durable="gateway-outcomes",
        event_types=[
            consumers.MESSAGE_SENT_EVENT,
            consumers.MESSAGE_FAILED_EVENT,
            consumers.MESSAGE_RECEIPT_EVENT,
        ],
        handler=consumers.MessageOutcomeHandler(tracker),
    )
    computed_traits.register(runtime.jobs)
    await keep_answers_purged(runtime)
    runtime.add_task(
        lambda: asyncio.create_task(computed_traits.run(runtime.transaction), name="computed-traits")
    )
    Republisher(runtime.outbox).register(runtime.jobs)
    domain = Domain(
        ingestion=Ingestion(runtime.transaction, tracker),
        traits=traits,
        consents=Consents(runtime.outbox),
        computed_traits=computed_traits,
        reads=async_sessionmaker(runtime.engine.execution_options(isolation_level="AUTOCOMMIT")),
    )
    servicer = ProfileServicer(runtime, tracker, profiles, identity, domain)
    await runtime.serve(
        service_names=[SERVICE_NAME],
        register=lambda server: profile_pb2_grpc.add_ProfileServiceServicer_to_server(servicer, server),
    )
    if settings.write_keys:
        runtime.http = HttpEndpoint(
            Intake(domain.ingestion, traits),
            settings.write_keys,
            IdentifierLookup(identity_channel),
            host=settings.http_host,
            port=settings.http_port,
            shutdown_grace_s=settings.shutdown_grace_s,
            limits=EndpointLimits(
                allowed_origins=settings.http_allowed_origins,
                idle_timeout_s=settings.http_idle_timeout_s,
                body_timeout_s=settings.http_body_timeout_s,
                write_key_failures=settings.http_write_key_failures,
                write_key_failure_window_s=settings.http_write_key_failure_window_s,
                rate_per_s=settings.http_rate_limit_per_s,
                rate_burst=settings.http_rate_limit_burst,
            ),
            ssl_context=http_tls(settings),
        )
        await runtime.http.start()
