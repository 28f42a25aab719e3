"""The measurement every latency suite makes: capacity (closed loop), then latency at the target rate.

Capacity tells how many calls per second the service answers at most with many callers; when it is below
the target rate, the open-loop run at that rate saturates the service and its percentiles are mostly the
call deadline, so capacity is the figure that shows progress until then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bench import baselines
from bench.children import ServiceProcess
from bench.context import BenchContext, cpu_sample, cpu_usage, log
from bench.load import LatencyRun, ThroughputRun, closed_loop, open_loop
from bench.results import Baseline, Result, Target

CAPACITY_CALLERS = 16
WARM_CALLS = 200
DEADLINE_S = 2.0


@dataclass
class Measured:
    """Capacity and latency of one call."""

    capacity: ThroughputRun
    latency: LatencyRun


async def capacity_and_latency(
    ctx: BenchContext,
    call: Callable[[float], Awaitable[Any]],
    *,
    rate: float,
    children: dict[str, ServiceProcess],
    label: str,
) -> Measured:
    """Warm up, measure capacity with 16 callers, let the service settle, then the open loop at ``rate``.

    ``call(deadline_s)`` makes one call with that deadline.
    """
    for _ in range(WARM_CALLS):
        await call(5.0)

    async def one(_: int) -> int:
        await call(5.0)
        return 1

    before = cpu_sample(ctx, children)
    capacity = await closed_loop(
        one, concurrency=CAPACITY_CALLERS, duration_s=ctx.durations.capacity, warmup_s=1.0
    )
    capacity.cpu_cores = cpu_usage(before, cpu_sample(ctx, children))
    log(f"{label} capacity: {capacity.per_second:,.0f} calls/s with {CAPACITY_CALLERS} callers")
    await asyncio.sleep(0.5)
    before = cpu_sample(ctx, children)
    latency = await open_loop(lambda _: call(DEADLINE_S), rate=rate, duration_s=ctx.durations.latency)
    latency.cpu_cores = cpu_usage(before, cpu_sample(ctx, children))
    log(
        f"{label} at {rate:g}/s: p50 {latency.p50_ms:.2f} ms, p99 {latency.p99_ms:.2f} ms, "
        f"{latency.achieved_rate:,.0f}/s answered"
    )
    return Measured(capacity, latency)


async def latency_results(
    ctx: BenchContext,
    suite: str,
    label: str,
    measured: Measured,
    *,
    rate: float,
    target_p99_ms: float,
    notes: str,
    extra_p99: list[Baseline] | None = None,
    extra_p50: list[Baseline] | None = None,
    details: dict[str, Any] | None = None,
) -> list[Result]:
    """Three results: p99 at the rate (with the target), p50 at the rate, and capacity.

    The echo server's figures come from the context's cache (measured once per run, while nothing else of
    ours runs) or are measured now: call this after the service under test has stopped.
    """
    latency, capacity = measured.latency, measured.capacity
    echo_capacity = await baselines.echo_throughput(ctx, CAPACITY_CALLERS)
    echo_latency = await baselines.echo_latency(ctx, rate)
    saturated = capacity.per_second < rate
    note = notes + latency.health()
    if saturated:
        note += (
            f" Capacity ({capacity.per_second:,.0f} calls/s) is below the offered {rate:,.0f}/s, so the "
            "service is saturated at this rate."
        )
    return [
        Result(
            suite,
            f"{label} p99 at {rate:,.0f}/s",
            latency.p99_ms,
            "ms",
            higher_is_better=False,
            baselines=[*(extra_p99 or []), Baseline("echo p99", echo_latency.p99_ms, "ms")],
            targets=[Target("<", target_p99_ms)],
            notes=note,
            details=latency.summary() | (details or {}),
            clean=latency.clean,
        ),
        Result(
            suite,
            f"{label} p50 at {rate:,.0f}/s",
            latency.p50_ms,
            "ms",
            higher_is_better=False,
            baselines=[*(extra_p50 or []), Baseline("echo p50", echo_latency.p50_ms, "ms")],
            details={"cpu_cores": latency.cpu_cores},
            clean=latency.clean,
        ),
        Result(
            suite,
            f"{label} capacity ({CAPACITY_CALLERS} callers)",
            capacity.per_second,
            "calls/s",
            higher_is_better=True,
            baselines=[Baseline("echo capacity", echo_capacity.per_second, "calls/s")],
            notes=f"Closed loop, {CAPACITY_CALLERS} callers back to back; the most calls/s the service answers. "
            f"The latency target needs at least {rate:,.0f}/s." + capacity.health(),
            details=capacity.summary(),
            clean=capacity.clean,
        ),
    ]
