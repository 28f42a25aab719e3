"""`omni run` with the real services: all five SERVING within 60 s, reflection answers, the README's example
call works, and Ctrl-C stops everything cleanly."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from omni.common.v1 import common_pb2
from omni.identity.v1 import identity_pb2, identity_pb2_grpc
from omni_kit.embedded import free_port
from omni_kit.embedded.ports import port_accepts
from omni_kit.embedded.run import SERVICES

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
    tracking_port=args["tracking"],
    services=tuple(ServiceSpec(s.name, port) for s, port in zip(SERVICES, args["services"])),
    durable=False,
    ready_timeout=60,
)
sys.exit(LocalRun(config).run())
"""


def test_local_run_serves_all_five_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    service_ports = [free_port() for _ in SERVICES]
    infra_ports = {"postgres": free_port(), "nats": free_port(), "smtp": free_port(), "tracking": free_port()}
    layout = {"root": str(tmp_path / ".omni"), **infra_ports, "services": service_ports}
    process = subprocess.Popen(
        [sys.executable, "-c", DRIVER, json.dumps(layout)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(line.rstrip() for line in process.stdout or []))
    reader.start()
    try:
        started = time.monotonic()
        while not any("Omni is running" in line for line in lines):
            assert process.poll() is None, "\n".join(lines)
            assert time.monotonic() - started < 180, "not running after 180 s:\n" + "\n".join(lines)
            time.sleep(0.2)

        for service, port in zip(SERVICES, service_ports, strict=True):
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert health.status == health_pb2.HealthCheckResponse.SERVING, service.name
                reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
                reply = next(
                    reflection.ServerReflectionInfo(
                        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
                    )
                )
                names = {s.name for s in reply.list_services_response.service}
                assert f"omni.{service.name}.v1.{service.name.capitalize()}Service" in names

        # The README's example call, against the run's identity port.
        with grpc.insecure_channel(f"127.0.0.1:{service_ports[0]}") as channel:
            stub = identity_pb2_grpc.IdentityServiceStub(channel)
            request = identity_pb2.ResolvePersonRequest(
                identifiers=[common_pb2.Identifier(type="email", value="ada@example.com")]
            )
            first = stub.ResolvePerson(request, timeout=5).resolution
            again = stub.ResolvePerson(request, timeout=5).resolution
        assert first.created and not again.created and first.person_id == again.person_id

        # The Segment-compatible tracking endpoint answers with the development write key.
        body = json.dumps({"messageId": "m-1", "anonymousId": "cookie-1", "event": "Product Viewed"}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{infra_ports['tracking']}/v1/track",
            data=body,
            headers={
                "Content-Type": "application/json",
                "Authorization": "Basic " + base64.b64encode(b"omni-dev-web:").decode(),
            },
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            assert json.loads(response.read())["success"] is True
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=60)
        reader.join(timeout=5)
    assert code == 0, "\n".join(lines[-40:])
    all_ports = [*infra_ports.values(), *service_ports]
    assert not [port for port in all_ports if port_accepts(port)], "something still listens after Ctrl-C"
