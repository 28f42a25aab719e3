"""Wiring of the identity service: settings, migrations and start()."""

from __future__ import annotations

from pathlib import Path

import phonenumbers
from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from omni.identity.v1 import identity_pb2_grpc
from omni_identity.api import IdentityServicer
from omni_identity.identifier_types import (
    IdentifierTypeConfig,
    IdentifierTypeRegistry,
    default_identifier_types,
)
from omni_identity.normalise import Normaliser
from omni_identity.persons import Persons
from omni_kit.runtime import Runtime
from omni_kit.settings import ServiceSettings

MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = "omni.identity.v1.IdentityService"


class Settings(ServiceSettings):
    """Identity's settings, from OMNI_IDENTITY_* variables."""

    model_config = SettingsConfigDict(env_prefix="OMNI_IDENTITY_", extra="ignore", frozen=True)

    grpc_port: int = Field(50051, ge=0, le=65535, description="Port of the gRPC server; 0 picks a free one.")
    default_phone_region: str = Field(
        "US", description="ISO 3166 region for phone numbers given without a leading + and country code."
    )
    identifier_types: tuple[IdentifierTypeConfig, ...] = Field(
        default_factory=default_identifier_types,
        description="The identifier types accepted, with their normalisation and blocked values (JSON list).",
    )

    @field_validator("default_phone_region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        region = value.strip().upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{value!r} is not a region phonenumbers knows")
        return region


async def start(settings: Settings) -> Runtime:
    """Open the database and the event log, then serve IdentityService; return the running runtime."""
    runtime = Runtime("identity", settings, migrations=MIGRATIONS)
    await runtime.open()
    registry = IdentifierTypeRegistry(settings.identifier_types)
    normaliser = Normaliser(registry, default_phone_region=settings.default_phone_region)
    servicer = IdentityServicer(runtime, Persons(), normaliser)
    await runtime.serve(
        service_names=[SERVICE_NAME],
        register=lambda server: identity_pb2_grpc.add_IdentityServiceServicer_to_server(servicer, server),
    )
    return runtime
