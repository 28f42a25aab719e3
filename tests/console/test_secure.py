"""The console with mTLS and authorisation on in all five services: it calls with its own certificate
(`console`) and gets what the scope table's `console` caller grants; a console whose certificate holds less
shows the services' refusals in place of the data, never the data."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from omni.common.v1 import common_pb2
from omni.identity.v1 import identity_pb2
from omni.profile.v1 import profile_pb2
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres, SmtpSink
from omni_kit.security import BearerToken, ClientSecurity, ScopeTable, TlsFiles
from omni_kit.security.certs import make_certificates
from tests.conftest import fresh_database
from tests.console.conftest import console_settings, eventually, open_console
from tests.e2e.conftest import Omni, running_omni
from tests.tokens import AUDIENCE, ISSUER, Issuer

SERVICES = ("identity", "profile", "segmentation", "decisioning", "gateway")
CLERK_SCOPES = ["identity.persons:read"]


@pytest.fixture(scope="module")
async def secure(
    postgres: EmbeddedPostgres,
    nats_server: EmbeddedNats,
    smtp_sink: SmtpSink,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[Omni, Path]]:
    directory = tmp_path_factory.mktemp("secure-console")
    certs = directory / "certs"
    make_certificates(certs, [*SERVICES, "console", "clerk", "operator"])
    issuer = Issuer.create(directory)

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
            # A desk whose certificate may look persons up, and nothing else.
            "auth_cert_scopes": {"clerk": CLERK_SCOPES},
        }

    token_file = directory / "operator.token"
    token_file.write_text(issuer.token(sorted(set(ScopeTable.load().rpcs.values())), subject="operator"))
    operator = ClientSecurity(
        tls=TlsFiles(certs / "operator.pem", certs / "operator-key.pem", certs / "ca.pem"),
        ca_file=certs / "ca.pem",
        token=BearerToken(token_file),
    )
    async with running_omni(
        lambda prefix: fresh_database(postgres, prefix),
        nats_server,
        smtp_sink,
        settings={name: secured(name) for name in SERVICES},
        client_security=operator,
    ) as omni:
        yield omni, certs


def with_certificate(omni: Omni, certs: Path, name: str, **overrides: object) -> object:
    return console_settings(
        omni,
        tls_cert_file=certs / f"{name}.pem",
        tls_key_file=certs / f"{name}-key.pem",
        tls_ca_file=certs / "ca.pem",
        **overrides,
    )


async def test_the_console_reads_with_its_own_certificate_and_no_more(secure: tuple[Omni, Path]) -> None:
    omni, certs = secure
    email = f"sec.{uuid.uuid4().hex[:8]}@example.com"
    tracked = await omni.profile.TrackEvent(
        profile_pb2.TrackEventRequest(
            event=profile_pb2.Event(
                id=str(uuid.uuid4()),
                type="order_completed",
                channel=common_pb2.CHANNEL_STORE,
                identifiers=[common_pb2.Identifier(type="email", value=email)],
            )
        )
    )
    person_id = tracked.person_id

    async def counted() -> bool:
        request = profile_pb2.GetProfileRequest(person_id=person_id)
        return (await omni.profile.GetProfile(request)).profile.event_count == 1

    await eventually(counted, "the event on the profile")

    async with open_console(with_certificate(omni, certs, "console")) as console:  # type: ignore[arg-type]
        found = await console.http.get("/persons", params={"q": email})
        assert found.status_code == 303
        html = (await console.http.get(f"/persons/{person_id}")).text
        assert email in html and "order_completed" in html and "Not shown" not in html
        # Reading is all it may do beyond the operator's two identity writes: the audit log is not its.
        assert not console.clients.allows("audit.events:read")

    # A desk whose certificate holds only identity.persons:read, whose console claims more: the services
    # refuse every other call, and the page shows the refusal in place of the data.
    everything = tuple(sorted(ScopeTable.load().callers["console"]))
    clerk = with_certificate(omni, certs, "clerk", scopes=everything)
    async with open_console(clerk) as console:  # type: ignore[arg-type]
        html = (await console.http.get(f"/persons/{person_id}")).text
        assert email in html, "identity answers the clerk"
        assert "order_completed" not in html, "profile does not"
        assert "PERMISSION_DENIED" in html
        segments = await console.http.get("/segments")
        assert "PERMISSION_DENIED" in segments.text

    lookup = await omni.identity.LookupPerson(
        identity_pb2.LookupPersonRequest(identifier=common_pb2.Identifier(type="email", value=email))
    )
    assert lookup.person.id == person_id
