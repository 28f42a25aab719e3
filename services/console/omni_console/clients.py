"""The console's gRPC clients of the five services, and the scopes its credentials hold.

Every page asks ``Clients.allows(scope)`` before it calls: what the console's identity may not read is not
asked for, and the page says so. The scopes are the scope table's (protos/omni/scopes.yaml) ``console``
caller unless the settings name others (a token with other scopes).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from omni.decisioning.v1 import decisioning_pb2_grpc, experiments_pb2_grpc, reports_pb2_grpc
from omni.gateway.v1 import gateway_pb2_grpc
from omni.identity.v1 import identity_pb2_grpc, matching_pb2_grpc
from omni.profile.v1 import profile_pb2_grpc
from omni.segmentation.v1 import segmentation_pb2_grpc
from omni_console.settings import Settings
from omni_kit.grpc_client import channel
from omni_kit.security import BearerToken, ClientSecurity, ScopeTable, TlsFiles, grants

CALLER = "console"
"""The console's name in the scope table's callers (and its certificate's common name)."""

# Reads retried on UNAVAILABLE (a service restarting under `omni run`); writes carry request ids.
_READS = {
    "omni.identity.v1.IdentityService": ("GetPerson", "LookupPerson", "ListPersonMerges", "ListRefusedLinks"),
    "omni.identity.v1.MatchingService": ("ListMatchReviews", "ListMatchDecisions", "GetMatchModel"),
    "omni.profile.v1.ProfileService": (
        "GetProfile",
        "ListTimeline",
        "ListConsentHistory",
        "ListComputedTraits",
        "BatchGetProfiles",
    ),
    "omni.segmentation.v1.SegmentationService": (
        "ListSegments",
        "GetSegment",
        "PreviewSegment",
        "ListSegmentSizes",
        "CountSegmentMembers",
        "ListPersonSegments",
        "ExplainSegmentMembership",
        "ListSegmentMembers",
    ),
    "omni.decisioning.v1.DecisioningService": (
        "ListJourneys",
        "GetJourney",
        "ListPersonJourneyRuns",
        "ListOffers",
    ),
    "omni.decisioning.v1.ExperimentService": ("ListExperiments", "GetExperiment", "GetExperimentResults"),
    "omni.decisioning.v1.ReportService": (
        "ListConversionDefinitions",
        "GetOutcomeReport",
        "ExportOutcomeReport",
    ),
    "omni.gateway.v1.GatewayService": ("GetTemplate", "ListTemplates", "GetMessage"),
}


def security_of(settings: Settings) -> ClientSecurity | None:
    """The console's client credentials: its certificate and CA, its token; None for plaintext."""
    tls = None
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        tls = TlsFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file)
    token = None if settings.client_token_file is None else BearerToken(settings.client_token_file)
    if tls is None and settings.tls_ca_file is None and token is None:
        return None
    return ClientSecurity(tls=tls, ca_file=settings.tls_ca_file, token=token)


def console_scopes(settings: Settings, table: ScopeTable | None = None) -> frozenset[str]:
    """The scopes the console holds: the settings' list, or the scope table's ``console`` caller."""
    if settings.scopes is not None:
        return frozenset(settings.scopes)
    return (table or ScopeTable.load()).callers.get(CALLER, frozenset())


@dataclass
class Clients:
    """Stubs of the five services, the channels behind them, and what the console may call."""

    identity: identity_pb2_grpc.IdentityServiceStub
    matching: matching_pb2_grpc.MatchingServiceStub
    profile: profile_pb2_grpc.ProfileServiceStub
    segmentation: segmentation_pb2_grpc.SegmentationServiceStub
    decisioning: decisioning_pb2_grpc.DecisioningServiceStub
    gateway: gateway_pb2_grpc.GatewayServiceStub
    experiments: experiments_pb2_grpc.ExperimentServiceStub
    reports: reports_pb2_grpc.ReportServiceStub
    scopes: frozenset[str]
    channels: tuple[grpc.aio.Channel, ...] = ()

    @classmethod
    def open(cls, settings: Settings, scopes: frozenset[str] | None = None) -> Clients:
        """Open a channel to each service (connections are made on the first call)."""
        security = security_of(settings)

        def open_channel(target: str, service: str) -> grpc.aio.Channel:
            return channel(
                target,
                service=service,
                idempotent_methods=_READS.get(service, ()),
                timeout_s=settings.call_timeout_s,
                security=security,
            )

        identity = open_channel(settings.identity_target, "omni.identity.v1.IdentityService")
        matching = open_channel(settings.identity_target, "omni.identity.v1.MatchingService")
        profile = open_channel(settings.profile_target, "omni.profile.v1.ProfileService")
        segmentation = open_channel(settings.segmentation_target, "omni.segmentation.v1.SegmentationService")
        decisioning = open_channel(settings.decisioning_target, "omni.decisioning.v1.DecisioningService")
        gateway = open_channel(settings.gateway_target, "omni.gateway.v1.GatewayService")
        # Experiments and reports are served by the decisioning process, each with its own retried reads.
        experiments = open_channel(settings.decisioning_target, "omni.decisioning.v1.ExperimentService")
        reports = open_channel(settings.decisioning_target, "omni.decisioning.v1.ReportService")
        return cls(
            identity=identity_pb2_grpc.IdentityServiceStub(identity),
            matching=matching_pb2_grpc.MatchingServiceStub(matching),
            profile=profile_pb2_grpc.ProfileServiceStub(profile),
            segmentation=segmentation_pb2_grpc.SegmentationServiceStub(segmentation),
            decisioning=decisioning_pb2_grpc.DecisioningServiceStub(decisioning),
            gateway=gateway_pb2_grpc.GatewayServiceStub(gateway),
            experiments=experiments_pb2_grpc.ExperimentServiceStub(experiments),
            reports=reports_pb2_grpc.ReportServiceStub(reports),
            scopes=console_scopes(settings) if scopes is None else scopes,
            channels=(identity, matching, profile, segmentation, decisioning, gateway, experiments, reports),
        )

    def allows(self, scope: str) -> bool:
        """Whether the console's credentials hold ``scope``."""
        return grants(self.scopes, scope)

    async def close(self) -> None:
        """Close every channel."""
        for open_channel in self.channels:
            await open_channel.close()
