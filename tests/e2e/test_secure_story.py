"""The abandoned-cart story with mTLS and authorisation on in all five services.

Every service serves TLS and requires a client certificate of the local CA; every call is checked against the
scope table. The services call each other with their own certificates and just the scopes the table's
`callers` grants them (profile resolves persons at identity, decisioning reads segments and templates, the
gateway reads persons and profiles); the marketer's and agent's calls carry a bearer token. The story runs as
it does in plaintext, and what is not granted is refused.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from omni.audit.v1 import audit_pb2, audit_pb2_grpc
from omni.common.v1 import common_pb2
from omni.identity.v1 import identity_pb2, identity_pb2_grpc
from omni_kit.embedded import EmbeddedNats, SmtpSink
from omni_kit.errors import status_details
from omni_kit.grpc_client import channel
from omni_kit.security import BearerToken, ClientSecurity, ScopeTable, TlsFiles
from omni_kit.security.certs import make_certificates
from tests.e2e import test_abandoned_cart as story
from tests.e2e.conftest import Omni, running_omni
from tests.tokens import AUDIENCE, ISSUER, Issuer

SERVICES = ("identity", "profile", "segmentation", "decisioning", "gateway")


@pytest.fixture
async def secure_omni(
    make_database: Callable[..., str],
    nats_server: EmbeddedNats,
    smtp_sink: SmtpSink,
    span_exporter: InMemorySpanExporter,
    tmp_path: Path,
) -> AsyncIterator[tuple[Omni, Path, Issuer]]:
    certs = tmp_path / "certs"
    make_certificates(certs, [*SERVICES, "operator"])
    issuer = Issuer.create(tmp_path)

    def secured(name: str) -> dict[str, object]:
        return {
            "tls_cert_file": certs / f"{name}.pem",
            "tls_key_file": certs / f"{name}-key.pem",
            "tls_ca_file": certs / "ca.pem",
            "tls_require_client_cert": True,
            "auth_enabled": True,
            "auth_jwks_file": issuer.jwks_file,
            "auth_jwt_issuer": ISSUER,
            "auth_jwt_audience": AUDIENCE,
        }

    # The operator (the marketer's console, the agent's desk) holds every scope, by token.
    token_file = tmp_path / "operator.token"
    token_file.write_text(issuer.token(sorted(set(ScopeTable.load().rpcs.values())), subject="operator"))
    operator = ClientSecurity(
        tls=TlsFiles(certs / "operator.pem", certs / "operator-key.pem", certs / "ca.pem"),
        ca_file=certs / "ca.pem",
        token=BearerToken(token_file),
    )
    async with running_omni(
        make_database,
        nats_server,
        smtp_sink,
        settings={name: secured(name) for name in SERVICES},
        client_security=operator,
    ) as running:
        yield running, certs, issuer


async def test_abandoned_cart_with_mtls_and_scopes(
    secure_omni: tuple[Omni, Path, Issuer], smtp_sink: SmtpSink, span_exporter: InMemorySpanExporter
) -> None:
    omni, certs, _ = secure_omni
    await story.test_abandoned_cart_across_web_app_and_email(omni, smtp_sink, span_exporter)

    identity_target = f"127.0.0.1:{omni.runtimes['identity'].port}"
    email = common_pb2.Identifier(type="email", value=f"x.{uuid.uuid4().hex[:8]}@example.com")

    # Profile's own certificate may resolve persons at identity, but not erase them.
    profile_identity = ClientSecurity(
        tls=TlsFiles(certs / "profile.pem", certs / "profile-key.pem", certs / "ca.pem"),
        ca_file=certs / "ca.pem",
    )
    async with channel(identity_target, service="identity", security=profile_identity) as chan:
        stub = identity_pb2_grpc.IdentityServiceStub(chan)  # type: ignore[arg-type]
        resolved = await stub.ResolvePerson(identity_pb2.ResolvePersonRequest(identifiers=[email]))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.ForgetPerson(identity_pb2.ForgetPersonRequest(person_id=resolved.resolution.person_id))
        details = status_details(raised.value)
        assert details.code == grpc.StatusCode.PERMISSION_DENIED
        assert details.error_info is not None
        assert details.error_info.metadata["scope"] == "identity.persons:erase"

    # The operator's certificate alone (no token) is known to the CA but holds no scope.
    bare = ClientSecurity(
        tls=TlsFiles(certs / "operator.pem", certs / "operator-key.pem", certs / "ca.pem"),
        ca_file=certs / "ca.pem",
    )
    async with channel(identity_target, service="identity", security=bare) as chan:
        stub = identity_pb2_grpc.IdentityServiceStub(chan)  # type: ignore[arg-type]
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.LookupPerson(identity_pb2.LookupPersonRequest(identifier=email))
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # A plaintext caller does not get through at all.
    async with grpc.aio.insecure_channel(identity_target) as plain:
        stub = identity_pb2_grpc.IdentityServiceStub(plain)  # type: ignore[arg-type]
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.LookupPerson(identity_pb2.LookupPersonRequest(identifier=email), timeout=2)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE

    # The operator actions are in each acting service's audit log, with who did them; the refused erasure
    # too, as profile's, refused. Entries hold ids only.
    async def audit(service: str, resource_id: str = "") -> list[audit_pb2.AuditEvent]:
        stub = audit_pb2_grpc.AuditServiceStub(omni.channels[service])  # type: ignore[arg-type]
        request = audit_pb2.ListAuditEventsRequest(page_size=100, resource_id=resource_id)
        return list((await stub.ListAuditEvents(request)).events)

    created = [e for e in await audit("segmentation") if e.method.endswith("/CreateSegment")]
    assert [(e.actor, e.actor_kind, e.outcome) for e in created] == [("operator", "token", "OK")]
    assert created[0].resource_ids, "the new segment's id"
    assert {e.method.rsplit("/", 1)[1] for e in await audit("gateway")} == {"CreateTemplate"}
    assert {e.method.rsplit("/", 1)[1] for e in await audit("decisioning")} == {"CreateJourney"}
    consents = [e for e in await audit("profile") if e.method.endswith("/SetConsent")]
    assert len(consents) == 1 and consents[0].outcome == "OK"
    refused = await audit("identity", resolved.resolution.person_id)
    assert [(e.method, e.actor, e.actor_kind, e.outcome) for e in refused] == [
        ("omni.identity.v1.IdentityService/ForgetPerson", "profile", "certificate", "PERMISSION_DENIED")
    ]
    # Without the audit scope, the log is not readable.
    async with channel(identity_target, service="identity", security=profile_identity) as chan:
        stub = audit_pb2_grpc.AuditServiceStub(chan)  # type: ignore[arg-type]
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.ListAuditEvents(audit_pb2.ListAuditEventsRequest())
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
