"""The process of the `journey_steps` suite that takes due journey steps with decisioning's real Engine.

    python -m bench.journey_work URL EXPECTED TIMEOUT_S [profile]
        runs omni_kit's JobWorker with decisioning's journey Engine registered for "journey.step" as
        decisioning's main registers it (batches of 100, a 60 s lease) on the database at URL (SQLAlchemy URL,
        decisioning's schema) until EXPECTED jobs have fired or TIMEOUT_S passed; prints READY once it works,
        then one JSON line of figures (those of bench.timers_work, which measures the same way).

The Engine is built as main builds it (Store, Repository, Publisher over decisioning's outbox, no contact
caps); the steps it takes need neither profile nor a decider (the suite's journey has none of their steps).
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from bench.timers_work import _Clock, _cpu_s, _percentile, _ready, _top
from omni_decisioning.events import Publisher
from omni_decisioning.orchestration.engine import STEP_JOB, Engine
from omni_decisioning.orchestration.store import Store
from omni_decisioning.repository import Repository
from omni_kit.bus.outbox import Outbox
from omni_kit.db import create_engine, session_factory
from omni_kit.scheduler import Job, JobWorker

BATCH = 100
"""As decisioning's main registers the step job."""


async def work(url: str, expected: int, timeout_s: float) -> dict[str, Any]:
    """Take due steps until `expected` jobs fired; return the figures."""
    import resource

    clock = _Clock(expected)
    deadline = time.monotonic() + timeout_s
    cpu_before = _cpu_s()
    database = create_engine(url, application_name="bench-journey-steps", pool_size=4)
    sessions = session_factory(database)
    engine = Engine(Store(), Repository(), Publisher(Outbox("decisioning")))
    pending: list[Any] = []
    taken: dict[str, int] = {"runs": 0}

    @contextlib.asynccontextmanager
    async def transaction() -> AsyncIterator[AsyncSession]:
        async with sessions() as session, session.begin():
            yield session
        if pending:
            clock.fired(pending)
            pending.clear()

    async def steps(session: AsyncSession, jobs: Sequence[Job]) -> None:
        pending.clear()  # a batch run again one by one counts once
        await engine.run_steps(session, jobs)
        pending.extend(job.due_at for job in jobs)

    worker = JobWorker(transaction, poll_interval_s=0.05, name="bench-journeys")
    worker.register(STEP_JOB, steps, batch_size=BATCH)
    # Warm the spec cache and the connections, as a running service has them.
    async with sessions() as session:
        await session.execute(sa.text("SELECT 1"))

    async def stop_when_done() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(clock.done.wait(), timeout=max(0.0, deadline - time.monotonic()))
        worker.stop()

    async def ready_once_running() -> None:
        await asyncio.sleep(0.2)
        _ready()

    try:
        await asyncio.gather(worker.run(), stop_when_done(), ready_once_running())
    finally:
        await database.dispose()
    fired = len(clock.lateness)
    seconds = clock.last - (clock.first or clock.last)
    taken["runs"] = fired
    return {
        "mode": "engine",
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
        "failed_jobs": worker.failed,
        "retried_jobs": worker.retried,
        "cpu_s": round(_cpu_s() - cpu_before, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv: list[str]) -> None:
    if len(argv) not in (3, 4):
        raise SystemExit(__doc__)
    url, expected, timeout_s = argv[0], int(argv[1]), float(argv[2])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    profiler = cProfile.Profile() if argv[3:] == ["profile"] else None
    if profiler:
        profiler.enable()
    figures = asyncio.run(work(url, expected, timeout_s))
    if profiler:
        profiler.disable()
        figures["profile"] = _top(profiler, 25)
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
