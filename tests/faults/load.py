"""A steady load of TrackEvent calls, sent as a standard gRPC client sends them.

Each event carries the client's own id and occurred_at, so a retry is the same event. A call is retried, with
the same event, on UNAVAILABLE (what every gRPC client retries) and on DEADLINE_EXCEEDED (safe here: events are
idempotent by id), with a growing backoff, until a bounded time is spent; any other status is final. The load
records which events were acknowledged (answered OK), which were refused (and with what status), and which it
gave up on.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from omni.common.v1 import common_pb2
from omni.profile.v1 import profile_pb2, profile_pb2_grpc

RETRIED = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
CALL_TIMEOUT_S = 5.0
GIVE_UP_AFTER_S = 90.0
# A client that reconnects within a second of a server coming back (gRPC's default backoff grows to 120 s).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


@dataclass
class LoadResult:
    """What the client saw: the events answered OK (id -> person), refused, and given up on."""

    acknowledged: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    given_up: set[str] = field(default_factory=set)
    retries: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for the test's output."""
        retries = ", ".join(f"{code} {n}" for code, n in sorted(self.retries.items())) or "none"
        return (
            f"{self.sent} events in {self.seconds:.1f} s ({self.sent / max(self.seconds, 0.001):.0f}/s): "
            f"{len(self.acknowledged)} acknowledged, {len(self.refused)} refused, "
            f"{len(self.given_up)} given up; retries: {retries}"
        )


async def track(
    stub: profile_pb2_grpc.ProfileServiceStub, event: profile_pb2.Event, result: LoadResult
) -> None:
    """Send one event until it is answered OK or refused, or the client gives up."""
    request = profile_pb2.TrackEventRequest(event=event)
    give_up_at = time.monotonic() + GIVE_UP_AFTER_S
    backoff = 0.05
    while True:
        try:
            answer = await stub.TrackEvent(request, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            if error.code() not in RETRIED:
                result.refused[event.id] = f"{error.code().name}: {error.details()}"
                return
            result.retries[error.code().name] += 1
            if time.monotonic() + backoff > give_up_at:
                result.given_up.add(event.id)
                return
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, 2.0)
            continue
        result.acknowledged[event.id] = answer.person_id
        return


async def steady_load(
    target: str,
    event_type: str,
    user_ids: list[str],
    *,
    rate: float,
    seconds: float,
    concurrency: int = 64,
) -> LoadResult:
    """Send ``rate`` events a second for ``seconds`` seconds, round-robin over ``user_ids``, and wait for
    every call to end (answered, refused or given up)."""
    result = LoadResult()
    limit = asyncio.Semaphore(concurrency)
    # When the stack is behind, the load waits rather than piling up more than a bounded queue.
    queued = asyncio.Semaphore(concurrency * 4)
    tasks: set[asyncio.Task[None]] = set()
    async with grpc.aio.insecure_channel(target, CHANNEL_OPTIONS) as channel:
        stub = profile_pb2_grpc.ProfileServiceStub(channel)

        async def one(event: profile_pb2.Event) -> None:
            try:
                async with limit:
                    await track(stub, event, result)
            finally:
                queued.release()

        started = time.monotonic()
        total = int(rate * seconds)
        for n in range(total):
            # Keep the pace: the n-th event leaves at n / rate (or as soon as a slot is free).
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            occurred = Timestamp()
            occurred.GetCurrentTime()
            event = profile_pb2.Event(
                id=str(uuid.uuid4()),
                type=event_type,
                channel=common_pb2.CHANNEL_WEB,
                occurred_at=occurred,
                identifiers=[common_pb2.Identifier(type="user_id", value=user_ids[n % len(user_ids)])],
            )
            await queued.acquire()
            task = asyncio.create_task(one(event))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            result.sent += 1
        if tasks:
            await asyncio.gather(*tasks)
        result.seconds = time.monotonic() - started
    return result
