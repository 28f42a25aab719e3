"""`omni run` with the real services: all five SERVING within 60 s, reflection answers, the README's example
calls work (gRPC, and the Segment library with the write keys of the user's environment), a service and
NATS killed come back and serve, and Ctrl-C stops everything cleanly."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import smtplib
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import nats
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from segment import analytics

from omni.common.v1 import common_pb2
from omni.identity.v1 import identity_pb2, identity_pb2_grpc
from omni.profile.v1 import profile_pb2, profile_pb2_grpc
from omni_kit.bus import events_stream
from omni_kit.embedded import free_port
from omni_kit.embedded.ports import port_accepts
from omni_kit.embedded.run import SERVICES
from omni_kit.security.nats_users import ADMIN

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
    gateway_http_port=args["gateway_http"],
    bounce_port=args["bounces"],
    console_port=args["console"],
    services=tuple(ServiceSpec(s.name, port) for s, port in zip(SERVICES, args["services"])),
    durable=False,
    ready_timeout=60,
)
sys.exit(LocalRun(config).run())
"""


# The README's "Sending events from an analytics SDK": the user's write keys, exported before `make run`.
WRITE_KEYS = '{"wk_web": "web", "wk_app": "app", "wk_pos": {"name": "pos", "channel": "store"}}'


def _wait_for_line(lines: list[str], text: str, process: subprocess.Popen[str], within: float) -> None:
    started = time.monotonic()
    while not any(text in line for line in lines):
        assert process.poll() is None, "\n".join(lines)
        assert time.monotonic() - started < within, f"no {text!r} after {within:.0f} s:\n" + "\n".join(lines)
        time.sleep(0.2)


def test_local_run_serves_all_five_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    service_ports = [free_port() for _ in SERVICES]
    infra_ports = {"postgres": free_port(), "nats": free_port(), "smtp": free_port(), "tracking": free_port()}
    infra_ports |= {"gateway_http": free_port(), "bounces": free_port(), "console": free_port()}
    layout = {"root": str(tmp_path / ".omni"), **infra_ports, "services": service_ports}
    process = subprocess.Popen(
        [sys.executable, "-c", DRIVER, json.dumps(layout)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "NO_COLOR": "1", "OMNI_PROFILE_WRITE_KEYS": WRITE_KEYS},
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(line.rstrip() for line in process.stdout or []))
    reader.start()
    try:
        _wait_for_line(lines, "Omni is running", process, within=180)
        assert any("from your environment: OMNI_PROFILE_WRITE_KEYS" in line for line in lines)
        assert any(
            "write keys: wk_web (web), wk_app (app), wk_pos (pos, channel store)" in line for line in lines
        )

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

        # The gateway's HTTP endpoint (email links) and bounce endpoint listen on the run's ports: a forged
        # click link is refused without a redirect, and the bounce endpoint speaks SMTP.
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{infra_ports['gateway_http']}/c/forged", timeout=10)
            raise AssertionError("a forged click link was followed")
        except urllib.error.HTTPError as error:
            assert error.code == 400
        with smtplib.SMTP("127.0.0.1", infra_ports["bounces"], timeout=10) as bounces:
            assert bounces.noop()[0] == 250
        assert any(f"127.0.0.1:{infra_ports['bounces']}" in line for line in lines)

        # The console answers on its port, named in the banner, and reaches the services (a person found).
        console = f"http://127.0.0.1:{infra_ports['console']}"
        assert any(f"Console     {console}/" in line for line in lines)
        with urllib.request.urlopen(f"{console}/segments", timeout=10) as page:
            assert page.status == 200 and b"Segments" in page.read()

        # The README's example call, against the run's identity port.
        with grpc.insecure_channel(f"127.0.0.1:{service_ports[0]}") as channel:
            stub = identity_pb2_grpc.IdentityServiceStub(channel)
            request = identity_pb2.ResolvePersonRequest(
                identifiers=[common_pb2.Identifier(type="email", value="ada@example.com")]
            )
            first = stub.ResolvePerson(request, timeout=5).resolution
            again = stub.ResolvePerson(request, timeout=5).resolution
        assert first.created and not again.created and first.person_id == again.person_id
        with urllib.request.urlopen(f"{console}/persons?q=ada@example.com", timeout=10) as found:
            assert found.url.endswith(f"/persons/{first.person_id}") and b"ada@example.com" in found.read()

        # The Segment-compatible tracking endpoint answers with the write keys of the user's environment,
        # which replace the run's (omni-dev-web and the others).
        body = json.dumps({"messageId": "m-1", "anonymousId": "cookie-1", "event": "Product Viewed"}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{infra_ports['tracking']}/v1/track",
            data=body,
            headers={
                "Content-Type": "application/json",
                "Authorization": "Basic " + base64.b64encode(b"wk_web:").decode(),
            },
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            assert json.loads(response.read())["success"] is True
        refused = urllib.request.Request(
            request.full_url,
            data=body,
            headers={
                "Content-Type": "application/json",
                "Authorization": "Basic " + base64.b64encode(b"omni-dev-web:").decode(),
            },
        )
        try:
            urllib.request.urlopen(refused, timeout=10)
            raise AssertionError("the default write key works although the environment set others")
        except urllib.error.HTTPError as error:
            assert error.code == 401

        # The README's server-side example, as written there, with the store's write key.
        customer = f"customer-{time.monotonic_ns()}"
        errors: list[Exception] = []
        analytics.write_key = "wk_pos"
        analytics.host = f"http://127.0.0.1:{infra_ports['tracking']}"
        analytics.on_error = lambda error, batch: errors.append(error)
        analytics.default_client = None
        analytics.identify(customer, {"email": "ada@example.com", "plan": "gold"})
        analytics.track(customer, "Order Completed", {"order_id": "o-1", "total": 129.9})
        analytics.flush()
        assert errors == []
        profile = _profile_of(service_ports, customer)
        assert profile.traits["plan"] == "gold"
        assert {(e.type, e.source, e.channel) for e in profile.recent_events} >= {
            ("order_completed", "pos", common_pb2.CHANNEL_STORE)
        }
        # The services reach NATS as their own users, each limited to its own subjects: profile's events are
        # published and the other services' consumers pull and acknowledge them.
        admin = json.loads((tmp_path / ".omni" / "nats-users.json").read_text())["admin"]
        asyncio.run(_consumers_caught_up(infra_ports["nats"], admin))

        # A service and NATS killed outright come back, and events flow again.
        records = json.loads((tmp_path / ".omni" / "services.json").read_text())
        [profile_pid] = [r["pid"] for r in records if r["argv"][-1] == "profile"]
        nats_pid = int((tmp_path / ".omni" / "nats" / "nats-server.pid").read_text())
        os.kill(profile_pid, signal.SIGKILL)
        os.kill(nats_pid, signal.SIGKILL)
        _wait_for_line(lines, "NATS is running again", process, within=60)
        _wait_for_line(lines, "profile is serving again", process, within=90)
        with grpc.insecure_channel(f"127.0.0.1:{service_ports[1]}") as channel:
            stub = profile_pb2_grpc.ProfileServiceStub(channel)
            recorded = stub.TrackEvent(
                profile_pb2.TrackEventRequest(
                    event=profile_pb2.Event(
                        id=f"after-{customer}",
                        type="page_viewed",
                        channel=common_pb2.CHANNEL_WEB,
                        identifiers=[common_pb2.Identifier(type="user_id", value=customer)],
                    )
                ),
                timeout=10,
            )
        assert recorded.person_id == profile.person_id
    finally:
        analytics.default_client = None
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=60)
        reader.join(timeout=5)
    assert code == 0, "\n".join(lines[-40:])
    all_ports = [*infra_ports.values(), *service_ports]
    assert not [port for port in all_ports if port_accepts(port)], "something still listens after Ctrl-C"


async def _consumers_caught_up(port: int, admin_password: str) -> None:
    """Wait until segmentation's consumer has had profile's events and acknowledged them, and decisioning's is
    pulling (it follows other services' events, none of which this story makes)."""
    client = await nats.connect(f"nats://127.0.0.1:{port}", user=ADMIN, password=admin_password)
    try:
        js = client.jetstream()
        deadline = time.monotonic() + 30
        for durable in ("segmentation-facts", "decisioning-read-models"):
            while True:
                info = await js.consumer_info(events_stream(), durable)
                busy = info.delivered.stream_seq > 0 if durable == "segmentation-facts" else info.num_waiting
                if busy and not info.num_ack_pending and not info.num_pending:
                    break
                assert time.monotonic() < deadline, f"{durable} did not catch up: {info}"
                await asyncio.sleep(0.2)
    finally:
        await client.close()


def _profile_of(service_ports: list[int], user_id: str) -> profile_pb2.Profile:
    """The profile of the person identity knows by user_id (polled: the library sends in the background)."""
    with (
        grpc.insecure_channel(f"127.0.0.1:{service_ports[0]}") as identity_channel,
        grpc.insecure_channel(f"127.0.0.1:{service_ports[1]}") as profile_channel,
    ):
        identity = identity_pb2_grpc.IdentityServiceStub(identity_channel)
        profile = profile_pb2_grpc.ProfileServiceStub(profile_channel)
        deadline = time.monotonic() + 15
        while True:
            try:
                person = identity.LookupPerson(
                    identity_pb2.LookupPersonRequest(
                        identifier=common_pb2.Identifier(type="user_id", value=user_id)
                    ),
                    timeout=5,
                ).person
                found = profile.GetProfile(
                    profile_pb2.GetProfileRequest(person_id=person.id, recent_event_count=10), timeout=5
                ).profile
                if found.event_count >= 2:
                    return found
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, f"no profile with two events for {user_id}"
            time.sleep(0.2)
