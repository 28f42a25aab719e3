"""The embedded run starts PostgreSQL, NATS, the SMTP sink and the services, stops them all on a signal, keeps
its data for the next run, and stops everything when a service dies. Stand-in services (fake_omni.py) take
the place of ``omni migrate``/``omni serve`` so this runs without the real ones."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import nats
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from omni_kit.embedded import free_port
from omni_kit.embedded.ports import port_accepts
from omni_kit.embedded.run import SERVICES
from omni_kit.security.nats_users import ADMIN

# These tests start PostgreSQL, NATS and whole runs of their own.
pytestmark = pytest.mark.integration

FAKE_OMNI = Path(__file__).with_name("fake_omni.py")

DRIVER = """
import json, sys
from pathlib import Path
from omni_kit.embedded.run import SERVICES, LocalRun, RunConfig, ServiceSpec

args = json.loads(sys.argv[1])
config = RunConfig(
    root=Path(args["root"]),
    postgres_port=args["postgres"],
    nats_port=args["nats"],
    smtp_port=args["smtp"],
    services=tuple(ServiceSpec(s.name, port) for s, port in zip(SERVICES, args["services"])),
    durable=False,
    ready_timeout=30,
    stop_timeout=5,
    command=lambda action, service: [sys.executable, args["fake"], action, service],
    console_port=None,  # the stand-ins are what this tests; tests/e2e/test_local_run.py runs the console
    tls=args.get("tls", False),
)
sys.exit(LocalRun(config).run())
"""


@dataclass
class Layout:
    """Where one test's runs keep their data and which ports they use."""

    root: Path
    postgres: int
    nats: int
    smtp: int
    services: list[int]

    def ports(self) -> list[int]:
        return [self.postgres, self.nats, self.smtp, *self.services]


class RunProcess:
    """An embedded run in a child process, with its output collected line by line."""

    def __init__(self, layout: Layout, *, tls: bool = False) -> None:
        args = {**layout.__dict__, "root": str(layout.root), "fake": str(FAKE_OMNI), "tls": tls}
        self.process = subprocess.Popen(
            [sys.executable, "-c", DRIVER, json.dumps(args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "FAKE_OMNI_ROOT": str(layout.root), "NO_COLOR": "1"},
        )
        self.lines: list[str] = []
        self._collector = threading.Thread(target=self._collect, daemon=True)
        self._collector.start()

    def _collect(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if time.monotonic() >= deadline or self.process.poll() is not None:
                time.sleep(0.2)  # let the last lines arrive
                pytest.fail(f"no line with {text!r}; output so far:\n{self.output}")
            time.sleep(0.05)

    def wait(self, timeout: float = 30.0) -> int:
        code = self.process.wait(timeout=timeout)
        self._collector.join(timeout=5)
        return code

    def ensure_stopped(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(
        root=tmp_path / ".omni",
        postgres=free_port(),
        nats=free_port(),
        smtp=free_port(),
        services=[free_port() for _ in SERVICES],
    )


@pytest.fixture
def runs() -> Iterator[list[RunProcess]]:
    started: list[RunProcess] = []
    yield started
    for run in started:
        run.ensure_stopped()


def _open_ports(layout: Layout) -> list[int]:
    return [port for port in layout.ports() if port_accepts(port)]


def test_run_serves_stops_on_signals_and_keeps_its_data(layout: Layout, runs: list[RunProcess]) -> None:
    first = RunProcess(layout)
    runs.append(first)
    first.wait_for_line("Omni is running")
    assert all(port_accepts(port) for port in layout.ports())
    assert re.search(r"identity migrate +\| migrated identity: run 1", first.output)
    assert "gateway" in first.output and "fake serving" in first.output
    assert f"127.0.0.1:{layout.services[0]} omni.identity.v1.IdentityService/ResolvePerson" in first.output

    # A second run on the same directory refuses to start rather than fight over the servers.
    intruder = RunProcess(layout)
    runs.append(intruder)
    assert intruder.wait() == 1
    assert "already using" in intruder.output

    first.process.send_signal(signal.SIGINT)
    assert first.wait() == 0, first.output
    assert _open_ports(layout) == [], first.output

    second = RunProcess(layout)
    runs.append(second)
    second.wait_for_line("Omni is running")
    assert re.search(r"identity migrate +\| migrated identity: run 2", second.output)
    second.process.send_signal(signal.SIGTERM)
    assert second.wait() == 0, second.output
    assert _open_ports(layout) == [], second.output


def test_a_service_that_dies_is_started_again(layout: Layout, runs: list[RunProcess]) -> None:
    layout.root.mkdir()
    (layout.root / "crash-segmentation").touch()
    run = RunProcess(layout)
    runs.append(run)
    run.wait_for_line("segmentation is serving again")
    assert re.search(r"omni +\| segmentation died; starting it again in 1 s", run.output), run.output
    assert re.search(r"omni +\| starting segmentation again \(restart 1\)", run.output), run.output
    assert run.process.poll() is None, run.output
    assert all(port_accepts(port) for port in layout.ports())
    run.process.send_signal(signal.SIGTERM)
    assert run.wait() == 0, run.output
    assert _open_ports(layout) == [], run.output


def test_a_service_and_nats_killed_are_started_again(layout: Layout, runs: list[RunProcess]) -> None:
    run = RunProcess(layout)
    runs.append(run)
    run.wait_for_line("Omni is running")
    records = json.loads((layout.root / "services.json").read_text())
    [profile] = [r["pid"] for r in records if r["argv"][-1] == "profile"]
    nats_pid = int((layout.root / "nats" / "nats-server.pid").read_text())

    os.kill(profile, signal.SIGKILL)
    os.kill(nats_pid, signal.SIGKILL)
    run.wait_for_line("profile is serving again")
    run.wait_for_line("NATS is running again")
    assert "profile died; starting it again" in run.output
    assert "NATS died; starting it again" in run.output
    assert asyncio.run(_jetstream_answers(layout))
    assert all(port_accepts(port) for port in layout.ports())
    [again] = [
        r["pid"]
        for r in json.loads((layout.root / "services.json").read_text())
        if r["argv"][-1] == "profile"
    ]
    assert again != profile

    run.process.send_signal(signal.SIGTERM)
    assert run.wait() == 0, run.output
    assert _open_ports(layout) == [], run.output


def test_postgres_killed_is_started_again(layout: Layout, runs: list[RunProcess]) -> None:
    run = RunProcess(layout)
    runs.append(run)
    run.wait_for_line("Omni is running")
    postmaster = int((layout.root / "postgres" / "postmaster.pid").read_text().split()[0])

    os.kill(postmaster, signal.SIGKILL)
    run.wait_for_line("PostgreSQL is running again", timeout=90)
    assert port_accepts(layout.postgres)
    run.process.send_signal(signal.SIGTERM)
    assert run.wait() == 0, run.output
    assert _open_ports(layout) == [], run.output


async def _jetstream_answers(layout: Layout) -> bool:
    # The run's NATS has a user per service and an administrative one, whose password the run keeps.
    password = json.loads((layout.root / "nats-users.json").read_text())[ADMIN]
    client = await nats.connect(f"nats://127.0.0.1:{layout.nats}", user=ADMIN, password=password)
    try:
        info = await client.jetstream().account_info()
        return info is not None
    finally:
        await client.close()


def test_run_recovers_from_a_run_that_was_killed(layout: Layout, runs: list[RunProcess]) -> None:
    killed = RunProcess(layout)
    runs.append(killed)
    killed.wait_for_line("Omni is running")
    killed.process.kill()  # no chance to stop anything: PostgreSQL, NATS and the services stay behind
    killed.wait()
    assert port_accepts(layout.services[0]) and port_accepts(layout.postgres)

    after = RunProcess(layout)
    runs.append(after)
    after.wait_for_line("Omni is running")
    assert "left running by an earlier run" in after.output
    assert re.search(r"identity migrate +\| migrated identity: run 2", after.output)
    after.process.send_signal(signal.SIGTERM)
    assert after.wait() == 0, after.output
    assert _open_ports(layout) == [], after.output


def test_a_run_with_tls_serves_mtls_only(layout: Layout, runs: list[RunProcess]) -> None:
    """`omni run --tls`: the run makes a CA and certificates, gives the services theirs, and checks their
    health over mTLS; a plaintext caller and a caller without a certificate are refused."""
    run = RunProcess(layout, tls=True)
    runs.append(run)
    run.wait_for_line("Omni is running")
    certs = layout.root / "certs"
    assert "mTLS on" in run.output
    target = f"localhost:{layout.services[0]}"
    request = health_pb2.HealthCheckRequest()
    ca = (certs / "ca.pem").read_bytes()
    operator = grpc.ssl_channel_credentials(
        ca, (certs / "operator-key.pem").read_bytes(), (certs / "operator.pem").read_bytes()
    )
    with grpc.secure_channel(target, operator) as chan:
        status = health_pb2_grpc.HealthStub(chan).Check(request, timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    for refused in (
        grpc.insecure_channel(target),
        grpc.secure_channel(target, grpc.ssl_channel_credentials(ca)),
    ):
        with refused as chan, pytest.raises(grpc.RpcError) as raised:
            health_pb2_grpc.HealthStub(chan).Check(request, timeout=2)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    run.process.send_signal(signal.SIGTERM)
    assert run.wait() == 0, run.output
