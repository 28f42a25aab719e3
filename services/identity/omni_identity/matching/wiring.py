"""Wiring of the MatchingService into the identity server: its settings and its servicer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import grpc
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from omni.identity.v1 import matching_pb2_grpc
from omni_identity.erasure import Tombstones
from omni_identity.matching.api import MatchingServicer
from omni_identity.matching.graph import GraphFiling
from omni_identity.matching.linking import Linking
from omni_identity.matching.matcher import Policy, Repair
from omni_identity.matching.messages import IdentifierNormaliser
from omni_identity.operators import Operators
from omni_identity.rules import Rules
from omni_kit.ids import new_id
from omni_kit.runtime import Runtime

MATCHING_SERVICE_NAME = "omni.identity.v1.MatchingService"


class MatchingSettings(BaseSettings):
    """The matcher's settings, from OMNI_IDENTITY_MATCHING_* variables."""

    model_config = SettingsConfigDict(env_prefix="OMNI_IDENTITY_MATCHING_", extra="ignore", frozen=True)

    link_threshold: float = Field(
        0.95, gt=0, lt=1, description="Match probability at and above which a record is linked automatically."
    )
    review_threshold: float = Field(
        0.6,
        gt=0,
        lt=1,
        description="Match probability at and above which (below link) a record goes to review.",
    )
    max_candidates: int = Field(5, ge=1, le=50, description="Candidates returned with each decision.")
    max_block: int = Field(
        500,
        ge=10,
        le=100_000,
        description="Blocking keys shared by more stored records than this are skipped.",
    )
    review_relatives: bool = Field(
        True,
        description="Send to review, whatever its probability, a pair that differs in both given name and date "
        "of birth (a relative at the same address) instead of linking it.",
    )

    repair: Literal["propose", "merge"] = Field(
        "propose",
        description="Cluster repair, when a record matches two or more persons above the link threshold that "
        "match each other above it: 'propose' sends it to review naming the persons to merge; 'merge' merges "
        "them (the graph's own merge, with lineage; UnmergePerson undoes it) and links the record.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> MatchingSettings:
        if self.review_threshold > self.link_threshold:
            raise ValueError("review_threshold must not exceed link_threshold")
        return self

    def policy(self) -> Policy:
        """The decision policy these settings describe."""
        return Policy(
            link_threshold=self.link_threshold,
            review_threshold=self.review_threshold,
            max_candidates=self.max_candidates,
            max_block=self.max_block,
            review_relatives=self.review_relatives,
            repair=Repair(self.repair),
        )


class Matching:
    """The MatchingService of one running identity server."""

    service_name = MATCHING_SERVICE_NAME

    def __init__(
        self,
        runtime: Runtime,
        settings: MatchingSettings,
        normalise_identifier: IdentifierNormaliser,
        rules: Rules,
        tombstones: Tombstones,
    ) -> None:
        # The graph's own rules and tombstones: a record's identifiers are attached as a resolve's would be.
        graph = GraphFiling(rules, tombstones, new_id=new_id)
        linking = Linking(settings.policy(), graph, clock=lambda: datetime.now(UTC), new_id=new_id)
        # Cluster repair merges persons as MergePersons does: the same checks, lineage and event.
        operators = Operators(rules, tombstones, id_factory=new_id)
        self.servicer = MatchingServicer(runtime, linking, normalise_identifier, operators)

    def register(self, server: grpc.aio.Server) -> None:
        """Add the servicer to the gRPC server."""
        matching_pb2_grpc.add_MatchingServiceServicer_to_server(self.servicer, server)
