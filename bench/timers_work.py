"""The process of the `journey_timers` suite that works due jobs, and what it measures.

    python -m bench.timers_work MODE URL KIND EXPECTED TIMEOUT_S [profile]
        works the due jobs of KIND in the database at URL (SQLAlchemy URL) until EXPECTED jobs have fired or
        TIMEOUT_S passed; prints READY once it works (the suite then makes the jobs due), then one JSON line
        of figures. With `profile`, the run is profiled with cProfile
        and the JSON has the functions that cost the most time of their own ("profile").

Modes:
- `raw`: the baseline, the least a SKIP LOCKED worker can do on the same table: one asyncpg connection,
  per round one transaction of `SELECT … WHERE kind AND due_at <= now() ORDER BY due_at LIMIT 100 FOR UPDATE
  SKIP LOCKED`, then `DELETE` of those rows by key, `COMMIT`. No lease, no attempt count, no failure path.
- `worker`: omni_kit's JobWorker (one worker, the kind registered with its defaults and a trivial handler),
  its sessions from omni_kit.db's engine and session factory, as a service's Runtime makes them.
- `worker-write`: the same with a handler that writes one row per job (a journey run's step taken) into
  `journey_steps` in the job's transaction, in one statement per batch.

A job has fired when the transaction that ran it committed: lateness is that moment (the wall clock,
the same machine as the database's) minus its due time. The JSON line: fired, seconds (first to last
commit), per_second, lateness percentiles (s), worst_by_second (the latest job of each second), cpu_s of the process, peak_rss_mib, and when profiled the
top of the profile.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import io
import json
import pstats
import resource
import sys
import time
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from omni_kit.db import create_engine, session_factory
from omni_kit.scheduler import Job, JobWorker

_RAW_CLAIM = (
    "SELECT key, due_at, payload FROM scheduled_jobs WHERE kind = $1 AND due_at <= now() "
    "ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED"
)
_RAW_DELETE = "DELETE FROM scheduled_jobs WHERE kind = $1 AND key = ANY($2::text[])"
_STEP = sa.text(
    "INSERT INTO journey_steps (run_key, step, taken_at) "
    "SELECT k, 'wait', now() FROM unnest(CAST(:keys AS text[])) AS k"
)
BATCH = 100


class _Clock:
    """Commit times and due times of the jobs fired so far."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.lateness: list[float] = []
        self.first: float | None = None
        self.last = 0.0
        self.done = asyncio.Event()
        self.worst: dict[int, float] = {}
        """The latest job of each second since the first commit."""

    def fired(self, dues: Sequence[datetime]) -> None:
        now = time.time()
        if self.first is None:
            self.first = now
        self.last = now
        late = [now - due.timestamp() for due in dues]
        self.lateness.extend(late)
        second = int(now - (self.first or now))
        self.worst[second] = max(self.worst.get(second, 0.0), *late)
        if len(self.lateness) >= self.expected:
            self.done.set()


async def _raw(dsn: str, kind: str, expected: int, deadline: float, clock: _Clock) -> None:
    connection = await asyncpg.connect(dsn)
    _ready()
    try:
        idle = 0.0
        while len(clock.lateness) < expected and time.monotonic() < deadline:
            async with connection.transaction():
                rows = await connection.fetch(_RAW_CLAIM, kind, BATCH)
                if rows:
                    await connection.execute(_RAW_DELETE, kind, [r["key"] for r in rows])
            if rows:
                clock.fired([r["due_at"] for r in rows])
                idle = 0.0
            else:
                idle = min(0.05, idle + 0.001)
                await asyncio.sleep(idle)
    finally:
        await connection.close()


async def _worker(url: str, kind: str, expected: int, deadline: float, clock: _Clock, write: bool) -> None:
    engine = create_engine(url, application_name="bench-timers", pool_size=4)
    sessions = session_factory(engine)
    pending: list[datetime] = []

    @contextlib.asynccontextmanager
    async def transaction() -> AsyncIterator[AsyncSession]:
        async with sessions() as session, session.begin():
            yield session
        if pending:
            clock.fired(pending)
            pending.clear()

    async def step(session: AsyncSession, jobs: Sequence[Job]) -> None:
        if write:
            await session.execute(_STEP, {"keys": [job.key for job in jobs]})
        pending.extend(job.due_at for job in jobs)

    worker = JobWorker(transaction, poll_interval_s=0.05, name="bench")
    worker.register(kind, step)

    async def stop_when_done() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(clock.done.wait(), timeout=max(0.0, deadline - time.monotonic()))
        worker.stop()

    async with sessions() as session:
        await session.execute(sa.text("SELECT 1"))  # connected before the jobs are made due

    async def ready_once_running() -> None:
        await asyncio.sleep(0.2)  # the loop's first round has found nothing due
        _ready()

    try:
        await asyncio.gather(worker.run(), stop_when_done(), ready_once_running())
    finally:
        await engine.dispose()


def _ready() -> None:
    """Tell the suite the worker is up: it makes the jobs due now (a slow start is not lateness)."""
    print("READY", flush=True)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def work(mode: str, url: str, kind: str, expected: int, timeout_s: float) -> dict[str, Any]:
    """Work the due jobs of a kind in one of the modes; return the figures."""
    clock = _Clock(expected)
    deadline = time.monotonic() + timeout_s
    cpu_before = _cpu_s()
    if mode == "raw":
        dsn = url.replace("postgresql+asyncpg://", "postgresql://")
        await _raw(dsn, kind, expected, deadline, clock)
    elif mode in ("worker", "worker-write"):
        await _worker(url, kind, expected, deadline, clock, write=mode == "worker-write")
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    fired = len(clock.lateness)
    seconds = clock.last - (clock.first or clock.last)
    return {
        "mode": mode,
        "fired": fired,
        "expected": expected,
        "seconds": round(seconds, 3),
        "per_second": round(fired / seconds, 1) if seconds > 0 else None,
        "lateness_s": {
            name: None if (v := _percentile(clock.lateness, q)) is None else round(v, 4)
            for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
        },
        "worst_by_second": [
            round(clock.worst.get(n, 0.0), 3) for n in range(max(clock.worst, default=-1) + 1)
        ],
        "cpu_s": round(_cpu_s() - cpu_before, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _top(profiler: cProfile.Profile, count: int = 15) -> list[str]:
    """The functions with the most time of their own: "own s, cumulative s, calls, function"."""
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    for (path, line, name), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = path.rsplit("site-packages/", 1)[-1].rsplit("/omni_kit/", 1)[-1]
        rows.append((own, cumulative, calls, f"{where}:{line}({name})"))
    rows.sort(reverse=True)
    return [
        f"{own:.2f}s own, {cum:.2f}s cum, {calls} calls, {name}" for own, cum, calls, name in rows[:count]
    ]


def main(argv: list[str]) -> None:
    if len(argv) not in (5, 6):
        raise SystemExit(__doc__)
    mode, url, kind, expected, timeout_s = argv[0], argv[1], argv[2], int(argv[3]), float(argv[4])
    profiler = cProfile.Profile() if argv[5:] == ["profile"] else None
    if profiler:
        profiler.enable()
    figures = asyncio.run(work(mode, url, kind, expected, timeout_s))
    if profiler:
        profiler.disable()
        figures["profile"] = _top(profiler)
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
