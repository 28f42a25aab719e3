"""The settings of store terminals, part of the gateway's settings (OMNI_GATEWAY_*)."""

from __future__ import annotations

from typing import Annotated

import phonenumbers
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from omni_kit.settings import ServiceSettings

StoreId = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
"""A store's id, as tills send it in their hello."""


class StoreSetting(BaseModel):
    """One store: the key its tills present, and the region national phone numbers are read in."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: SecretStr = Field(description="The store's terminal key (at least 16 characters).")
    region: str | None = Field(
        None,
        description="ISO 3166 region of national phone numbers typed at its tills; default_region if unset.",
    )

    @field_validator("key")
    @classmethod
    def _long_enough(cls, key: SecretStr) -> SecretStr:
        if not 16 <= len(key.get_secret_value()) <= 256:
            raise ValueError("a terminal key has 16 to 256 characters")
        return key

    @field_validator("region")
    @classmethod
    def _known_region(cls, region: str | None) -> str | None:
        if region is not None and region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{region!r} is not a region phonenumbers knows")
        return region


class TerminalSettings(ServiceSettings):
    """Store terminals and the decisioning service they are answered from."""

    decisioning_target: str = Field("127.0.0.1:15054", description="host:port of the decisioning service.")
    terminal_stores: dict[StoreId, StoreSetting] = Field(
        default_factory=dict,
        description='Store id → its tills\' key and phone region, as JSON: {"store-12": {"key": "…", '
        '"region": "DE"}}. A store not listed cannot connect a till.',
    )
    terminal_default_region: str = Field(
        "US", description="Region of national phone numbers at stores without a region of their own."
    )
    terminal_touchpoint: str = Field(
        "pos", min_length=1, max_length=100, description="The decisioning touchpoint tills are answered for."
    )
    terminal_offer_limit: int = Field(3, ge=1, le=20, description="Offers asked of decisioning per customer.")
    terminal_call_timeout_s: float = Field(
        1.0, gt=0, description="Deadline of identity's lookup and decisioning's Decide for an identification."
    )
    terminal_message_ttl_s: float = Field(
        14 * 86_400.0, gt=0, description="How long a store message waits for its person before it expires."
    )
    terminal_messages_per_visit: int = Field(
        50, ge=1, le=500, description="The most waiting messages sent to a till per identification."
    )
    terminal_expiry_interval_s: float = Field(
        60.0,
        gt=0,
        description="How often messages past their expiry are ended (a FAILED receipt, 'expired').",
    )
    terminal_hello_timeout_s: float = Field(
        10.0, gt=0, description="A stream that has not said hello this long after it opened is ended."
    )
    terminal_max_streams: int = Field(
        10_000,
        ge=1,
        description="Open till streams per gateway replica; more are refused RESOURCE_EXHAUSTED.",
    )

    @field_validator("terminal_default_region")
    @classmethod
    def _known_region(cls, region: str) -> str:
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{region!r} is not a region phonenumbers knows")
        return region

    def store_region(self, store_id: str) -> str:
        """The region national phone numbers are read in at a store."""
        store = self.terminal_stores.get(store_id)
        return (store.region if store is not None else None) or self.terminal_default_region
