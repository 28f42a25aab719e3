"""The Segment-compatible endpoint over HTTPS when profile is given an HTTP certificate
(OMNI_PROFILE_HTTP_TLS_CERT_FILE / _KEY_FILE): a track call over TLS is stored; plain HTTP is not served."""

from __future__ import annotations

import ssl
import uuid
from pathlib import Path

import aiohttp
import pytest

from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres
from omni_kit.security.certs import make_certificates

from .conftest import basic, running_endpoint


async def test_the_endpoint_serves_https_with_its_certificate(
    postgres: EmbeddedPostgres, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    make_certificates(tmp_path, ["intake"])
    settings = {
        "http_tls_cert_file": tmp_path / "intake.pem",
        "http_tls_key_file": tmp_path / "intake-key.pem",
    }
    async with running_endpoint(postgres, nats_server, **settings) as endpoint:
        port = endpoint.url.rsplit(":", 1)[1]
        user = f"user-{uuid.uuid4().hex}"
        message = {"userId": user, "event": "Signed Up", "messageId": str(uuid.uuid4())}
        trusted = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"https://localhost:{port}/v1/track",
                json=message,
                headers={"Authorization": basic("wk_web")},
                ssl=trusted,
            ) as response:
                assert response.status == 200, await response.text()
            with pytest.raises(aiohttp.ClientError):
                async with session.post(f"http://localhost:{port}/v1/track", json=message) as response:
                    await response.text()
        profile = await endpoint.profile_of("user_id", user)
        assert [e.type for e in profile.recent_events] == ["signed_up"]
