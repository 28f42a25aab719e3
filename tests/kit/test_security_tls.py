"""TLS and mTLS on a real gRPC server and client, with real certificates made by `omni certs`' code: the
handshake succeeds for a known client, is refused for an unknown one and for plaintext, and rotated
certificate files are used without a restart."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest
from aiohttp import web
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from omni_kit.grpc_client import channel
from omni_kit.grpc_server import GrpcServer
from omni_kit.security import ClientSecurity, TlsFiles, http_ssl_context, server_credentials
from omni_kit.security.certs import CertificateAuthority, make_certificates

SERVICE = "omni.test.v1.EchoService"


def _register(server: grpc.aio.Server) -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(echo)}),)
    )


@dataclass
class Served:
    port: int
    certs: Path

    def client(self, name: str, *, ca: str = "ca.pem") -> grpc.aio.Channel:
        files = TlsFiles(self.certs / f"{name}.pem", self.certs / f"{name}-key.pem", self.certs / ca)
        security = ClientSecurity(tls=files, ca_file=files.ca_file, reload_interval_s=0)
        return channel(f"localhost:{self.port}", service=SERVICE, timeout_s=5, security=security)


async def _echo(chan: grpc.aio.Channel, payload: bytes = b"hello") -> bytes:
    response: bytes = await chan.unary_unary(f"/{SERVICE}/Echo")(payload, timeout=5)
    return response


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    certs = tmp_path / "certs"
    make_certificates(certs, ["server", "profile"])
    server = GrpcServer(
        domain="omni.test",
        service_names=[SERVICE],
        register=_register,
        host="127.0.0.1",
        port=0,
        credentials=server_credentials(
            TlsFiles(certs / "server.pem", certs / "server-key.pem", certs / "ca.pem"),
            require_client_cert=True,
            check_interval_s=0,
        ),
    )
    await server.start()
    yield Served(server.port, certs)
    await server.stop(0)


async def test_a_client_with_a_certificate_of_the_ca_is_served(served: Served) -> None:
    async with served.client("profile") as chan:
        assert await _echo(chan) == b"hello"


async def test_a_client_certificate_of_another_ca_is_refused(served: Served, tmp_path: Path) -> None:
    rogue = CertificateAuthority.create("rogue")
    rogue.issue("profile").write(served.certs, "rogue")
    # It trusts the server (the right CA) but presents a certificate the server does not trust.
    async with served.client("rogue") as chan:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _echo(chan)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_client_without_a_certificate_is_refused(served: Served) -> None:
    security = ClientSecurity(ca_file=served.certs / "ca.pem")
    async with channel(f"localhost:{served.port}", service=SERVICE, security=security) as chan:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _echo(chan)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_plaintext_client_is_refused(served: Served) -> None:
    async with channel(f"127.0.0.1:{served.port}", service=SERVICE, timeout_s=2) as chan:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _echo(chan)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_client_that_does_not_trust_the_server_refuses_it(served: Served) -> None:
    CertificateAuthority.create("elsewhere").pair.write(served.certs, "other-ca")
    async with served.client("profile", ca="other-ca.pem") as chan:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _echo(chan)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_rotated_certificates_are_used_without_a_restart(served: Served, tmp_path: Path) -> None:
    """The whole trust moves to a new CA, as when a Kubernetes secret is renewed: the server's certificate
    and CA files, and the client's, are replaced under the running server and the open client channel."""
    old = tmp_path / "old"
    shutil.copytree(served.certs, old)
    client = served.client("profile")
    assert await _echo(client, b"before") == b"before"

    new = tmp_path / "new"
    make_certificates(new, ["server", "profile"])
    for name in ("server.pem", "server-key.pem", "profile.pem", "profile-key.pem", "ca.pem"):
        (new / name).replace(served.certs / name)

    # The open channel sees its files changed and connects again with the new certificate; the server
    # answers that handshake with its new certificate, which the client verifies against the new CA.
    assert await _echo(client, b"after") == b"after"
    # A client still holding the old trust (certificate and CA) is refused now.
    stale = TlsFiles(old / "profile.pem", old / "profile-key.pem", old / "ca.pem")
    security = ClientSecurity(tls=stale, ca_file=stale.ca_file)
    async with channel(f"localhost:{served.port}", service=SERVICE, security=security) as chan:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _echo(chan)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    await client.close()


async def test_omni_certs_makes_what_omni_health_checks_over_mtls(tmp_path: Path) -> None:
    """`omni certs` writes a CA and service certificates; a server using them answers `omni health` over
    mTLS, and refuses it without the client certificate."""
    omni = str(Path(sys.executable).parent / "omni")
    certs = tmp_path / "certs"
    made = await asyncio.create_subprocess_exec(omni, "certs", "--out", str(certs), "identity", "operator")
    assert await made.wait() == 0
    assert (certs / "ca.pem").exists() and (certs / "identity-key.pem").stat().st_mode & 0o077 == 0
    server = GrpcServer(
        domain="omni.test",
        service_names=[SERVICE],
        register=_register,
        host="127.0.0.1",
        port=0,
        credentials=server_credentials(
            TlsFiles(certs / "identity.pem", certs / "identity-key.pem", certs / "ca.pem"),
            require_client_cert=True,
        ),
    )
    await server.start()
    try:
        target = f"localhost:{server.port}"
        ca = ["--tls-ca", str(certs / "ca.pem")]
        client = ["--tls-cert", str(certs / "operator.pem"), "--tls-key", str(certs / "operator-key.pem")]
        checked = await asyncio.create_subprocess_exec(omni, "health", target, *ca, *client)
        assert await checked.wait() == 0
        refused = await asyncio.create_subprocess_exec(omni, "health", target, *ca, "--timeout", "1")
        assert await refused.wait() == 1
    finally:
        await server.stop(0)


async def _served_certificate(port: int, ca: Path, host: str = "localhost") -> x509.Certificate:
    """The certificate an HTTPS endpoint presents to a new connection (verified against ca)."""
    context = ssl.create_default_context(cafile=str(ca))
    _, writer = await asyncio.open_connection(host, port, ssl=context)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        await writer.wait_closed()
    return x509.load_der_x509_certificate(der)


async def test_http_endpoints_serve_tls_and_pick_up_a_rotated_certificate(tmp_path: Path) -> None:
    """What profile's Segment intake serves with http_tls_cert_file: HTTPS, and a renewed certificate on the
    next connection without a restart."""
    certs = tmp_path / "certs"
    make_certificates(certs, ["intake"])
    context = http_ssl_context(TlsFiles(certs / "intake.pem", certs / "intake-key.pem"), check_interval_s=0)

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    port = int(runner.addresses[0][1])
    try:
        client_context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://localhost:{port}/", ssl=client_context) as response:
                assert await response.text() == "hello"
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"http://localhost:{port}/") as response:
                    await response.text()
        before = await _served_certificate(port, certs / "ca.pem")
        make_certificates(certs, ["intake"])  # the same CA, a new certificate
        after = await _served_certificate(port, certs / "ca.pem")
        assert after.serial_number != before.serial_number
        assert (
            after.serial_number
            == x509.load_pem_x509_certificate((certs / "intake.pem").read_bytes()).serial_number
        )
    finally:
        await runner.cleanup()


async def test_a_plaintext_health_port_answers_health_only(tmp_path: Path) -> None:
    """With TLS on, grpc_health_port gives Kubernetes' plaintext gRPC probes the health states, and nothing
    else."""
    certs = tmp_path / "certs"
    make_certificates(certs, ["server"])
    server = GrpcServer(
        domain="omni.test",
        service_names=[SERVICE],
        register=_register,
        host="127.0.0.1",
        port=0,
        credentials=server_credentials(
            TlsFiles(certs / "server.pem", certs / "server-key.pem", certs / "ca.pem"),
            require_client_cert=True,
        ),
        health_port=0,
    )
    await server.start()
    try:
        assert server.health_port is not None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.health_port}") as chan:
            for name in ("", SERVICE, "liveness"):
                answer = await health_pb2_grpc.HealthStub(chan).Check(
                    health_pb2.HealthCheckRequest(service=name), timeout=5
                )
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await _echo(chan)
            assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
        await server.set_serving(False)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.health_port}") as chan:
            answer = await health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await server.stop(0)


async def test_http_endpoints_use_the_grpc_certificate_when_tls_is_on(tmp_path: Path) -> None:
    """Without an HTTP certificate of their own, the HTTP endpoints serve the gRPC port's (unless told to
    stay plain for a TLS proxy in front); without TLS they are plain."""
    from omni_kit.security import http_tls
    from omni_kit.settings import ServiceSettings

    certs = tmp_path / "certs"
    make_certificates(certs, ["gateway"])
    base = {"database_url": "postgresql+asyncpg://x/y", "nats_url": "nats://127.0.0.1:1"}
    tls = {"tls_cert_file": certs / "gateway.pem", "tls_key_file": certs / "gateway-key.pem"}
    assert http_tls(ServiceSettings(**base)) is None  # type: ignore[arg-type]
    assert http_tls(ServiceSettings(**base, **tls, http_plaintext=True)) is None  # type: ignore[arg-type]
    context = http_tls(ServiceSettings(**base, **tls, tls_reload_interval_s=0))  # type: ignore[arg-type]
    assert context is not None

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    try:
        served = await _served_certificate(int(runner.addresses[0][1]), certs / "ca.pem")
        assert (
            served.serial_number
            == x509.load_pem_x509_certificate(tls["tls_cert_file"].read_bytes()).serial_number
        )
    finally:
        await runner.cleanup()
