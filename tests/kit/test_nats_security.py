"""A service's runtime reaches a NATS server that requires TLS with client certificates and a user of its
own (nats_tls_*, nats_user/nats_password settings); a client without them is refused."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import nats
import pytest
from nats.errors import NoServersError

from omni_kit.embedded import EmbeddedNats
from omni_kit.runtime import Runtime
from omni_kit.security.certs import make_certificates
from omni_kit.settings import ServiceSettings

pytestmark = pytest.mark.integration


async def test_the_runtime_connects_with_tls_and_its_own_user(
    tmp_path: Path, make_database: Callable[..., str]
) -> None:
    certs = tmp_path / "certs"
    make_certificates(certs, ["nats", "profile"])
    config = f"""
tls {{
  cert_file: "{certs / "nats.pem"}"
  key_file: "{certs / "nats-key.pem"}"
  ca_file: "{certs / "ca.pem"}"
  verify: true
}}
authorization {{
  users: [{{user: profile, password: "profile-secret"}}]
}}
"""
    with EmbeddedNats(tmp_path / "nats", config=config) as server:
        url = f"tls://127.0.0.1:{server.port}"
        # Neither without a certificate the server trusts, nor with one but without the user.
        with pytest.raises((NoServersError, OSError)):
            await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
        tls = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        tls.load_cert_chain(certs / "profile.pem", certs / "profile-key.pem")
        with pytest.raises((NoServersError, OSError, nats.errors.Error)):
            await nats.connect(
                url, tls=tls, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2
            )
        settings = ServiceSettings(
            database_url=make_database("nats_tls"),
            nats_url=url,
            grpc_host="127.0.0.1",
            nats_tls_ca_file=certs / "ca.pem",
            nats_tls_cert_file=certs / "profile.pem",
            nats_tls_key_file=certs / "profile-key.pem",
            nats_user="profile",
            nats_password="profile-secret",  # type: ignore[arg-type]
        )
        runtime = Runtime("profile", settings)
        await runtime.open()
        try:
            assert runtime.nats.is_connected
            assert runtime.nats.connected_url is not None and runtime.nats.connected_url.scheme == "tls"
            assert await runtime.js.streams_info(), "the runtime made its streams over the TLS connection"
        finally:
            await runtime.close()
