"""TLS for the gRPC servers and clients, from certificate files that are read again when they change.

Kubernetes rotates a mounted secret by swapping the files under the pod; a restart should not be needed for
the new certificate to be used. The server hands gRPC a certificate *fetcher*
(grpc.dynamic_ssl_server_credentials), which gRPC asks at every new connection's handshake, and which answers
a new configuration when the files changed. A client channel cannot change its credentials, so the client
(ReloadingChannel) opens a new channel when the files change and lets calls in flight on the old one finish.
The HTTP endpoints' SSL context (http_ssl_context) moves each new connection to a context of the new files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)

_OLD_CHANNEL_GRACE_S = 30.0
"""How long calls in flight on a client channel replaced after a rotation may finish."""


@dataclass(frozen=True)
class TlsFiles:
    """Where a process's certificate, key and trusted CA are; paths are read again when they change.

    ca_file verifies the other side: the server's certificate for a client, the client's for a server that
    requires client certificates (mTLS).
    """

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None

    def _paths(self) -> list[Path]:
        return [p for p in (self.cert_file, self.key_file, self.ca_file) if p is not None]

    def version(self) -> tuple[tuple[int, int, int], ...]:
        """What changes when any of the files changes (modification time, size, inode; stat follows the
        symbolic links a Kubernetes secret mount swaps)."""
        result = []
        for path in self._paths():
            try:
                st = os.stat(path)
            except OSError:
                result.append((0, 0, 0))
            else:
                result.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(result)

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        """Certificate, key and CA as bytes."""
        return (
            self.cert_file.read_bytes(),
            self.key_file.read_bytes(),
            None if self.ca_file is None else self.ca_file.read_bytes(),
        )


class _Watched:
    """Calls build() again when the files changed, at most every check_interval_s; keeps what it built last
    if reading fails (a rotation half done), so a broken file never takes the service down."""

    def __init__(self, files: TlsFiles, check_interval_s: float) -> None:
        self.files = files
        self._check_interval_s = check_interval_s
        self._version = files.version()
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def changed(self) -> bool:
        """Whether the files changed since last seen (and remember the new version)."""
        now = time.monotonic()
        if now - self._checked < self._check_interval_s:
            return False
        with self._lock:
            self._checked = now
            version = self.files.version()
            if version == self._version:
                return False
            self._version = version
            return True


def server_credentials(
    files: TlsFiles, *, require_client_cert: bool, check_interval_s: float = 1.0
) -> grpc.ServerCredentials:
    """Credentials for a server's port: its certificate from files, read again at the first handshake after
    they change; client certificates are required and verified against files.ca_file when
    require_client_cert (mTLS)."""
    if require_client_cert and files.ca_file is None:
        raise ValueError("requiring client certificates needs a CA file to verify them against")
    watched = _Watched(files, check_interval_s)

    def configuration() -> grpc.ServerCertificateConfiguration:
        cert, key, ca = files.read()
        return grpc.ssl_server_certificate_configuration(((key, cert),), root_certificates=ca)

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC on its own threads at each handshake; None keeps the current configuration.
        if not watched.changed():
            return None
        try:
            new = configuration()
        except Exception:
            log.exception("could not read the rotated certificate files; keeping the current ones")
            return None
        log.info("server certificate files changed; new connections use them")
        return new

    return grpc.dynamic_ssl_server_credentials(
        configuration(), fetch, require_client_authentication=require_client_cert
    )


def http_ssl_context(files: TlsFiles, *, check_interval_s: float = 1.0) -> ssl.SSLContext:
    """A server-side SSL context for an HTTP endpoint (aiohttp's ssl_context) whose certificate files are read
    again when they change: at each handshake (the SNI callback, which OpenSSL calls for every ClientHello)
    the connection is moved to a context made from the new files. Client certificates are not asked for:
    these endpoints authenticate by write key or signed link."""
    watched = _Watched(files, check_interval_s)

    def build() -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(files.cert_file, files.key_file)
        context.sni_callback = choose
        return context

    current: list[ssl.SSLContext] = []

    def choose(connection: Any, server_name: str | None, initial: ssl.SSLContext) -> None:
        if watched.changed():
            try:
                current[0] = build()
            except Exception:
                log.exception("could not read the rotated certificate files; keeping the current ones")
            else:
                log.info("HTTP certificate files changed; new connections use them")
        if connection.context is not current[0]:
            connection.context = current[0]

    current.append(build())
    return current[0]


def channel_credentials(files: TlsFiles | None, ca_file: Path | None = None) -> grpc.ChannelCredentials:
    """Credentials of a client: its certificate and key (if files), verifying the server against the CA."""
    if files is None:
        ca = None if ca_file is None else ca_file.read_bytes()
        return grpc.ssl_channel_credentials(root_certificates=ca)
    cert, key, ca = files.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


class _ReloadingMultiCallable:
    """A stub's method on a ReloadingChannel: each call goes to the channel current at the call."""

    def __init__(self, owner: ReloadingChannel, kind: str, method: str, kwargs: dict[str, Any]) -> None:
        self._owner = owner
        self._kind = kind
        self._method = method
        self._kwargs = kwargs
        self._generation = -1
        self._callable: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        channel, generation = self._owner.current()
        if generation != self._generation:
            self._callable = getattr(channel, self._kind)(self._method, **self._kwargs)
            self._generation = generation
        return self._callable(*args, **kwargs)


class ReloadingChannel(grpc.aio.Channel):
    """A client channel over TLS whose certificate files are read again when they change: the next call
    opens a new channel with them; calls in flight on the old one may finish (for 30 s)."""

    def __init__(
        self, open_channel: Callable[[], grpc.aio.Channel], files: TlsFiles, *, check_interval_s: float = 1.0
    ) -> None:
        self._open = open_channel
        self._watched = _Watched(files, check_interval_s)
        self._channel = open_channel()
        self._generation = 0
        self._retired: set[asyncio.Task[None]] = set()

    def current(self) -> tuple[grpc.aio.Channel, int]:
        """The channel to use now, and its generation."""
        if self._watched.changed():
            try:
                fresh = self._open()
            except Exception:
                log.exception("could not read the rotated certificate files; keeping the current ones")
            else:
                old, self._channel = self._channel, fresh
                self._generation += 1
                log.info("client certificate files changed; new calls use a new channel")
                task = asyncio.get_running_loop().create_task(old.close(grace=_OLD_CHANNEL_GRACE_S))
                self._retired.add(task)
                task.add_done_callback(self._retired.discard)
        return self._channel, self._generation

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _ReloadingMultiCallable(self, "unary_unary", method, _positional(args, kwargs))

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _ReloadingMultiCallable(self, "unary_stream", method, _positional(args, kwargs))

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _ReloadingMultiCallable(self, "stream_unary", method, _positional(args, kwargs))

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _ReloadingMultiCallable(self, "stream_stream", method, _positional(args, kwargs))

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)
        for task in list(self._retired):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self.current()[0].channel_ready()

    async def __aenter__(self) -> ReloadingChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close(None)


def _positional(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    names = ("request_serializer", "response_deserializer")
    return {**dict(zip(names, args, strict=False)), **kwargs}
