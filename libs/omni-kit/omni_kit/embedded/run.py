"""The laptop run behind ``make run`` / ``omni run``: PostgreSQL, NATS, an SMTP sink, the five services and the
web console.

Everything lives under one root directory (``.omni`` by default), so a second run finds the data of the
first. The services run as child processes with their output prefixed by their name; the settings they get
are the run's defaults with the user's environment over them (write keys, SMTP server …), except the
wiring the run provides itself. A service, NATS or PostgreSQL that dies is started again after a backoff
(1 s doubling to 30 s, back to 1 s once it ran a minute), and the run says so. Ctrl-C (or SIGTERM) stops
the services first, then the SMTP sink, NATS and PostgreSQL.

Start-up time goes almost all to starting Python processes (each service imports gRPC, SQLAlchemy, protobuf
and its own code: seconds of CPU each), so the five migrations run at once, then the five services and the
console at once: their databases are separate, and each service creates the event streams it needs itself.

The default ports lie below 32768, outside the range Linux (32768-60999) and other systems (49152 and up)
hand out as the local ports of outgoing connections: a fixed port inside it may be taken by any connection
at the moment a server wants to bind it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any, TextIO, TypeAlias

from omni_kit.embedded._process import EmbeddedServerError, pid_alive, pid_cmdline, terminate_pid
from omni_kit.embedded.nats import EmbeddedNats
from omni_kit.embedded.ports import port_accepts, port_is_free
from omni_kit.embedded.postgres import EmbeddedPostgres
from omni_kit.embedded.smtp_sink import SmtpSink
from omni_kit.security.nats_users import read_passwords, server_config, write_passwords

HOST = "127.0.0.1"
SMTP_FROM = "omni@localhost"
# Write keys of the laptop run's tracking endpoint (profile): one per kind of source, not secrets.
DEV_WRITE_KEYS: dict[str, str | dict[str, str]] = {
    "omni-dev-web": "web",
    "omni-dev-app": "app",
    "omni-dev-pos": {"name": "pos", "channel": "store"},
}
# Settings the run itself provides (where each service listens and finds PostgreSQL, NATS and the services
# it calls): the user's environment cannot move them, since the run starts those servers where it says.
_WIRING_SUFFIXES = (
    "_DATABASE_URL",
    "_NATS_URL",
    "_NATS_USER",
    "_NATS_PASSWORD",
    "_GRPC_HOST",
    "_GRPC_PORT",
    "_TARGET",
)
RESTART_FIRST_DELAY_S = 1.0
RESTART_MAX_DELAY_S = 30.0
RESTART_STABLE_AFTER_S = 60.0
"""A component that ran this long before it died is restarted after the first delay again."""

_SignalHandler: TypeAlias = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


@dataclass(frozen=True)
class ServiceSpec:
    """One service of the run: its name (as ``omni serve`` knows it) and the gRPC port it listens on."""

    name: str
    grpc_port: int

    @property
    def env_prefix(self) -> str:
        """The prefix of the service's settings, e.g. ``OMNI_IDENTITY_``."""
        return f"OMNI_{self.name.upper()}_"

    @property
    def database(self) -> str:
        """The name of the service's own database."""
        return f"omni_{self.name}"

    @property
    def target(self) -> str:
        """Where other services reach it, ``host:port``."""
        return f"{HOST}:{self.grpc_port}"


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("identity", 15051),
    ServiceSpec("profile", 15052),
    ServiceSpec("segmentation", 15053),
    ServiceSpec("decisioning", 15054),
    ServiceSpec("gateway", 15055),
)
"""The services in start order: each one's dependencies come before it."""


def omni_command(action: str, service: str) -> list[str]:
    """Return the command line of ``omni <action> <service>`` (``migrate`` or ``serve``) in this Python."""
    return [sys.executable, "-m", "omni_kit.cli", action, service]


def console_command() -> list[str]:
    """Return the command line of ``omni console`` in this Python."""
    return [sys.executable, "-m", "omni_kit.cli", "console"]


CONSOLE = "console"
"""The web console's name: its label in the output, and its certificate's name (with tls)."""


@dataclass(frozen=True)
class RunConfig:
    """Where the run keeps its data, the ports it uses, and how it starts the services."""

    root: Path
    postgres_port: int = 15432
    nats_port: int = 14222
    smtp_port: int = 2525
    tracking_port: int = 8088
    gateway_http_port: int = 8089
    """The gateway's HTTP endpoint: email unsubscribe, open pixel, click redirect, SMS callbacks."""
    bounce_port: int = 2526
    """The gateway's bounce SMTP endpoint (VERP return paths); not the SMTP sink's."""
    services: tuple[ServiceSpec, ...] = SERVICES
    durable: bool = True
    ready_timeout: float = 60.0
    stop_timeout: float = 10.0
    command: Callable[[str, str], list[str]] = field(default=omni_command)
    console_port: int | None = 8090
    """The web console's HTTP port; None runs no console."""
    console: Callable[[], list[str]] = field(default=console_command)
    tls: bool = False
    """mTLS between everything: a local CA and a certificate per service (and an operator) in certs/."""

    @property
    def certs_dir(self) -> Path:
        """Where the run's CA and certificates are (with tls)."""
        return self.root / "certs"

    @property
    def postgres_dir(self) -> Path:
        """PostgreSQL's data directory."""
        return self.root / "postgres"

    @property
    def nats_dir(self) -> Path:
        """NATS JetStream's store directory."""
        return self.root / "nats"

    @property
    def mail_dir(self) -> Path:
        """Where the SMTP sink saves every email."""
        return self.root / "mail"


OPERATOR = "operator"
"""The name of the certificate the run makes for its own health checks and for you (with tls)."""


def service_environment(
    services: tuple[ServiceSpec, ...],
    database_url: Callable[[str], str],
    nats_url: str,
    smtp_port: int,
    tracking_port: int | None = None,
    certs: Path | None = None,
    *,
    gateway_http_port: int | None = None,
    bounce_port: int | None = None,
    nats_users: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Return the settings every service reads from the environment in the embedded run.

    Each service gets ``OMNI_<SERVICE>_DATABASE_URL``, ``_NATS_URL``, ``_GRPC_PORT`` and ``_GRPC_HOST``
    (127.0.0.1: the embedded run has no TLS and no tokens, so it stays on this machine); profile, decisioning
    and gateway get the addresses of the services they call, gateway the SMTP sink, profile its tracking endpoint (when
    ``tracking_port`` is given) with the development write keys. ``database_url`` maps a database name to
    its URL. With ``certs`` (a directory of `omni certs`), every service serves TLS with its certificate,
    requires client certificates of the CA and presents its own to the services it calls.
    With ``gateway_http_port`` and ``bounce_port`` the gateway's HTTP endpoint (email links, SMS
    callbacks) and bounce SMTP endpoint listen there, on 127.0.0.1. With ``nats_users`` (passwords by user
    name) each service connects to NATS as its own user.
    """
    env: dict[str, str] = {}
    by_name = {service.name: service for service in services}
    for service in services:
        env[service.env_prefix + "DATABASE_URL"] = database_url(service.database)
        env[service.env_prefix + "NATS_URL"] = nats_url
        env[service.env_prefix + "GRPC_PORT"] = str(service.grpc_port)
        env[service.env_prefix + "GRPC_HOST"] = HOST
        if nats_users is not None and service.name in nats_users:
            env[service.env_prefix + "NATS_USER"] = service.name
            env[service.env_prefix + "NATS_PASSWORD"] = nats_users[service.name]
        if certs is not None:
            env[service.env_prefix + "TLS_CERT_FILE"] = str(certs / f"{service.name}.pem")
            env[service.env_prefix + "TLS_KEY_FILE"] = str(certs / f"{service.name}-key.pem")
            env[service.env_prefix + "TLS_CA_FILE"] = str(certs / "ca.pem")
            env[service.env_prefix + "TLS_REQUIRE_CLIENT_CERT"] = "true"
    if "identity" in by_name:
        env["OMNI_PROFILE_IDENTITY_TARGET"] = by_name["identity"].target
        env["OMNI_GATEWAY_IDENTITY_TARGET"] = by_name["identity"].target
    if "profile" in by_name:
        env["OMNI_GATEWAY_PROFILE_TARGET"] = by_name["profile"].target
        env["OMNI_DECISIONING_PROFILE_TARGET"] = by_name["profile"].target
    if "segmentation" in by_name:
        env["OMNI_DECISIONING_SEGMENTATION_TARGET"] = by_name["segmentation"].target
    if "gateway" in by_name:
        env["OMNI_DECISIONING_GATEWAY_TARGET"] = by_name["gateway"].target
    env["OMNI_GATEWAY_SMTP_HOST"] = HOST
    env["OMNI_GATEWAY_SMTP_PORT"] = str(smtp_port)
    env["OMNI_GATEWAY_SMTP_FROM"] = SMTP_FROM
    if gateway_http_port is not None:
        env["OMNI_GATEWAY_EMAIL_HTTP_HOST"] = HOST
        env["OMNI_GATEWAY_EMAIL_HTTP_PORT"] = str(gateway_http_port)
        # With certificates the HTTP endpoints serve HTTPS with the service's own (omni_kit.security.http_tls).
        scheme = "https" if certs is not None else "http"
        env["OMNI_GATEWAY_EMAIL_PUBLIC_URL"] = f"{scheme}://{HOST}:{gateway_http_port}"
    if bounce_port is not None:
        env["OMNI_GATEWAY_BOUNCE_SMTP_HOST"] = HOST
        env["OMNI_GATEWAY_BOUNCE_SMTP_PORT"] = str(bounce_port)
    env["OMNI_CONSOLE_HTTP_HOST"] = HOST
    for service in services:
        env[f"OMNI_CONSOLE_{service.name.upper()}_TARGET"] = service.target
    if certs is not None:
        env["OMNI_CONSOLE_TLS_CERT_FILE"] = str(certs / f"{CONSOLE}.pem")
        env["OMNI_CONSOLE_TLS_KEY_FILE"] = str(certs / f"{CONSOLE}-key.pem")
        env["OMNI_CONSOLE_TLS_CA_FILE"] = str(certs / "ca.pem")
    if "profile" in by_name and tracking_port is not None:
        # The Segment-compatible endpoint, with write keys for a web and an app source.
        env["OMNI_PROFILE_HTTP_HOST"] = HOST
        env["OMNI_PROFILE_HTTP_PORT"] = str(tracking_port)
        env["OMNI_PROFILE_WRITE_KEYS"] = json.dumps(DEV_WRITE_KEYS)
    return env


@dataclass(frozen=True)
class ChildEnvironment:
    """The environment the run's children get, and what of the user's environment went into it."""

    variables: dict[str, str]
    overridden: tuple[str, ...]
    """OMNI_* settings of the run that the user's environment replaced (or added)."""
    ignored: tuple[str, ...]
    """OMNI_* variables of the user's environment the run does not let through (its wiring)."""


def child_environment(run_settings: Mapping[str, str], user: Mapping[str, str]) -> ChildEnvironment:
    """Merge the user's environment over the run's settings: the user's write keys, SMTP server or any other
    setting win, except the run's wiring (database, NATS, gRPC address and targets of each service)."""
    ignored = tuple(
        sorted(
            name
            for name in user
            if name.startswith("OMNI_")
            and name.endswith(_WIRING_SUFFIXES)
            and user[name] != run_settings.get(name)
        )
    )
    overridden = tuple(
        sorted(
            name
            for name in user
            if name.startswith("OMNI_") and name not in ignored and user[name] != run_settings.get(name)
        )
    )
    variables = {
        **run_settings,
        **{k: v for k, v in user.items() if k not in ignored},
        "PYTHONUNBUFFERED": "1",
    }
    return ChildEnvironment(variables, overridden, ignored)


def run_all(root: Path = Path(".omni"), *, tls: bool = False) -> int:
    """Run PostgreSQL, NATS, the SMTP sink and the five services until Ctrl-C or SIGTERM (with mTLS between
    them and their callers when tls).

    Returns 0 after a requested stop, 1 if something failed to start.
    """
    return LocalRun(RunConfig(root=root.expanduser().resolve(), tls=tls)).run()


_COLOURS = ("36", "32", "35", "33", "34", "31")


class _Output:
    """Writes lines to the terminal, each prefixed with who said it; safe to call from several threads."""

    def __init__(self, stream: TextIO, width: int) -> None:
        self._stream = stream
        self._width = width
        self._lock = threading.Lock()
        self._colours: dict[str, str] = {}
        self._use_colour = stream.isatty() and "NO_COLOR" not in os.environ

    def line(self, label: str, text: str) -> None:
        """Write one line under ``label``."""
        prefix = f"{label:<{self._width}} | "
        if self._use_colour:
            base = label.split()[0]
            colour = self._colours.setdefault(base, _COLOURS[len(self._colours) % len(_COLOURS)])
            prefix = f"\x1b[{colour}m{prefix}\x1b[0m"
        with self._lock:
            self._stream.write(prefix + text + "\n")
            self._stream.flush()

    def say(self, text: str) -> None:
        """Write the run's own message."""
        for part in text.split("\n"):
            self.line("omni", part)

    def block(self, text: str) -> None:
        """Write text as it is, without a prefix (the banner)."""
        with self._lock:
            self._stream.write(text + "\n")
            self._stream.flush()


class _Child:
    """A child process whose output is copied, line by line, to the terminal under its label."""

    def __init__(self, label: str, argv: list[str], env: dict[str, str], output: _Output) -> None:
        self.label = label
        self.argv = argv
        self.started = time.monotonic()
        # Its own session: a Ctrl-C in the terminal reaches only us, and we stop the children in order.
        self.process = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._output = output
        self._pump = threading.Thread(target=self._copy_output, name=f"output-{label}", daemon=True)
        self._pump.start()

    def _copy_output(self) -> None:
        stdout: IO[bytes] | None = self.process.stdout
        assert stdout is not None
        for raw in iter(stdout.readline, b""):
            self._output.line(self.label, raw.decode("utf-8", errors="replace").rstrip("\r\n"))

    def poll(self) -> int | None:
        """Return the exit code, or None while it runs."""
        return self.process.poll()

    def finish(self) -> None:
        """Wait for the last of its output to be copied."""
        self._pump.join(timeout=2.0)


class _Supervised:
    """A component the run starts again when it dies: how to tell it runs and how to start it, and when the
    next start is due (its backoff doubles with each quick death)."""

    def __init__(self, name: str, running: Callable[[], bool], restart: Callable[[], None]) -> None:
        self.name = name
        self.running = running
        self.restart = restart
        self.started = time.monotonic()
        self.delay = RESTART_FIRST_DELAY_S
        self.due: float | None = None
        self.restarts = 0

    def died(self, now: float) -> float:
        """Schedule the next start; return in how many seconds it is."""
        if now - self.started >= RESTART_STABLE_AFTER_S:
            self.delay = RESTART_FIRST_DELAY_S
        wait = self.delay
        self.delay = min(self.delay * 2, RESTART_MAX_DELAY_S)
        self.due = now + wait
        return wait


class LocalRun:
    """One embedded run: starts everything in ``config``, supervises it, and stops it in reverse order."""

    def __init__(self, config: RunConfig, stream: TextIO | None = None) -> None:
        """Prepare the run; ``stream`` receives all output (stdout by default)."""
        self.config = config
        labels = ["omni", *(f"{service.name} migrate" for service in config.services)]
        self._out = _Output(stream or sys.stdout, max(len(label) for label in labels))
        self._stop = threading.Event()
        self._stopping = False
        self._children: list[_Child] = []
        self._postgres: EmbeddedPostgres | None = None
        self._nats: EmbeddedNats | None = None
        self._smtp: SmtpSink | None = None
        self._environment = ChildEnvironment({}, (), ())
        self._components: list[_Supervised] = []
        self._health = _HealthWatch(self._out)

    @property
    def _pids_path(self) -> Path:
        return self.config.root / "services.json"

    def run(self) -> int:
        """Start everything, wait for a stop signal or a failure, stop everything; return the exit code."""
        self.config.root.mkdir(parents=True, exist_ok=True)
        # aiosmtpd logs every SMTP connection at INFO; in a terminal that drowns the services' own output.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        with self._exclusive_root() as locked:
            if not locked:
                self._out.say(f"another `omni run` is already using {self.config.root}; stop it first")
                return 1
            with self._signals_handled():
                try:
                    return self._start_and_supervise()
                except EmbeddedServerError as error:
                    if self._stop.is_set():
                        return 0
                    self._out.say(f"failed: {error}")
                    return 1
                finally:
                    self._stop_everything()

    # -- start ------------------------------------------------------------------------------------------

    def _start_and_supervise(self) -> int:
        config = self.config
        self._stop_leftover_services()
        taken = [service for service in config.services if not port_is_free(service.grpc_port, HOST)]
        if taken:
            names = ", ".join(f"{service.name} ({service.grpc_port})" for service in taken)
            self._out.say(f"cannot start: gRPC ports already in use: {names}")
            return 1
        if config.console_port is not None and not port_is_free(config.console_port, HOST):
            self._out.say(f"cannot start: the console's port {config.console_port} is already in use")
            return 1

        self._out.say(f"starting PostgreSQL (data in {_shown(config.postgres_dir)})")
        self._postgres = EmbeddedPostgres(config.postgres_dir, config.postgres_port, durable=config.durable)
        self._postgres.start()
        self._components.append(_Supervised("PostgreSQL", self._postgres.is_alive, self._postgres.restart))
        for service in config.services:
            self._postgres.create_database(service.database)
        self._out.say(f"starting NATS JetStream (data in {_shown(config.nats_dir)})")
        # A user per service, allowed its own subjects only (omni_kit.security.nats_users); the passwords
        # stay beside the run's data so a restart of the run keeps them.
        nats_users = read_passwords(config.root, [service.name for service in config.services])
        write_passwords(config.root, nats_users)
        self._nats = EmbeddedNats(config.nats_dir, config.nats_port, config=server_config(nats_users))
        self._nats.start()
        self._components.append(_Supervised("NATS", self._nats.is_running, self._nats.start))
        self._smtp = SmtpSink(config.mail_dir, HOST, config.smtp_port)
        self._smtp.start()
        if self._stop.is_set():
            return 0

        certs = None
        if config.tls:
            from omni_kit.security.certs import make_certificates

            certs = config.certs_dir
            make_certificates(certs, [*(service.name for service in config.services), CONSOLE, OPERATOR])
            self._out.say(f"mTLS on: CA and certificates (one for you: {OPERATOR}.pem) in {_shown(certs)}")
        self._environment = child_environment(
            service_environment(
                config.services,
                self._postgres.url,
                self._nats.url,
                self._smtp.port,
                config.tracking_port,
                certs=certs,
                gateway_http_port=config.gateway_http_port,
                bounce_port=config.bounce_port,
                nats_users=nats_users,
            ),
            os.environ,
        )
        if self._environment.overridden:
            self._out.say(f"from your environment: {', '.join(self._environment.overridden)}")
        if self._environment.ignored:
            self._out.say(
                f"ignoring {', '.join(self._environment.ignored)} from your environment: the run sets them"
            )
        if config.console_port is not None:
            self._environment.variables["OMNI_CONSOLE_HTTP_PORT"] = str(config.console_port)
        env = self._environment.variables
        codes = self._migrate_all(env)
        if self._stop.is_set():
            return 0
        for service, code in codes.items():
            if code != 0:
                self._out.say(f"migrating {service.name} failed (exit code {code}); stopping")
                return 1
        for service in config.services:
            self._start_service(service)
            self._components.append(
                _Supervised(
                    service.name,
                    lambda name=service.name: self._service_running(name),  # type: ignore[misc]
                    lambda service=service: self._start_service(service),  # type: ignore[misc]
                )
            )
        if config.console_port is not None:
            self._start_console()
            self._components.append(
                _Supervised(CONSOLE, lambda: self._service_running(CONSOLE), self._start_console)
            )

        failure = self._wait_until_serving()
        if self._stop.is_set():
            return 0
        if failure is not None:
            self._out.say(failure)
            return 1
        self._out.block(self._banner())
        return self._supervise()

    def _migrate_all(self, env: dict[str, str]) -> dict[ServiceSpec, int]:
        """Run ``omni migrate <service>`` for every service at once, to the end (or until a stop is requested);
        return each one's exit code (-1 when stopped)."""
        children = {
            service: _Child(
                f"{service.name} migrate", self.config.command("migrate", service.name), env, self._out
            )
            for service in self.config.services
        }
        self._children.extend(children.values())
        try:
            while any(child.poll() is None for child in children.values()):
                if self._stop.wait(0.05):
                    return {service: -1 for service in children}
                self._tend()
            for child in children.values():
                child.finish()
            return {service: child.poll() or 0 for service, child in children.items()}
        finally:
            for child in children.values():
                if child.poll() is not None:
                    self._children.remove(child)

    def _wait_until_serving(self) -> str | None:
        """Wait until every service answers its health check SERVING; return what went wrong, if anything."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + self.config.ready_timeout
        pending = list(self.config.services)
        # Short reconnect backoff: by default a channel that found nobody listening waits seconds to retry.
        options = [
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500),
        ]
        if self.config.tls:
            certs = self.config.certs_dir
            credentials = grpc.ssl_channel_credentials(
                root_certificates=(certs / "ca.pem").read_bytes(),
                private_key=(certs / f"{OPERATOR}-key.pem").read_bytes(),
                certificate_chain=(certs / f"{OPERATOR}.pem").read_bytes(),
            )
            channels = {s.name: grpc.secure_channel(s.target, credentials, options) for s in pending}
        else:
            channels = {s.name: grpc.insecure_channel(s.target, options) for s in pending}
        request = health_pb2.HealthCheckRequest(service="")
        try:
            while pending:
                if self._stop.is_set():
                    return None
                self._tend()
                for service in list(pending):
                    stub = health_pb2_grpc.HealthStub(channels[service.name])
                    try:
                        response = stub.Check(request, timeout=0.5)
                    except grpc.RpcError:
                        continue
                    if response.status == health_pb2.HealthCheckResponse.SERVING:
                        pending.remove(service)
                        self._out.say(f"{service.name} is serving on {service.target}")
                if not pending and not self._console_answers(deadline):
                    return f"the console is not answering on port {self.config.console_port} after {self.config.ready_timeout:.0f} s; stopping"
                if pending and time.monotonic() >= deadline:
                    names = ", ".join(service.name for service in pending)
                    return f"not serving after {self.config.ready_timeout:.0f} s: {names}; stopping"
                if pending:
                    self._stop.wait(0.1)
            return None
        finally:
            for channel in channels.values():
                channel.close()

    # -- supervise and stop -----------------------------------------------------------------------------

    def _supervise(self) -> int:
        """Keep everything running until a stop is requested; then return 0."""
        try:
            while not self._stop.wait(0.2):
                self._tend()
            return 0
        finally:
            self._health.close()

    def _tend(self) -> None:
        """Notice what died (a service, NATS, PostgreSQL) and start it again once its backoff is over, saying
        so; say when a service started again serves."""
        now = time.monotonic()
        for component in self._components:
            if component.due is None and not component.running():
                wait = component.died(now)
                self._out.say(f"{component.name} died; starting it again in {wait:.0f} s")
            elif component.due is not None and now >= component.due:
                self._restart(component, self._health)
        self._health.report()

    def _restart(self, component: _Supervised, health: _HealthWatch) -> None:
        component.due = None
        component.restarts += 1
        self._out.say(f"starting {component.name} again (restart {component.restarts})")
        try:
            component.restart()
        except EmbeddedServerError as error:
            wait = component.died(time.monotonic())
            self._out.say(f"{component.name} did not start: {error}\ntrying again in {wait:.0f} s")
            return
        component.started = time.monotonic()
        service = next((s for s in self.config.services if s.name == component.name), None)
        if service is None:
            self._out.say(f"{component.name} is running again")
        else:
            health.watch(service)

    def _console_answers(self, deadline: float) -> bool:
        """Wait until the console accepts connections (or the deadline passes, or a stop is requested)."""
        port = self.config.console_port
        if port is None:
            return True
        while not port_accepts(port, HOST, timeout=0.2):
            if self._stop.is_set():
                return True
            if time.monotonic() >= deadline:
                return False
            self._tend()
            self._stop.wait(0.1)
        self._out.say(f"the console is serving on http://{HOST}:{port}/")
        return True

    def _start_console(self) -> None:
        """Start ``omni console`` (in place of the child that died, if one did)."""
        for child in [c for c in self._children if c.label == CONSOLE]:
            child.finish()
            self._children.remove(child)
        self._children.append(_Child(CONSOLE, self.config.console(), self._environment.variables, self._out))
        self._record_services()

    def _service_running(self, name: str) -> bool:
        child = next((c for c in self._children if c.label == name), None)
        return child is not None and child.poll() is None

    def _start_service(self, service: ServiceSpec) -> None:
        """Start ``omni serve <service>`` (in place of the child that died, if one did)."""
        for child in [c for c in self._children if c.label == service.name]:
            child.finish()
            self._children.remove(child)
        self._children.append(
            _Child(
                service.name,
                self.config.command("serve", service.name),
                self._environment.variables,
                self._out,
            )
        )
        self._record_services()

    def _stop_everything(self) -> None:
        """Stop the services (SIGTERM, then SIGKILL after the stop timeout), the SMTP sink, NATS, PostgreSQL."""
        self._stopping = True
        running = [child for child in self._children if child.poll() is None]
        if running:
            self._out.say("stopping the services")
        for child in reversed(running):
            with contextlib.suppress(ProcessLookupError):
                child.process.terminate()
        deadline = time.monotonic() + self.config.stop_timeout
        for child in running:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._out.say(
                    f"{child.label} did not stop within {self.config.stop_timeout:.0f} s; killing it"
                )
                child.process.kill()
                child.process.wait()
        for child in self._children:
            child.finish()
        self._children.clear()
        with contextlib.suppress(OSError):
            self._pids_path.unlink()
        steps: list[tuple[str, Callable[[], None] | None]] = [
            ("the SMTP sink", self._smtp.stop if self._smtp else None),
            ("NATS", self._nats.stop if self._nats else None),
            ("PostgreSQL", self._postgres.stop if self._postgres else None),
        ]
        for name, stop in steps:
            if stop is None:
                continue
            self._out.say(f"stopping {name}")
            try:
                stop()
            except Exception as error:  # keep going: the next server must still be stopped
                self._out.say(f"could not stop {name}: {error}")
        if self._postgres is not None:
            self._out.say(f"stopped; data kept in {_shown(self.config.root)}")

    @contextlib.contextmanager
    def _signals_handled(self) -> Iterator[None]:
        """Turn SIGINT, SIGTERM and SIGHUP into a stop request while the run lasts."""

        def request_stop(signum: int, frame: FrameType | None) -> None:
            if self._stopping:
                self._out.say("still stopping, please wait")
            elif not self._stop.is_set():
                self._out.say(f"{signal.Signals(signum).name} received; stopping")
            self._stop.set()

        # Signal handlers can only be set from the main thread; elsewhere the caller must stop us.
        previous: dict[signal.Signals, _SignalHandler] = {}
        if threading.current_thread() is threading.main_thread():
            for handled in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                previous[handled] = signal.signal(handled, request_stop)
        try:
            yield
        finally:
            for handled, handler in previous.items():
                signal.signal(handled, handler)

    @contextlib.contextmanager
    def _exclusive_root(self) -> Iterator[bool]:
        """Hold a lock on the root directory, so two runs never share (and stop each other's) servers."""
        with (self.config.root / "run.lock").open("a") as lock_file:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def _record_services(self) -> None:
        """Note the running services' process ids, so a run after a hard crash can stop the orphans."""
        records = [{"pid": child.process.pid, "argv": child.argv} for child in self._children]
        self._pids_path.write_text(json.dumps(records))

    def _stop_leftover_services(self) -> None:
        """Stop services an earlier run was killed before it could stop (they would hold the gRPC ports)."""
        try:
            records = json.loads(self._pids_path.read_text())
        except (OSError, ValueError):
            return
        for record in records:
            pid, argv = record.get("pid"), record.get("argv")
            if isinstance(pid, int) and pid_alive(pid) and pid_cmdline(pid) == argv:
                self._out.say(f"stopping {' '.join(argv[-2:])} left running by an earlier run (pid {pid})")
                terminate_pid(pid, timeout=self.config.stop_timeout)
        with contextlib.suppress(OSError):
            self._pids_path.unlink()

    # -- banner -----------------------------------------------------------------------------------------

    def _banner(self) -> str:
        """Return what a developer needs once everything runs: endpoints, data, and a first call."""
        config = self.config
        assert self._postgres is not None and self._nats is not None and self._smtp is not None
        rows = [("service", "gRPC endpoint", "database")]
        rows += [(s.name, s.target, s.database) for s in config.services]
        name_width = max(len(row[0]) for row in rows) + 2
        target_width = max(len(row[1]) for row in rows) + 2
        lines = ["", "Omni is running. Ctrl-C stops everything.", ""]
        if config.console_port is not None:
            lines += [
                f"  Console     http://{HOST}:{config.console_port}/   (make demo loads a retailer's data)",
                "",
            ]
        lines += [f"  {name:<{name_width}}{target:<{target_width}}{db}" for name, target, db in rows]
        lines += [
            "",
            f"  PostgreSQL  postgresql://postgres@{HOST}:{self._postgres.port}/   data: {_shown(config.postgres_dir)}",
            f"  NATS        {self._nats.url}   JetStream data: {_shown(config.nats_dir)}",
            f"  SMTP sink   {HOST}:{self._smtp.port}   every email is saved in {_shown(config.mail_dir)}/*.eml",
        ]
        env = self._environment.variables
        smtp_target = f"{env.get('OMNI_GATEWAY_SMTP_HOST', HOST)}:{env.get('OMNI_GATEWAY_SMTP_PORT', '')}"
        if smtp_target != f"{HOST}:{self._smtp.port}":
            lines += [f"              (the gateway sends to {smtp_target}, as your environment says)"]
        web = "https" if config.tls else "http"
        if any(s.name == "gateway" for s in config.services):
            http_port = env.get("OMNI_GATEWAY_EMAIL_HTTP_PORT", str(config.gateway_http_port))
            bounce_port = env.get("OMNI_GATEWAY_BOUNCE_SMTP_PORT", str(config.bounce_port))
            lines += [
                f"  Gateway     {web}://{HOST}:{http_port}/ (email unsubscribe /u, pixel /o, clicks /c, SMS /sms)",
                f"              bounces (SMTP{', STARTTLS' if config.tls else ''}, VERP return paths) "
                f"{HOST}:{bounce_port}",
            ]
        identity = next((s for s in config.services if s.name == "identity"), None)
        if any(s.name == "profile" for s in config.services):
            port = env.get("OMNI_PROFILE_HTTP_PORT", str(config.tracking_port))
            lines += [
                f"  Tracking    {web}://{HOST}:{port}/v1/track (Segment API)   write keys: "
                + _write_keys(env.get("OMNI_PROFILE_WRITE_KEYS", ""))
            ]
        if identity is not None:
            lines += ["", "Try it (grpcurl, through server reflection):", _grpcurl_example(identity.target)]
            lines += ["", "or from Python, with the generated stubs:", _python_example(identity.target)]
        return "\n".join([*lines, ""])


def _write_keys(setting: str) -> str:
    """The write keys of a OMNI_PROFILE_WRITE_KEYS value, each with its source, for the banner."""
    try:
        keys = json.loads(setting)
    except ValueError:
        return "(OMNI_PROFILE_WRITE_KEYS is not JSON; profile will say what is wrong)"
    if not isinstance(keys, dict) or not keys:
        return "none (the endpoint is off)"
    shown = []
    for key, source in keys.items():
        if isinstance(source, dict):
            name, channel = source.get("name", "?"), source.get("channel")
            shown.append(f"{key} ({name}, channel {channel})" if channel else f"{key} ({name})")
        else:
            shown.append(f"{key} ({source})")
    return ", ".join(shown)


class _HealthWatch:
    """Services started again, checked until they answer SERVING, which is then said once."""

    def __init__(self, output: _Output) -> None:
        self._out = output
        self._watched: dict[str, tuple[ServiceSpec, Any]] = {}
        self._last_check = 0.0

    def watch(self, service: ServiceSpec) -> None:
        """Check service until it serves."""
        import grpc

        old = self._watched.pop(service.name, None)
        if old is not None:
            old[1].close()
        options = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 1000)]
        self._watched[service.name] = (service, grpc.insecure_channel(service.target, options))

    def report(self) -> None:
        """Check the watched services (at most every half second); say which serve again."""
        if not self._watched or time.monotonic() - self._last_check < 0.5:
            return
        self._last_check = time.monotonic()
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        for name, (service, channel) in list(self._watched.items()):
            try:
                response = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=0.3
                )
            except grpc.RpcError:
                continue
            if response.status == health_pb2.HealthCheckResponse.SERVING:
                self._out.say(f"{name} is serving again on {service.target}")
                channel.close()
                del self._watched[name]

    def close(self) -> None:
        """Close the channels still open."""
        for _, channel in self._watched.values():
            channel.close()
        self._watched.clear()


def _grpcurl_example(target: str) -> str:
    body = '{"identifiers":[{"type":"email","value":"ada@example.com"}]}'
    return f"  grpcurl -plaintext -d '{body}' {target} omni.identity.v1.IdentityService/ResolvePerson"


def _python_example(target: str) -> str:
    code = (
        "import grpc; "
        "from omni.common.v1 import common_pb2; "
        "from omni.identity.v1 import identity_pb2, identity_pb2_grpc; "
        f'stub = identity_pb2_grpc.IdentityServiceStub(grpc.insecure_channel("{target}")); '
        "print(stub.ResolvePerson(identity_pb2.ResolvePersonRequest(identifiers=["
        'common_pb2.Identifier(type="email", value="ada@example.com")])))'
    )
    return f"  {_shown(Path(sys.executable))} -c '{code}'"


def _shown(path: Path) -> str:
    """Return ``path`` relative to the working directory when it is inside it (shorter to read and copy)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
