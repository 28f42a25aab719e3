"""``python -m bench.console_page``: the console's person page for a 1,000-event person, against `omni run`.

With `make run` running (the services and the console as separate processes, as a laptop or a deployment
runs them), tracks 1,000 events across web, app and store for a new person through profile's
BatchTrackEvents, waits until the profile counts them, then loads the person's page 30 times and reads the
console's own Server-Timing (the time from request to response, every service call included). Writes
bench/results/console-person-page.{json,md}. Target: under 300 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import httpx

from omni.common.v1 import common_pb2
from omni.identity.v1 import identity_pb2, identity_pb2_grpc
from omni.profile.v1 import profile_pb2, profile_pb2_grpc

RESULTS = Path(__file__).parent / "results"
CHANNELS = (common_pb2.CHANNEL_WEB, common_pb2.CHANNEL_APP, common_pb2.CHANNEL_STORE)


async def measure(host: str, console: str, loads: int) -> dict[str, object]:
    """Make the person, load the page ``loads`` times, return the figures."""
    email = f"bench.{uuid.uuid4().hex[:10]}@example.com"
    start = datetime.now(UTC) - timedelta(days=30)
    events = []
    for n in range(1000):
        event = profile_pb2.Event(
            id=str(uuid.uuid4()),
            type="order_completed" if n % 10 == 0 else "product_viewed",
            channel=CHANNELS[n % 3],
            identifiers=[common_pb2.Identifier(type="email", value=email)],
        )
        event.occurred_at.FromDatetime(start + timedelta(minutes=40 * n))
        event.properties.update({"product_id": f"sku-{n % 17}", "price": 19.9})
        events.append(event)
    async with (
        grpc.aio.insecure_channel(f"{host}:15052") as profile_channel,
        grpc.aio.insecure_channel(f"{host}:15051") as identity_channel,
    ):
        profile = profile_pb2_grpc.ProfileServiceStub(profile_channel)
        await profile.BatchTrackEvents(profile_pb2.BatchTrackEventsRequest(events=events))
        identity = identity_pb2_grpc.IdentityServiceStub(identity_channel)
        person_id = (
            await identity.LookupPerson(
                identity_pb2.LookupPersonRequest(identifier=common_pb2.Identifier(type="email", value=email))
            )
        ).person.id
        deadline = time.monotonic() + 60
        while (
            await profile.GetProfile(profile_pb2.GetProfileRequest(person_id=person_id))
        ).profile.event_count < 1000:
            if time.monotonic() > deadline:
                raise SystemExit("the profile did not count the 1,000 events within a minute")
            await asyncio.sleep(0.2)
    timings = []
    async with httpx.AsyncClient(base_url=console, timeout=30) as http:
        await http.get(f"/persons/{person_id}")  # warm up: connections to the five services
        for _ in range(loads):
            answer = await http.get(f"/persons/{person_id}")
            answer.raise_for_status()
            timings.append(float(answer.headers["server-timing"].split("dur=")[1]))
    timings.sort()
    return {
        "what": "console person page, 1,000-event person, server time (ms) from the console's Server-Timing",
        "loads": loads,
        "median_ms": round(statistics.median(timings), 1),
        "p90_ms": round(timings[int(0.9 * (len(timings) - 1))], 1),
        "max_ms": round(timings[-1], 1),
        "min_ms": round(timings[0], 1),
        "target_ms": 300,
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    """Measure against the run and write the results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--console", default="http://127.0.0.1:8090")
    parser.add_argument("--loads", type=int, default=30)
    args = parser.parse_args()
    result = asyncio.run(measure(args.host, args.console, args.loads))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "console-person-page.json").write_text(json.dumps(result, indent=2) + "\n")
    load = ", ".join(f"{x:.1f}" for x in result["load_average"])  # type: ignore[attr-defined]
    text = (
        "# Console: the person page of a 1,000-event person\n\n"
        f"Against `omni run` (services and console as separate processes), {result['loads']} loads, server time "
        f"from the console's Server-Timing: median {result['median_ms']} ms, p90 {result['p90_ms']} ms, "
        f"max {result['max_ms']} ms (target < 300 ms); {result['cpus']} CPUs, load average {load}.\n"
    )
    (RESULTS / "console-person-page.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
