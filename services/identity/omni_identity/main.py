"""Wiring of the identity service: settings, migrations and start()."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import grpc
import phonenumbers
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from omni.identity.v1 import identity_pb2_grpc
from omni_identity.api import IdentityServicer
from omni_identity.erasure import DEVELOPMENT_KEY, TombstonePolicy, Tombstones
from omni_identity.identifier_types import (
    IdentifierTypeConfig,
    IdentifierTypeRegistry,
    default_identifier_types,
)
from omni_identity.matching.wiring import Matching, MatchingSettings
from omni_identity.normalise import Normaliser
from omni_identity.operators import Operators
from omni_identity.persons import Persons
from omni_identity.rules import Rules
from omni_kit.idempotency import keep_answers_purged
from omni_kit.runtime import Runtime
from omni_kit.settings import ServiceSettings

MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = "omni.identity.v1.IdentityService"


class Settings(ServiceSettings):
    """Identity's settings, from OMNI_IDENTITY_* variables."""

    model_config = SettingsConfigDict(env_prefix="OMNI_IDENTITY_", extra="ignore", frozen=True)

    grpc_port: int = Field(15051, ge=0, le=65535, description="Port of the gRPC server; 0 picks a free one.")
    default_phone_region: str = Field(
        "US", description="ISO 3166 region for phone numbers given without a leading + and country code."
    )
    web_push_http_loopback: bool = Field(
        False,
        description="Accept Web Push subscriptions whose endpoint is http to a loopback host (a local push "
        "service in tests and the laptop run); otherwise https only.",
    )
    identifier_types: tuple[IdentifierTypeConfig, ...] = Field(
        default_factory=default_identifier_types,
        description="The identifier types accepted, with normalisation, blocked values, trust, limits and "
        "priority (JSON list; see the README's identity rules).",
    )
    tombstone_key: SecretStr | None = Field(
        None,
        description="Secret key of the tombstones' HMAC-SHA256 (at least 32 characters); required unless the "
        "service listens on loopback only (tests, the laptop run). Never change it: old tombstones would "
        "stop matching.",
    )
    tombstone_policy: TombstonePolicy = Field(
        TombstonePolicy.DROP,
        description="Identifiers of forgotten persons in later resolves: drop (ignored; only such identifiers: "
        "FAILED_PRECONDITION PERSON_FORGOTTEN) or new_person (treated as never seen).",
    )

    @field_validator("default_phone_region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        region = value.strip().upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{value!r} is not a region phonenumbers knows")
        return region

    @model_validator(mode="after")
    def _tombstone_key_outside_loopback(self) -> Settings:
        if self.tombstone_key is None and not _loopback(self.grpc_host):
            raise ValueError("OMNI_IDENTITY_TOMBSTONE_KEY is required when serving beyond 127.0.0.1")
        if self.tombstone_key is not None and len(self.tombstone_key.get_secret_value()) < 32:
            raise ValueError("OMNI_IDENTITY_TOMBSTONE_KEY must be at least 32 characters")
        return self

    def tombstones(self) -> Tombstones:
        """The tombstone hasher and policy these settings describe."""
        key = self.tombstone_key.get_secret_value().encode() if self.tombstone_key else DEVELOPMENT_KEY
        return Tombstones(key, self.tombstone_policy)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def start(settings: Settings) -> Runtime:
    """Open the database and the event log, then serve IdentityService; return the running runtime."""
    runtime = Runtime("identity", settings, migrations=MIGRATIONS)
    await runtime.open()
    registry = IdentifierTypeRegistry(settings.identifier_types)
    normaliser = Normaliser(
        registry,
        default_phone_region=settings.default_phone_region,
        web_push_http_loopback=settings.web_push_http_loopback,
    )
    rules, tombstones = Rules(registry), settings.tombstones()
    servicer = IdentityServicer(runtime, Persons(rules, tombstones), Operators(rules, tombstones), normaliser)
    # Probabilistic matching of records that carry no known identifier, served by the same server.
    matching = Matching(runtime, MatchingSettings(), normaliser.normalise_for_record, rules, tombstones)

    def register(server: grpc.aio.Server) -> None:
        identity_pb2_grpc.add_IdentityServiceServicer_to_server(servicer, server)
        matching.register(server)

    await keep_answers_purged(runtime)
    await runtime.serve(service_names=[SERVICE_NAME, matching.service_name], register=register)
    return runtime
