"""Authorisation driven by the scope table (protos/omni/scopes.yaml): every RPC of every service has a scope,
and a real server built from the settings refuses each RPC without credentials and with the wrong scope,
answers it with the right one, and gives our services' certificates just the scopes the table grants them.

The servers here register every RPC of every service with a handler that answers who called: what is under
test is the interceptor and the table, not the services' domain (their own tests cover that)."""

from __future__ import annotations

import importlib
import pkgutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import omni
from omni_kit.errors import status_details
from omni_kit.grpc_client import channel
from omni_kit.grpc_server import GrpcServer
from omni_kit.security import (
    ClientSecurity,
    ScopeTable,
    TlsFiles,
    auth_interceptor,
    current_principal,
    server_tls,
)
from omni_kit.security.certs import make_certificates
from omni_kit.settings import ServiceSettings
from tests.tokens import AUDIENCE, ISSUER, Issuer

TABLE = ScopeTable.load()


def _service_methods() -> list[MethodDescriptor]:
    """Every RPC of every service in the generated protos."""
    methods: list[MethodDescriptor] = []
    for module in pkgutil.walk_packages(omni.__path__, "omni."):
        if not module.name.endswith("_pb2"):
            continue
        descriptor = importlib.import_module(module.name).DESCRIPTOR
        for service in descriptor.services_by_name.values():
            methods.extend(service.methods)
    return methods


METHODS = _service_methods()
NAMES = [f"/{m.containing_service.full_name}/{m.name}" for m in METHODS]


def test_every_rpc_has_a_scope_and_every_scope_an_rpc() -> None:
    assert len(METHODS) > 40
    unscoped = [name for name in NAMES if TABLE.scope_for(name) is None]
    assert not unscoped, f"RPCs without a scope in protos/omni/scopes.yaml: {unscoped}"
    stale = sorted(set(TABLE.rpcs) - set(NAMES))
    assert not stale, f"scopes.yaml names RPCs that do not exist: {stale}"
    unknown_audited = sorted(TABLE.audited - set(NAMES))
    assert not unknown_audited, f"scopes.yaml audits RPCs that do not exist: {unknown_audited}"
    for name, scope in TABLE.rpcs.items():
        service = name.split(".")[1]
        assert scope.startswith(f"{service}."), f"{name}: {scope} is not a scope of {service}"


def test_callers_hold_only_scopes_that_exist() -> None:
    scopes = set(TABLE.rpcs.values())
    for caller, granted in TABLE.callers.items():
        assert granted <= scopes, f"{caller}: {granted - scopes}"
    # Profile resolves persons but may not merge or erase them.
    assert "identity.persons:erase" not in TABLE.callers["profile"]
    assert "identity.persons:merge" not in TABLE.callers["profile"]


def _register_every_rpc(server: grpc.aio.Server) -> None:
    async def answer() -> bytes:
        principal = current_principal()
        return b"" if principal is None else principal.name.encode()

    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await answer()

    async def client_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        async for _ in requests:
            pass
        return await answer()

    async def server_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        yield await answer()

    async def both(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        async for _ in requests:
            pass
        yield await answer()

    by_service: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
    for method in METHODS:
        if method.client_streaming and method.server_streaming:
            handler = grpc.stream_stream_rpc_method_handler(both)
        elif method.client_streaming:
            handler = grpc.stream_unary_rpc_method_handler(client_stream)
        elif method.server_streaming:
            handler = grpc.unary_stream_rpc_method_handler(server_stream)
        else:
            handler = grpc.unary_unary_rpc_method_handler(unary)
        by_service.setdefault(method.containing_service.full_name, {})[method.name] = handler
    server.add_generic_rpc_handlers(
        tuple(grpc.method_handlers_generic_handler(s, h) for s, h in by_service.items())
    )


async def _call(chan: grpc.aio.Channel, method: MethodDescriptor, metadata: Any = None) -> bytes:
    """Call method with an empty request; what the server answered."""
    name = f"/{method.containing_service.full_name}/{method.name}"
    if method.client_streaming and method.server_streaming:
        answers = [a async for a in chan.stream_stream(name)(iter([b""]), metadata=metadata, timeout=5)]
        return bytes(answers[0])
    if method.client_streaming:
        return bytes(await chan.stream_unary(name)(iter([b""]), metadata=metadata, timeout=5))
    if method.server_streaming:
        answers = [a async for a in chan.unary_stream(name)(b"", metadata=metadata, timeout=5)]
        return bytes(answers[0])
    return bytes(await chan.unary_unary(name)(b"", metadata=metadata, timeout=5))


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return Issuer.create(tmp_path_factory.mktemp("jwks"))


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    make_certificates(directory, ["server", "operator", *TABLE.callers])
    return directory


def _settings(certs: Path, issuer: Issuer, **overrides: Any) -> ServiceSettings:
    values: dict[str, Any] = {
        "database_url": "postgresql+asyncpg://omni@127.0.0.1/unused",
        "nats_url": "nats://127.0.0.1:1",
        "tls_cert_file": certs / "server.pem",
        "tls_key_file": certs / "server-key.pem",
        "tls_ca_file": certs / "ca.pem",
        "auth_enabled": True,
        "auth_jwks_file": issuer.jwks_file,
        "auth_jwt_issuer": ISSUER,
        "auth_jwt_audience": AUDIENCE,
        **overrides,
    }
    return ServiceSettings(**values)


@pytest.fixture
async def serve(certs: Path, issuer: Issuer) -> AsyncIterator[Any]:
    """Start a server with every RPC, configured by settings as the runtime does; yields start(**settings)."""
    servers: list[GrpcServer] = []

    async def start(**overrides: Any) -> int:
        settings = _settings(certs, issuer, **overrides)
        server = GrpcServer(
            domain="omni.test",
            service_names=sorted({m.containing_service.full_name for m in METHODS}),
            register=_register_every_rpc,
            host="127.0.0.1",
            port=0,
            credentials=server_tls(settings),
            interceptors=[i for i in [auth_interceptor(settings)] if i is not None],
        )
        await server.start()
        servers.append(server)
        return server.port

    yield start
    for server in servers:
        await server.stop(0)


def _client(port: int, certs: Path, name: str | None = None) -> grpc.aio.Channel:
    tls = (
        None if name is None else TlsFiles(certs / f"{name}.pem", certs / f"{name}-key.pem", certs / "ca.pem")
    )
    security = ClientSecurity(tls=tls, ca_file=certs / "ca.pem")
    return channel(f"localhost:{port}", service="any", security=security)


def _refusal(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    details = status_details(error)
    assert details.error_info is not None, error
    return details.code, details.error_info.reason, dict(details.error_info.metadata)


@pytest.mark.parametrize("method", METHODS, ids=NAMES)
async def test_each_rpc_refuses_no_credentials_and_the_wrong_scope(
    serve: Any, certs: Path, issuer: Issuer, method: MethodDescriptor
) -> None:
    """Without credentials: UNAUTHENTICATED; with a token holding every other scope of the table:
    PERMISSION_DENIED naming the scope; with the scope: answered, the handler seeing the token's subject."""
    name = f"/{method.containing_service.full_name}/{method.name}"
    scope = TABLE.scope_for(name)
    assert scope is not None
    port = await serve()
    others = sorted(set(TABLE.rpcs.values()) - {scope})
    async with _client(port, certs) as chan:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _call(chan, method)
        assert _refusal(raised.value) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "CREDENTIALS_MISSING",
            {"scope": scope},
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _call(chan, method, issuer.bearer(others))
        assert _refusal(raised.value) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "SCOPE_MISSING",
            {"scope": scope, "principal": "agent-7"},
        )
        assert await _call(chan, method, issuer.bearer([scope])) == b"agent-7"


async def test_our_services_certificates_get_just_their_callers_scopes(serve: Any, certs: Path) -> None:
    """Over mTLS, each service's certificate may call exactly the RPCs the table's `callers` grants it (profile
    resolves persons, never erases them); a valid certificate the table does not name may call nothing."""
    port = await serve(tls_require_client_cert=True)
    for caller in [*TABLE.callers, "operator"]:
        granted = TABLE.callers.get(caller, frozenset())
        async with _client(port, certs, caller) as chan:
            for method, name in zip(METHODS, NAMES, strict=True):
                scope = TABLE.scope_for(name)
                if scope in granted:
                    assert await _call(chan, method) == caller.encode()
                    continue
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await _call(chan, method)
                code, reason, metadata = _refusal(raised.value)
                assert (code, reason, metadata["scope"]) == (
                    grpc.StatusCode.PERMISSION_DENIED,
                    "SCOPE_MISSING",
                    scope,
                ), (caller, name)
    assert "identity.persons:resolve" in TABLE.callers["profile"]


async def test_settings_add_certificate_identities_and_wildcards(serve: Any, certs: Path) -> None:
    port = await serve(tls_require_client_cert=True, auth_cert_scopes={"operator": ["identity.*"]})
    forget = next(
        m for m, n in zip(METHODS, NAMES, strict=True) if n.endswith("IdentityService/ForgetPerson")
    )
    segments = next(m for m, n in zip(METHODS, NAMES, strict=True) if n.endswith("/ListSegments"))
    async with _client(port, certs, "operator") as chan:
        assert await _call(chan, forget) == b"operator"
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _call(chan, segments)
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture
def forget() -> MethodDescriptor:
    return next(m for m, n in zip(METHODS, NAMES, strict=True) if n.endswith("IdentityService/ForgetPerson"))


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": int(time.time()) - 3600},
        {"aud": "someone-else"},
        {"iss": "https://elsewhere.test"},
    ],
    ids=["expired", "audience", "issuer"],
)
async def test_invalid_tokens_are_unauthenticated(
    serve: Any, certs: Path, issuer: Issuer, forget: MethodDescriptor, claims: dict[str, Any]
) -> None:
    port = await serve()
    async with _client(port, certs) as chan:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _call(chan, forget, issuer.bearer(["identity.persons:erase"], **claims))
    code, reason, metadata = _refusal(raised.value)
    assert (code, reason, metadata["scope"]) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "TOKEN_INVALID",
        "identity.persons:erase",
    )


async def test_a_token_signed_by_another_key_or_malformed_is_unauthenticated(
    serve: Any, certs: Path, issuer: Issuer, forget: MethodDescriptor
) -> None:
    port = await serve()
    stranger = Issuer(ec.generate_private_key(ec.SECP256R1()), issuer.jwks_file)
    async with _client(port, certs) as chan:
        for metadata in (
            stranger.bearer(["identity.persons:erase"]),
            (("authorization", "Bearer not-a-jwt"),),
            (("authorization", "Basic b21uaTpvbW5p"),),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await _call(chan, forget, metadata)
            assert _refusal(raised.value)[:2] == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")


async def test_health_and_reflection_stay_open(serve: Any, certs: Path) -> None:
    port = await serve()
    async with _client(port, certs) as chan:
        health = await health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(chan)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for response in reflection.ServerReflectionInfo(iter([request]), timeout=5):
            assert response.list_services_response.service
            break


async def test_reflection_can_be_closed(serve: Any, certs: Path) -> None:
    port = await serve(auth_reflection_open=False)
    async with _client(port, certs) as chan:
        reflection = reflection_pb2_grpc.ServerReflectionStub(chan)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in reflection.ServerReflectionInfo(iter([request]), timeout=5):
                pass
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_client_token_file_is_sent_and_read_again_when_it_changes(
    serve: Any, certs: Path, issuer: Issuer, forget: MethodDescriptor, tmp_path: Path
) -> None:
    """A service's own token (client_token_file) goes on every call; a rotated token is used at once."""
    port = await serve()
    token_file = tmp_path / "token"
    token_file.write_text(issuer.token(["identity.persons:erase"], subject="first"))
    settings = ServiceSettings(
        database_url="postgresql+asyncpg://omni@127.0.0.1/unused",
        nats_url="nats://127.0.0.1:1",
        tls_ca_file=certs / "ca.pem",
        client_token_file=token_file,
    )
    security = ClientSecurity.from_settings(settings)
    async with channel(f"localhost:{port}", service="any", security=security) as chan:
        assert await _call(chan, forget) == b"first"
        token_file.write_text(issuer.token(["identity.persons:erase"], subject="second-and-longer"))
        assert await _call(chan, forget) == b"second-and-longer"


def test_off_by_default() -> None:
    settings = ServiceSettings(database_url="postgresql+asyncpg://omni@h/d", nats_url="nats://h:1")
    assert auth_interceptor(settings) is None
    assert server_tls(settings) is None
    assert not ClientSecurity.from_settings(settings).secure
