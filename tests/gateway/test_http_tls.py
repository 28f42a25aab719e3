"""The gateway's HTTP endpoint (email links, SMS callbacks) serves HTTPS and its bounce SMTP endpoint offers
STARTTLS with the service's certificate, a renewed certificate taken up without a restart; plain HTTP is not
served then."""

from __future__ import annotations

import asyncio
import shutil
import smtplib
import ssl
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509

from omni_kit.embedded import free_port
from omni_kit.security.certs import make_certificates

from .support import StartGateway


async def _served(port: int, ca: Path) -> x509.Certificate:
    context = ssl.create_default_context(cafile=str(ca))
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost")
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    await writer.wait_closed()
    return x509.load_der_x509_certificate(der)


def _bounce_starttls(port: int, ca: Path) -> x509.Certificate:
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        smtp.starttls(context=ssl.create_default_context(cafile=str(ca)))
        assert smtp.ehlo()[0] == 250
        der = smtp.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    return x509.load_der_x509_certificate(der)


async def test_links_over_https_and_bounces_with_starttls_renewed_without_restart(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    certs = tmp_path / "certs"
    make_certificates(certs, ["gateway"])
    http_port, bounce_port = free_port("127.0.0.1"), free_port("127.0.0.1")
    await start_gateway(
        email_http_port=http_port,
        email_public_url=f"https://localhost:{http_port}",
        bounce_smtp_port=bounce_port,
        http_tls_cert_file=certs / "gateway.pem",
        http_tls_key_file=certs / "gateway-key.pem",
        tls_reload_interval_s=0,
    )
    ca = certs / "ca.pem"
    async with aiohttp.ClientSession() as session:
        # An unknown open pixel is still answered (with the pixel): over TLS.
        async with session.get(
            f"https://localhost:{http_port}/o/nothing.gif", ssl=ssl.create_default_context(cafile=str(ca))
        ) as response:
            assert response.status < 500
        with pytest.raises(aiohttp.ClientError):
            async with session.get(f"http://localhost:{http_port}/o/nothing.gif") as response:
                await response.read()
    first_http = await _served(http_port, ca)
    first_smtp = await asyncio.to_thread(_bounce_starttls, bounce_port, ca)
    assert first_smtp.serial_number == first_http.serial_number

    renewed = tmp_path / "renewed"
    shutil.copytree(certs, renewed)
    make_certificates(renewed, ["gateway"])  # the same CA, a new certificate, moved in as a Secret would be
    for name in ("gateway.pem", "gateway-key.pem"):
        (renewed / name).replace(certs / name)
    serial = x509.load_pem_x509_certificate((certs / "gateway.pem").read_bytes()).serial_number
    assert (await _served(http_port, ca)).serial_number == serial != first_http.serial_number
    assert (await asyncio.to_thread(_bounce_starttls, bounce_port, ca)).serial_number == serial
