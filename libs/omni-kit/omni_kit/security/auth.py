"""Who is calling, and may they: authentication by bearer JWT or mTLS certificate, authorisation by the scope
table (protos/omni/scopes.yaml), in one server interceptor.

A call is checked before its handler runs:
- health checks (and reflection, unless closed by settings) are always answered;
- the method's scope comes from the table; a method without one is refused (fail closed);
- the caller is the subject of a valid bearer token (`authorization: Bearer <JWT>`, verified against the
  configured JWKS, its scopes in the `scope` claim, space-separated, or `scp`, a list), or else the identity
  of its verified client certificate (common name or subject alternative names), whose scopes the table's
  `callers` and the settings give;
- no credentials, or a bad token: UNAUTHENTICATED; the scope missing: PERMISSION_DENIED. Both carry an
  ErrorInfo whose metadata names the scope.

The authenticated caller is available to the handler (for audit) as current_principal().
"""

from __future__ import annotations

import importlib.resources
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import jwt
import yaml

from omni_kit.errors import PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)

HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIX = "/grpc.reflection."


@dataclass(frozen=True)
class ScopeTable:
    """The scope each RPC needs (by full method name, "/pkg.Service/Method"), the scopes each of our
    services holds as a caller (by certificate identity), and the RPCs that are audited."""

    rpcs: Mapping[str, str]
    callers: Mapping[str, frozenset[str]]
    audited: frozenset[str] = frozenset()
    """The operator actions written to the audit log (omni_kit.audit), by full method name."""

    @classmethod
    def parse(cls, text: str) -> ScopeTable:
        """Read the table's YAML."""
        data = yaml.safe_load(text) or {}
        rpcs: dict[str, str] = {}
        for service, methods in (data.get("rpcs") or {}).items():
            for method, scope in (methods or {}).items():
                if not isinstance(scope, str) or not scope:
                    raise ValueError(f"{service}/{method}: the scope must be a non-empty string")
                rpcs[f"/{service}/{method}"] = scope
        callers = {
            str(name): frozenset(str(s) for s in scopes or ())
            for name, scopes in (data.get("callers") or {}).items()
        }
        audited = frozenset(f"/{name}" for name in data.get("audited") or ())
        return cls(rpcs=rpcs, callers=callers, audited=audited)

    @classmethod
    def load(cls, path: Path | None = None) -> ScopeTable:
        """The table at path, or the one shipped with the generated protos (omni/scopes.yaml)."""
        if path is not None:
            return cls.parse(path.read_text())
        return cls.parse(importlib.resources.files("omni").joinpath("scopes.yaml").read_text())

    def scope_for(self, method: str) -> str | None:
        """The scope a method needs, None when the table has none."""
        return self.rpcs.get(method)


def grants(granted: Iterable[str], required: str) -> bool:
    """Whether the granted scopes cover required: the same scope, or a prefix ending in "*"."""
    for scope in granted:
        if scope == required or (scope.endswith("*") and required.startswith(scope[:-1])):
            return True
    return False


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: how (token or certificate), its name (the token's subject or the certificate's
    identity) and its scopes."""

    kind: str
    name: str
    scopes: frozenset[str] = field(default_factory=frozenset)


_PRINCIPAL: ContextVar[Principal | None] = ContextVar("omni_principal", default=None)


def current_principal() -> Principal | None:
    """Who made the call being served (None when authorisation is off, or outside a call)."""
    return _PRINCIPAL.get()


class JwksKeys:
    """The keys tokens are verified with, from a JWKS file (read again when it changes)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._version: tuple[int, int] | None = None
        self._keys: dict[str | None, jwt.PyJWK] = {}

    def _refresh(self) -> None:
        st = self._path.stat()
        version = (st.st_mtime_ns, st.st_size)
        if version == self._version:
            return
        keys: dict[str | None, jwt.PyJWK] = {}
        for key in jwt.PyJWKSet.from_dict(json.loads(self._path.read_text())).keys:
            keys[key.key_id] = key
        self._keys, self._version = keys, version

    def key_for(self, token: str) -> jwt.PyJWK:
        """The key that signed token (by its kid; the only key when the token names none)."""
        self._refresh()
        kid = jwt.get_unverified_header(token).get("kid")
        if kid in self._keys:
            return self._keys[kid]
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        raise jwt.InvalidKeyError(f"no key {kid!r} in the JWKS")


class Authenticator:
    """Turns a call's credentials into a Principal."""

    def __init__(
        self,
        *,
        jwks: JwksKeys | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        cert_scopes: Mapping[str, Iterable[str]] = {},
        leeway_s: float = 30.0,
    ) -> None:
        self._jwks = jwks
        self._issuer = issuer
        self._audience = audience
        self._cert_scopes = {name: frozenset(scopes) for name, scopes in cert_scopes.items()}
        self._leeway_s = leeway_s

    def authenticate(self, metadata: Sequence[tuple[str, Any]], auth_context: Mapping[str, Any]) -> Principal:
        """The caller of a call with this metadata and this peer; Unauthenticated when there is none."""
        token = _bearer(metadata)
        if token is not None:
            return self._token(token)
        names = _certificate_names(auth_context)
        if names:
            scopes: set[str] = set()
            known = [n for n in names if n in self._cert_scopes]
            for name in known:
                scopes |= self._cert_scopes[name]
            return Principal("certificate", (known or names)[0], frozenset(scopes))
        raise Unauthenticated(
            message="the call carries no credentials: a bearer token or a client certificate",
            reason="CREDENTIALS_MISSING",
        )

    def _token(self, token: str) -> Principal:
        if self._jwks is None:
            raise Unauthenticated(
                message="bearer tokens are not accepted here (no keys configured)", reason="TOKEN_INVALID"
            )
        try:
            key = self._jwks.key_for(token)
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[key.algorithm_name],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway_s,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except (jwt.PyJWTError, ValueError) as error:
            raise Unauthenticated(
                message=f"the bearer token is not valid: {error}", reason="TOKEN_INVALID"
            ) from None
        raw = claims.get("scope", claims.get("scp", ()))
        scopes = raw.split() if isinstance(raw, str) else [str(s) for s in raw]
        return Principal("token", str(claims["sub"]), frozenset(scopes))


def _bearer(metadata: Sequence[tuple[str, Any]]) -> str | None:
    for key, value in metadata:
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated(
                    message="the authorization header must be 'Bearer <token>'", reason="TOKEN_INVALID"
                )
            return token.strip()
    return None


def _certificate_names(auth_context: Mapping[str, Any]) -> list[str]:
    """The verified client certificate's common name and alternative names (empty without one)."""
    names: list[str] = []
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        for value in auth_context.get(key, ()):
            name = value.decode() if isinstance(value, bytes) else str(value)
            if name not in names:
                names.append(name)
    return names


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks every call against the scope table before its handler runs (see the module's docstring).

    It raises Unauthenticated / PermissionDenied from inside the handler, so that the error interceptor
    outside it turns them into statuses with their ErrorInfo, as every other refusal.
    """

    def __init__(
        self, table: ScopeTable, authenticator: Authenticator, *, reflection_open: bool = True
    ) -> None:
        self._table = table
        self._authenticator = authenticator
        self._open = (HEALTH_PREFIX, REFLECTION_PREFIX) if reflection_open else (HEALTH_PREFIX,)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None or method.startswith(self._open):
            return handler
        scope = self._table.scope_for(method)
        authenticator = self._authenticator

        def check(context: grpc.aio.ServicerContext) -> None:
            principal = authenticator.authenticate(
                tuple(context.invocation_metadata() or ()), context.auth_context()
            )
            # Known from here on, refused or not (the audit log names who was refused).
            _PRINCIPAL.set(principal)
            if scope is None:
                raise PermissionDenied(
                    message=f"{method} has no scope in the scope table; nobody may call it",
                    reason="SCOPE_UNDECLARED",
                    metadata={"method": method},
                )
            if not grants(principal.scopes, scope):
                raise PermissionDenied(
                    message=f"{principal.name} lacks the scope {scope}",
                    reason="SCOPE_MISSING",
                    metadata={"scope": scope, "principal": principal.name},
                )

        return wrap_handler(handler, check, scope)


def wrap_handler(
    handler: grpc.RpcMethodHandler, check: Callable[[grpc.aio.ServicerContext], None], scope: str | None
) -> grpc.RpcMethodHandler:
    """The handler with check(context) run first (any kind of call)."""

    def with_scope(error: Unauthenticated) -> Unauthenticated:
        if scope is not None:
            error.metadata = {**error.metadata, "scope": scope}
        return error

    def run_check(context: grpc.aio.ServicerContext) -> None:
        try:
            check(context)
        except Unauthenticated as error:
            raise with_scope(error) from None

    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            run_check(context)
            return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            run_check(context)
            return await inner_su(requests, context)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            run_check(context)
            async for item in inner_us(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, handler.request_deserializer, handler.response_serializer
        )
    inner_ss = handler.stream_stream

    async def stream_stream(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        run_check(context)
        async for item in inner_ss(requests, context):
            yield item

    return grpc.stream_stream_rpc_method_handler(
        stream_stream, handler.request_deserializer, handler.response_serializer
    )


class BearerToken:
    """A caller's own token, from a file (read again when it changes: a rotated token needs no restart)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._version: tuple[int, int] | None = None
        self._value = ""

    def value(self) -> str:
        """The token now."""
        st = self._path.stat()
        version = (st.st_mtime_ns, st.st_size)
        if version != self._version:
            self._value = self._path.read_text().strip()
            self._version = version
        return self._value


class TokenInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to every call of a channel."""

    def __init__(self, token: BearerToken) -> None:
        self._token = token

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata["authorization"] = f"Bearer {self._token.value()}"
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)

    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)

    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)
