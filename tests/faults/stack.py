"""The five services as separate processes (``omni serve``), on a PostgreSQL, a NATS and an SMTP sink that the
fault tests can kill, stop and start again.

It is the layout of the embedded run (``omni_kit.embedded.run``: one database per service, the same settings
and wiring), on free ports under pytest's temporary directory, with each component in the test's hands: a
fault test kills NATS or a service with SIGKILL, or stops PostgreSQL, and starts it again when it chooses.
Each service's output goes to ``<root>/<service>.log``; ``tail`` shows its end when a check fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres, SmtpSink, free_port
from omni_kit.embedded.run import (
    SERVICES,
    ServiceSpec,
    child_environment,
    omni_command,
    service_environment,
)

START_TIMEOUT_S = 90.0
GATEWAY_LEASE_S = 30


@dataclass
class Stack:
    """PostgreSQL, NATS, an SMTP sink and the five services as processes; see the module's docstring."""

    root: Path
    postgres: EmbeddedPostgres = field(init=False)
    nats: EmbeddedNats = field(init=False)
    smtp: SmtpSink = field(init=False)
    services: tuple[ServiceSpec, ...] = field(init=False)
    env: dict[str, str] = field(init=False, default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(init=False, default_factory=dict)
    _logs: dict[str, IO[bytes]] = field(init=False, default_factory=dict)

    def start(self) -> None:
        """Start everything, migrate each service's database, and wait until all five answer SERVING."""
        # Fixed ports (chosen free now): a server started again must come back where its clients look.
        self.postgres = EmbeddedPostgres(self.root / "postgres", free_port(), durable=False)
        self.postgres.start()
        self.nats = EmbeddedNats(self.root / "nats", free_port())
        self.nats.start()
        self.smtp = SmtpSink(self.root / "mail")
        self.smtp.start()
        self.services = tuple(ServiceSpec(s.name, free_port()) for s in SERVICES)
        settings = service_environment(self.services, self.postgres.url, self.nats.url, self.smtp.port)
        # A send attempt cut short by an outage (PostgreSQL gone between its steps) is made again when its lease
        # ends: 120 s by default, 30 s here so that the checks need not wait two minutes for it.
        settings["OMNI_GATEWAY_ATTEMPT_LEASE_S"] = str(GATEWAY_LEASE_S)
        self.env = child_environment(settings, os.environ).variables
        for service in self.services:
            self.postgres.create_database(service.database)
            migrate = subprocess.run(
                omni_command("migrate", service.name), env=self.env, capture_output=True, timeout=120
            )
            assert migrate.returncode == 0, migrate.stdout.decode() + migrate.stderr.decode()
        for service in self.services:
            self.start_service(service.name)
        for service in self.services:
            self.wait_serving(service.name)

    def stop(self) -> None:
        """Stop the services (SIGTERM, then SIGKILL), the SMTP sink, NATS and PostgreSQL."""
        for name in reversed([s.name for s in self.services]):
            self._end(name, signal.SIGTERM)
        for log in self._logs.values():
            log.close()
        self.smtp.stop()
        self.nats.stop()
        self.postgres.stop()

    def service(self, name: str) -> ServiceSpec:
        """The service called ``name``."""
        return next(s for s in self.services if s.name == name)

    def target(self, name: str) -> str:
        """Where the service called ``name`` answers gRPC."""
        return self.service(name).target

    def database(self, name: str) -> str:
        """The asyncpg DSN of the service's database."""
        return self.postgres.dsn(self.service(name).database)

    def start_service(self, name: str) -> None:
        """Start ``omni serve <name>`` (does not wait for it to serve)."""
        log = self._logs.get(name)
        if log is None:
            log = self._logs[name] = (self.root / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            omni_command("serve", name),
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill_service(self, name: str) -> None:
        """Kill the service with SIGKILL (no graceful stop) and wait until it is gone."""
        self._end(name, signal.SIGKILL)

    def kill_nats(self) -> None:
        """Kill NATS with SIGKILL and wait until it is gone."""
        pid = int(self.nats.pid_path.read_text().strip())
        os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        deadline = time.monotonic() + 10
        while self.nats.is_running():
            assert time.monotonic() < deadline, "NATS still runs after SIGKILL"
            time.sleep(0.05)

    def stop_postgres(self) -> None:
        """Stop PostgreSQL (fast shutdown: sessions are cut) and wait until it is down."""
        data = str(self.postgres.data_dir)
        self._retry_pg_ctl(
            lambda: self.postgres._run_pg_tool(
                ["pg_ctl", "stop", "-D", data, "-m", "fast", "-w", "-t", "60"]
            ),
            done=lambda: not self.postgres.is_alive(),
        )

    def start_postgres(self) -> None:
        """Start PostgreSQL again, on its port and data."""
        self._retry_pg_ctl(
            lambda: self.postgres._pg_ctl_start(self.postgres.port), done=self.postgres.is_alive
        )

    @staticmethod
    def _retry_pg_ctl(run: Callable[[], subprocess.CompletedProcess[str]], done: Callable[[], bool]) -> None:
        # pg_ctl now and then ends at once with a failure and no word while the machine is busy: try again.
        said: list[str] = []
        for _ in range(5):
            if done():
                if len(said) > 1:
                    print(f"pg_ctl needed {len(said)} tries: {said}")  # how often it happens, for the record
                return
            result = run()
            said.append(f"{result.returncode}: {result.stdout}{result.stderr}".strip())
            time.sleep(1)
        assert done(), f"pg_ctl failed: {said}"

    def wait_serving(self, name: str, within_s: float = START_TIMEOUT_S) -> float:
        """Wait until the service answers its health check SERVING; return how long that took."""
        started = time.monotonic()
        options = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 500)]
        with grpc.insecure_channel(self.target(name), options) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                process = self.processes[name]
                assert process.poll() is None, f"{name} exited ({process.returncode}):\n{self.tail(name)}"
                with contextlib.suppress(grpc.RpcError):
                    answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return time.monotonic() - started
                assert time.monotonic() - started < within_s, f"{name} not serving:\n{self.tail(name)}"
                time.sleep(0.1)

    def tail(self, name: str, lines: int = 40) -> str:
        """The last lines of a service's output."""
        path = self.root / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _end(self, name: str, how: signal.Signals) -> None:
        process = self.processes.get(name)
        if process is None or process.poll() is not None:
            return
        process.send_signal(how)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
