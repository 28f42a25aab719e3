"""Wiring of the channel gateway: settings, then start() builds everything and serves it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import grpc
from aiohttp import web
from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from omni.gateway.v1 import gateway_pb2_grpc
from omni.identity.v1 import identity_pb2_grpc
from omni.profile.v1 import profile_pb2_grpc
from omni_gateway.api import GatewayServicer
from omni_gateway.bounces import BounceEndpoint
from omni_gateway.consumers import ErasureHook, EventRouter, SendRequestedHandler
from omni_gateway.contacts import Contacts
from omni_gateway.delivery import Delivery
from omni_gateway.domain import Channel
from omni_gateway.email_links import EmailLinks
from omni_gateway.email_settings import EmailSettings
from omni_gateway.http import SMS_PREFIX, EmailLinkEndpoint
from omni_gateway.providers.base import ChannelProvider
from omni_gateway.providers.registry import ProviderDefaults, ProviderSpec, Registry, build_registry
from omni_gateway.receipts import ReceiptRecorder
from omni_gateway.rendering import Renderer
from omni_gateway.repository import Repository
from omni_gateway.retry import DELIVERY_ATTEMPT, DeliveryAttempts, RetryPolicy
from omni_gateway.sms import sms_callbacks
from omni_gateway.templates import Templates
from omni_gateway.terminals.settings import TerminalSettings
from omni_gateway.terminals.setup import start_terminals
from omni_kit import contact
from omni_kit.grpc_client import channel
from omni_kit.idempotency import keep_answers_purged
from omni_kit.lineage import PERSON_LINEAGE, Lineage
from omni_kit.runtime import Runtime
from omni_kit.security import http_tls

MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger(__name__)


class Settings(TerminalSettings, EmailSettings):
    """The gateway's settings, from OMNI_GATEWAY_* variables."""

    model_config = SettingsConfigDict(env_prefix="OMNI_GATEWAY_", extra="ignore", frozen=True)

    grpc_port: int = Field(15055, ge=0, le=65535, description="Port of the gRPC server; 0 picks a free one.")
    identity_target: str = Field("127.0.0.1:15051", description="host:port of the identity service.")
    profile_target: str = Field("127.0.0.1:15052", description="host:port of the profile service.")
    client_timeout_s: float = Field(5.0, gt=0, description="Deadline of each call to identity and profile.")
    smtp_host: str = Field(
        "127.0.0.1",
        description="The SMTP server of the default email provider (named smtp), used unless `providers` "
        "configures one for email; empty: no default.",
    )
    smtp_port: int = Field(25, ge=1, le=65535, description="Its port.")
    smtp_from: str = Field("omni@localhost", description='The From address, e.g. "Shop <shop@example.com>".')
    smtp_username: str | None = Field(None, description="User for SMTP AUTH; none means no AUTH.")
    smtp_password: SecretStr | None = Field(None, description="Password for SMTP AUTH.")
    smtp_timeout_s: float = Field(10.0, gt=0, description="Timeout of each step of the SMTP conversation.")
    smtp_starttls: bool = Field(False, description="Upgrade the SMTP connection with STARTTLS.")
    smtp_pool_size: int = Field(4, ge=1, le=100, description="SMTP connections kept open at most.")
    smtp_rate_per_s: float | None = Field(
        None, gt=0, description="Emails per second at most; none: no limit."
    )
    providers: list[ProviderSpec] = Field(
        default_factory=list,
        description='The provider instances, as JSON: [{"name": "smtp-backup", "kind": "smtp", "channel": '
        '"email", "host": "...", "port": 2525, "rate_per_s": 50}, ...] (providers/registry.py).',
    )
    provider_order: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Per channel, the order its providers are tried in, as JSON ({"email": ["smtp", '
        '"smtp-backup"]}); a channel not named keeps the order of `providers`.',
    )
    breaker_failures: int = Field(5, ge=1, description="Default provider: transient failures that open it.")
    breaker_reset_s: float = Field(
        30.0, gt=0, description="Default provider: how long its circuit stays open."
    )
    delivery_concurrency: int = Field(
        10, ge=1, le=1000, description="Delivery attempts the job pool runs at once (per replica)."
    )
    send_max_attempts: int = Field(8, ge=1, le=100, description="Delivery attempts before a message fails.")
    retry_first_delay_s: float = Field(30.0, gt=0, description="Wait before the first retry; doubles after.")
    retry_max_delay_s: float = Field(3600.0, gt=0, description="Longest wait between two attempts.")
    retry_jitter: float = Field(
        0.2, ge=0, lt=1, description="Up to this fraction of each retry's wait is taken off at random."
    )
    attempt_lease_s: float = Field(
        120.0, gt=0, description="How long an attempt holds a message before another may take it up."
    )
    verdicts_durable: str = Field(
        "contact-verdicts",
        pattern=r"^[a-z][a-z0-9-]{0,62}$",
        description="The durable consumer of profile's contact verdicts (after gateway-). Replicas of one "
        "gateway share it; another gateway with its own database in the same event namespace needs its own.",
    )


def provider_specs(settings: Settings) -> list[ProviderSpec]:
    """The configured providers, with the default email provider ("smtp", from the smtp_* settings) first
    unless `providers` configures one for email or smtp_host is empty, and the store terminals' provider
    ("terminal") unless `providers` configures one for the store channel."""
    specs = list(settings.providers)
    if not any(spec.channel == Channel.STORE for spec in specs):
        specs.append(ProviderSpec(name="terminal", kind="terminal", channel=Channel.STORE))
    if settings.smtp_host and not any(spec.channel == Channel.EMAIL for spec in specs):
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        default = ProviderSpec(
            name="smtp",
            kind="smtp",
            channel=Channel.EMAIL,
            rate_per_s=settings.smtp_rate_per_s,
            burst=max(1, int(settings.smtp_rate_per_s or 1)),
            breaker_failures=settings.breaker_failures,
            breaker_reset_s=settings.breaker_reset_s,
            host=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=password,
            timeout_s=settings.smtp_timeout_s,
            starttls=settings.smtp_starttls,
            pool_size=settings.smtp_pool_size,
        )
        specs.insert(0, default)
    return specs


def provider_registry(
    settings: Settings,
    made: Mapping[str, ChannelProvider] | None = None,
    defaults: ProviderDefaults | None = None,
) -> Registry:
    """The provider instances of the settings, each with its circuit breaker and rate limit; `made` are
    instances built already (by name), such as the store terminals' provider; `defaults` go to every kind's
    create (identity and profile for SMS keywords; the email links, DKIM signer and tracking for SMTP) with
    the sender."""
    return build_registry(
        provider_specs(settings),
        order=settings.provider_order,
        defaults={**(defaults or {}), "sender": settings.smtp_from},
        providers=made,
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
            idempotent_methods=["GetPerson", "BatchGetPersons", "LookupPerson"],
            timeout_s=settings.client_timeout_s,
            security=runtime.client_security,
        )
    )
    profile_channel = runtime.track_channel(
        channel(
            settings.profile_target,
            service="omni.profile.v1.ProfileService",
            idempotent_methods=["GetProfile", "BatchGetProfiles"],
            timeout_s=settings.client_timeout_s,
            security=runtime.client_security,
        )
    )
    identity = identity_pb2_grpc.IdentityServiceStub(identity_channel)
    profile = profile_pb2_grpc.ProfileServiceStub(profile_channel)
    contacts = Contacts(identity, profile)  # type: ignore[arg-type]
    # The store channel's provider holds messages for the tills (ConnectTerminal), in the registry as the rest.
    terminals = await start_terminals(runtime, settings, identity)  # type: ignore[arg-type]
    # Email: one EmailLinks for the emails and the endpoints that read their links and return paths back.
    email_links = settings.email_links(settings.smtp_from)
    registry = provider_registry(
        settings,
        made={terminals.provider.name: terminals.provider},
        defaults={
            "identity": identity,  # SMS keywords (sms_keywords.py)
            "profile": profile,
            "email_links": email_links,
            "dkim": settings.dkim_signer(),
            "email_tracking": settings.email_tracking,
        },
    )
    policy = RetryPolicy(
        max_attempts=settings.send_max_attempts,
        first_delay_s=settings.retry_first_delay_s,
        max_delay_s=settings.retry_max_delay_s,
        lease_s=settings.attempt_lease_s,
        jitter=settings.retry_jitter,
    )
    repository = Repository()
    renderer = Renderer()
    templates = Templates(transaction=runtime.transaction, repository=repository, renderer=renderer)
    delivery = Delivery(
        transaction=runtime.transaction,
        repository=repository,
        outbox=runtime.outbox,
        contacts=contacts,
        registry=registry,
        policy=policy,
        templates=templates,
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
        DeliveryAttempts(
            claim=delivery.claim,
            attempt=delivery.attempt_to_the_end,
            contacts=delivery.contacts_for,
            concurrency=settings.delivery_concurrency,
        ),
        lease=policy.lease,
        # No more than run at once (DeliveryAttempts' concurrency): a batch waiting for its turn would sit
        # out its lease while the others talk to the provider.
        batch_size=settings.delivery_concurrency,
    )
    # At a graceful stop the messages whose attempts did not finish are due again at once, not in a lease;
    # then the providers close their connections.
    runtime.on_close(delivery.release_leases)
    runtime.on_close(registry.close)
    # The one sink of every provider's receipts (and of inbound endpoints: bounces, tracking, SMS replies).
    receipts = ReceiptRecorder(transaction=runtime.transaction, repository=repository, outbox=runtime.outbox)
    await registry.start(receipts)
    # Other channels' HTTP applications served by the gateway's one HTTP server, by prefix: the HTTP SMS
    # vendor's callbacks go under http.SMS_PREFIX (/sms).
    http_apps: dict[str, web.Application] = {}
    sms_apps = sms_callbacks(registry)
    if sms_apps is not None:
        http_apps[SMS_PREFIX] = sms_apps
    await _serve_email_endpoints(runtime, settings, email_links, profile_channel, receipts, http_apps)
    await keep_answers_purged(runtime)
    servicer = GatewayServicer(
        transaction=runtime.transaction,
        repository=repository,
        renderer=renderer,
        delivery=delivery,
        templates=templates,
        contacts=contacts,
        terminals=terminals,
    )
    await runtime.serve(
        service_names=["omni.gateway.v1.GatewayService"],
        register=lambda server: gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server),
    )


async def _serve_email_endpoints(
    runtime: Runtime,
    settings: Settings,
    links: EmailLinks,
    profile_channel: grpc.aio.Channel,
    receipts: ReceiptRecorder,
    http_apps: Mapping[str, web.Application],
) -> None:
    """Start the gateway's HTTP endpoint (email unsubscribe, open pixel, click redirect; `http_apps` mounted
    under their prefixes) and the bounce SMTP endpoint, both reporting to the receipt sink; stopped on close."""
    http = EmailLinkEndpoint(
        links=links,
        profile=profile_pb2_grpc.ProfileServiceStub(profile_channel),  # type: ignore[arg-type]
        receipts=receipts,
        host=settings.email_http_host,
        port=settings.email_http_port,
        shutdown_grace_s=settings.shutdown_grace_s,
        machine_window_s=settings.email_machine_open_window_s,
        profile_timeout_s=settings.client_timeout_s,
        ssl_context=http_tls(settings),
    )
    for prefix, app in http_apps.items():
        http.mount(prefix, app)
    bounces = BounceEndpoint(
        links=links,
        receipts=receipts,
        host=settings.bounce_smtp_host,
        port=settings.bounce_smtp_port,
        max_bytes=settings.bounce_max_bytes,
        tls_context=http_tls(settings),
    )
    await http.start()
    runtime.on_close(http.stop)
    await bounces.start()
    runtime.on_close(bounces.stop)
