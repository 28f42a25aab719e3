"""Load generators: open loop at a fixed offered rate (latency) and closed loop with N callers (throughput).

The open-loop generator schedules call i at start + i/rate and measures each latency from that scheduled
time, not from when the call actually left: if the generator or the server falls behind, the waiting counts
(no coordinated omission). Both generators are bounded in time and in calls in flight.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (``fraction`` in 0..1); NaN for an empty list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def error_name(error: BaseException) -> str:
    """A short name for a failed call: the gRPC status code, else the exception type."""
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code().name
    return type(error).__name__


@dataclass
class LatencyRun:
    """The outcome of an open-loop run."""

    rate: float
    duration_s: float
    scheduled: int
    completed: int
    latencies_s: list[float]
    errors: Counter[str] = field(default_factory=Counter)
    skipped: int = 0
    """Calls not sent because too many were in flight (the server could not keep up at all)."""
    max_send_lag_s: float = 0.0
    """The furthest the generator fell behind its schedule when sending: its own health."""
    cpu_cores: dict[str, float] | None = None
    """Cores used during the run per process (see bench.context.cpu_usage), when measured."""

    @property
    def p50_ms(self) -> float:
        """Median latency in milliseconds."""
        return percentile(sorted(self.latencies_s), 0.50) * 1000

    @property
    def p99_ms(self) -> float:
        """99th percentile latency in milliseconds."""
        return percentile(sorted(self.latencies_s), 0.99) * 1000

    @property
    def achieved_rate(self) -> float:
        """Calls completed successfully per second of the schedule."""
        return self.completed / self.duration_s if self.duration_s else 0.0

    @property
    def clean(self) -> bool:
        """No failed or skipped call, and the generator kept to its schedule within 50 ms."""
        return not self.errors and not self.skipped and self.max_send_lag_s < 0.05

    def health(self) -> str:
        """A sentence on what makes the run doubtful (empty when clean), for a result's notes."""
        problems = []
        if self.errors or self.skipped:
            failed = sum(self.errors.values()) + self.skipped
            problems.append(
                f"{failed:,} of {self.scheduled:,} calls failed ({_counts(self.errors)}); only "
                f"{self.achieved_rate:,.0f}/s answered: the service does not keep up with this rate, and "
                "failed calls are left out of the percentiles"
            )
        if self.max_send_lag_s >= 0.05:
            problems.append(
                f"the load generator fell {self.max_send_lag_s * 1000:.0f} ms behind its schedule"
            )
        return " UNCLEAN RUN: " + "; ".join(problems) + "." if problems else ""

    def summary(self) -> dict[str, Any]:
        """The figures worth keeping in a result's details."""
        ordered = sorted(self.latencies_s)
        return {
            "offered_rate_per_s": self.rate,
            "duration_s": self.duration_s,
            "calls": self.scheduled,
            "ok": self.completed,
            "ok_per_s": round(self.achieved_rate, 1),
            "errors": dict(self.errors),
            "skipped": self.skipped,
            "p50_ms": round(percentile(ordered, 0.50) * 1000, 3),
            "p90_ms": round(percentile(ordered, 0.90) * 1000, 3),
            "p99_ms": round(percentile(ordered, 0.99) * 1000, 3),
            "p999_ms": round(percentile(ordered, 0.999) * 1000, 3),
            "max_ms": round(ordered[-1] * 1000, 3) if ordered else None,
            "max_send_lag_ms": round(self.max_send_lag_s * 1000, 2),
            "cpu_cores": self.cpu_cores,
        }


async def open_loop(
    call: Callable[[int], Awaitable[Any]],
    *,
    rate: float,
    duration_s: float,
    max_in_flight: int = 2000,
    drain_timeout_s: float = 10.0,
) -> LatencyRun:
    """Call ``call(i)`` at ``rate`` per second for ``duration_s``; failed calls count as errors.

    ``call`` should carry its own deadline. Calls still running ``drain_timeout_s`` after the schedule ends
    are cancelled and counted as errors ("unfinished").
    """
    loop = asyncio.get_running_loop()
    total = max(1, int(rate * duration_s))
    run = LatencyRun(rate=rate, duration_s=duration_s, scheduled=total, completed=0, latencies_s=[])
    in_flight: set[asyncio.Task[None]] = set()

    async def one(index: int, scheduled_at: float) -> None:
        try:
            await call(index)
        except asyncio.CancelledError:
            run.errors["unfinished"] += 1
            raise
        except Exception as error:
            run.errors[error_name(error)] += 1
            return
        run.latencies_s.append(loop.time() - scheduled_at)
        run.completed += 1

    start = loop.time() + 0.01
    sent = 0
    while sent < total:
        now = loop.time()
        due = min(total, int((now - start) * rate) + 1)
        while sent < due:
            scheduled_at = start + sent / rate
            run.max_send_lag_s = max(run.max_send_lag_s, now - scheduled_at)
            if len(in_flight) >= max_in_flight:
                run.skipped += 1
            else:
                task = asyncio.create_task(one(sent, scheduled_at))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            sent += 1
        if sent < total:
            await asyncio.sleep(max(0.0, start + sent / rate - loop.time()))
    if in_flight:
        _, pending = await asyncio.wait(set(in_flight), timeout=drain_timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return run


@dataclass
class ThroughputRun:
    """The outcome of a closed-loop run: items (events, sets, calls) completed in the measured window."""

    concurrency: int
    window_s: float
    items: int
    calls: int
    call_latencies_s: list[float]
    errors: Counter[str] = field(default_factory=Counter)
    first_error: str | None = None
    cpu_cores: dict[str, float] | None = None
    """Cores used during the run per process (see bench.context.cpu_usage), when measured."""

    @property
    def per_second(self) -> float:
        """Items completed per second in the measured window."""
        return self.items / self.window_s if self.window_s else 0.0

    @property
    def clean(self) -> bool:
        """No call failed."""
        return not self.errors

    def health(self) -> str:
        """A sentence on failed calls (empty when clean), for a result's notes."""
        if not self.errors:
            return ""
        return f" UNCLEAN RUN: calls failed ({_counts(self.errors)}); first: {self.first_error}."

    def summary(self) -> dict[str, Any]:
        """The figures worth keeping in a result's details."""
        ordered = sorted(self.call_latencies_s)
        data: dict[str, Any] = {
            "callers": self.concurrency,
            "window_s": round(self.window_s, 2),
            "items": self.items,
            "calls": self.calls,
            "call_p50_ms": round(percentile(ordered, 0.50) * 1000, 2),
            "call_p99_ms": round(percentile(ordered, 0.99) * 1000, 2),
            "errors": dict(self.errors),
        }
        if self.first_error:
            data["first_error"] = self.first_error[:300]
        if self.cpu_cores is not None:
            data["cpu_cores"] = self.cpu_cores
        return data


async def closed_loop(
    work: Callable[[int], Awaitable[int]],
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float = 0.0,
    max_errors: int = 50,
) -> ThroughputRun:
    """Run ``concurrency`` callers, each calling ``work(caller)`` back to back until the time is up.

    ``work`` returns how many items the call completed. Only calls that finish inside the measured window
    (after ``warmup_s``, before ``warmup_s + duration_s``) are counted; calls in flight at either edge even
    out. A caller stops early after ``max_errors`` failures in all, so a broken service ends the run fast.
    """
    loop = asyncio.get_running_loop()
    run = ThroughputRun(concurrency=concurrency, window_s=duration_s, items=0, calls=0, call_latencies_s=[])
    window_start = loop.time() + warmup_s
    window_end = window_start + duration_s

    async def caller(index: int) -> None:
        while loop.time() < window_end and sum(run.errors.values()) < max_errors:
            began = loop.time()
            try:
                items = await work(index)
            except Exception as error:
                run.errors[error_name(error)] += 1
                if run.first_error is None:
                    run.first_error = f"{error_name(error)}: {_describe(error)}"
                await asyncio.sleep(0.05)
                continue
            finished = loop.time()
            if window_start <= finished <= window_end:
                run.items += items
                run.calls += 1
                run.call_latencies_s.append(finished - began)

    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    return run


def _counts(errors: Counter[str]) -> str:
    return ", ".join(f"{count:,} {name}" for name, count in errors.most_common())


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return str(error.details())
    return str(error)
