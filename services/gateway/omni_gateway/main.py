"""Wiring of the channel gateway: settings, then start() builds everything and serves it."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from omni.gateway.v1 import gateway_pb2_grpc
from omni.identity.v1 import identity_pb2_grpc
from omni.profile.v1 import profile_pb2_grpc
from omni_gateway.api import GatewayServicer
from omni_gateway.consumers import ErasureHook, EventRouter, SendRequestedHandler
from omni_gateway.contacts import Contacts
from omni_gateway.delivery import Delivery
from omni_gateway.rendering import Renderer
from omni_gateway.repository import Repository
from omni_gateway.retry import DELIVERY_ATTEMPT, DeliveryAttempts, RetryPolicy
from omni_gateway.smtp import Mailer, SmtpConfig
from omni_kit import contact
from omni_kit.grpc_client import channel
from omni_kit.idempotency import keep_answers_purged
from omni_kit.lineage import PERSON_LINEAGE, Lineage
from omni_kit.runtime import Runtime
from omni_kit.settings import ServiceSettings

MIGRATIONS = Path(__file__).parent / "migrations"


class Settings(ServiceSettings):
    """The gateway's settings, from OMNI_GATEWAY_* variables."""

    model_config = SettingsConfigDict(env_prefix="OMNI_GATEWAY_", extra="ignore", frozen=True)

    grpc_port: int = Field(15055, ge=0, le=65535, description="Port of the gRPC server; 0 picks a free one.")
    identity_target: str = Field("127.0.0.1:15051", description="host:port of the identity service.")
    profile_target: str = Field("127.0.0.1:15052", description="host:port of the profile service.")
    client_timeout_s: float = Field(5.0, gt=0, description="Deadline of each call to identity and profile.")
    smtp_host: str = Field("127.0.0.1", description="The SMTP server mail is submitted to.")
    smtp_port: int = Field(25, ge=1, le=65535, description="Its port.")
    smtp_from: str = Field("omni@localhost", description='The From address, e.g. "Shop <shop@example.com>".')
    smtp_username: str | None = Field(None, description="User for SMTP AUTH; none means no AUTH.")
    smtp_password: SecretStr | None = Field(None, description="Password for SMTP AUTH.")
    smtp_timeout_s: float = Field(10.0, gt=0, description="Timeout of each step of the SMTP conversation.")
    smtp_starttls: bool = Field(False, description="Upgrade the SMTP connection with STARTTLS.")
    send_max_attempts: int = Field(8, ge=1, le=100, description="Delivery attempts before a message fails.")
    retry_first_delay_s: float = Field(30.0, gt=0, description="Wait before the first retry; doubles after.")
    retry_max_delay_s: float = Field(3600.0, gt=0, description="Longest wait between two attempts.")
    attempt_lease_s: float = Field(
        120.0, gt=0, description="How long an attempt holds a message before another may take it up."
    )
    verdicts_durable: str = Field(
        "contact-verdicts",
        pattern=r"^[a-z][a-z0-9-]{0,62}$",
        description="The durable consumer of profile's contact verdicts (after gateway-). Replicas of one "
        "gateway share it; another gateway with its own database in the same event namespace needs its own.",
    )


async def start(settings: Settings) -> Runtime:
    """Open the runtime, build the parts, consume send requests, erasures and profile's contact verdicts, retry
    queued messages, serve."""
    runtime = Runtime("gateway", settings, migrations=MIGRATIONS)
    try:
        await _wire(runtime, settings)
    except BaseException:
        await runtime.close()
        raise
    return runtime


async def _wire(runtime: Runtime, settings: Settings) -> None:
    await runtime.open()
    identity_channel = runtime.track_channel(
        channel(
            settings.identity_target,
            service="omni.identity.v1.IdentityService",
            idempotent_methods=["GetPerson"],
            timeout_s=settings.client_timeout_s,
            security=runtime.client_security,
        )
    )
    profile_channel = runtime.track_channel(
        channel(
            settings.profile_target,
            service="omni.profile.v1.ProfileService",
            idempotent_methods=["GetProfile"],
            timeout_s=settings.client_timeout_s,
            security=runtime.client_security,
        )
    )
    contacts = Contacts(
        identity_pb2_grpc.IdentityServiceStub(identity_channel),  # type: ignore[arg-type]
        profile_pb2_grpc.ProfileServiceStub(profile_channel),  # type: ignore[arg-type]
    )
    mailer = Mailer(
        SmtpConfig(
            host=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
            timeout_s=settings.smtp_timeout_s,
            starttls=settings.smtp_starttls,
        )
    )
    policy = RetryPolicy(
        max_attempts=settings.send_max_attempts,
        first_delay_s=settings.retry_first_delay_s,
        max_delay_s=settings.retry_max_delay_s,
        lease_s=settings.attempt_lease_s,
    )
    repository = Repository()
    renderer = Renderer()
    delivery = Delivery(
        transaction=runtime.transaction,
        repository=repository,
        outbox=runtime.outbox,
        contacts=contacts,
        renderer=renderer,
        mailer=mailer,
        sender=settings.smtp_from,
        policy=policy,
    )
    # Identity's lineage shares the send requests' durable, so an erasure applies in log order with them.
    lineage = Lineage(PERSON_LINEAGE, on_erase=ErasureHook(repository))
    router = EventRouter(SendRequestedHandler(delivery, repository, PERSON_LINEAGE), lineage)
    runtime.add_consumer(durable="send-requests", event_types=router.event_types, handler=router)
    # A durable of its own, which reads the log from its start when first created: verdicts profile announced
    # before this gateway kept any (the republish after the upgrade) reach it whenever it is deployed. A
    # journey's send waits for the verdicts it was decided by (SendRequest.contact_verdict_version), so the
    # two need no common order.
    runtime.add_consumer(
        durable=settings.verdicts_durable,
        event_types=[contact.CONTACT_VERDICT_CHANGED],
        handler=contact.ContactVerdictHandler(),
    )
    runtime.add_job_kind(
        DELIVERY_ATTEMPT,
        DeliveryAttempts(claim=delivery.claim, attempt=delivery.attempt),
        lease=policy.lease,
        # No more than run at once (DeliveryAttempts' concurrency): a batch waiting for its turn would sit
        # out its lease while the others talk to the SMTP server.
        batch_size=10,
    )
    # At a graceful stop the messages whose attempts did not finish are due again at once, not in a lease.
    runtime.on_close(delivery.release_leases)
    await keep_answers_purged(runtime)
    servicer = GatewayServicer(
        transaction=runtime.transaction, repository=repository, renderer=renderer, delivery=delivery
    )
    await runtime.serve(
        service_names=["omni.gateway.v1.GatewayService"],
        register=lambda server: gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server),
    )
