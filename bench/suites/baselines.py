"""The bare gRPC echo server on its own: what one Python gRPC call costs here, for every other suite."""

from __future__ import annotations

from bench import baselines
from bench.context import BenchContext, log
from bench.results import Result

SUITE = "baselines"
ECHO_CALLERS = 16


async def run(ctx: BenchContext) -> list[Result]:
    """Echo throughput with 16 callers, and echo latency at the rates the latency suites use."""
    throughput = await baselines.echo_throughput(ctx, ECHO_CALLERS)
    log(f"echo: {throughput.per_second:,.0f} calls/s with {ECHO_CALLERS} callers")
    results = [
        Result(
            SUITE,
            f"echo unary calls/s ({ECHO_CALLERS} callers)",
            throughput.per_second,
            "calls/s",
            higher_is_better=True,
            notes="grpc.aio server with one generic bytes-in/bytes-out method, in its own process; "
            "closed loop, one channel." + throughput.health(),
            details=throughput.summary(),
            clean=throughput.clean,
        )
    ]
    for rate in (500.0, 1000.0):
        latency = await baselines.echo_latency(ctx, rate)
        log(f"echo at {rate:g}/s: p50 {latency.p50_ms:.2f} ms, p99 {latency.p99_ms:.2f} ms")
        results.append(
            Result(
                SUITE,
                f"echo p99 at {rate:,.0f}/s",
                latency.p99_ms,
                "ms",
                higher_is_better=False,
                notes="Open loop; latency from the scheduled send time. The floor for every latency figure."
                + latency.health(),
                details=latency.summary(),
                clean=latency.clean,
            )
        )
    return results
