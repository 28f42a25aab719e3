"""The ports servers listen on by default lie outside the range the kernel hands out as the local ports of
outgoing connections, where any connection may hold one just when a server wants to bind it."""

from __future__ import annotations

from pathlib import Path

import pytest

from omni_decisioning.main import Settings as DecisioningSettings
from omni_gateway.main import Settings as GatewaySettings
from omni_identity.main import Settings as IdentitySettings
from omni_kit.embedded.run import SERVICES, RunConfig
from omni_kit.settings import ServiceSettings
from omni_profile.main import Settings as ProfileSettings
from omni_segmentation.main import Settings as SegmentationSettings

EPHEMERAL = range(32768, 61000)
"""Linux's default ip_local_port_range (32768-60999); macOS and Windows use 49152-65535, inside it too."""


def _default_ports() -> dict[str, int]:
    config = RunConfig(root=Path(".omni"))
    ports = {
        "PostgreSQL": config.postgres_port,
        "NATS": config.nats_port,
        "SMTP sink": config.smtp_port,
        "tracking": config.tracking_port,
        "gateway HTTP (omni run)": config.gateway_http_port,
        "bounces (omni run)": config.bounce_port,
    }
    ports |= {f"{service.name} (omni run)": service.grpc_port for service in SERVICES}
    settings: list[type[ServiceSettings]] = [
        IdentitySettings,
        ProfileSettings,
        SegmentationSettings,
        DecisioningSettings,
        GatewaySettings,
    ]
    for model in settings:
        ports[model.__name__ + " " + model.__module__] = model.model_fields["grpc_port"].default
    ports["profile HTTP"] = ProfileSettings.model_fields["http_port"].default
    ports["gateway HTTP"] = GatewaySettings.model_fields["email_http_port"].default
    ports["gateway bounces"] = GatewaySettings.model_fields["bounce_smtp_port"].default
    return ports


@pytest.mark.parametrize(("server", "port"), sorted(_default_ports().items()))
def test_a_default_port_lies_outside_the_ephemeral_range(server: str, port: int) -> None:
    assert port not in EPHEMERAL and port < 49152, f"{server} listens on {port} by default"


def test_the_services_default_targets_are_the_run_ports() -> None:
    identity, profile = SERVICES[0], SERVICES[1]
    assert ProfileSettings.model_fields["identity_target"].default == identity.target
    assert GatewaySettings.model_fields["identity_target"].default == identity.target
    assert GatewaySettings.model_fields["profile_target"].default == profile.target
