"""Durable timers: due jobs of omni_kit's scheduler fired per second with a million jobs waiting, and how late.

A database with omni_kit's scheduled_jobs table (as every service's migrations create it) is seeded by COPY
with WAITING jobs of one kind ("journey.step", as a journey's waits would be), due in the next weeks. For each
measurement the process that works the jobs starts (bench/timers_work.py, its own process as a service's
would be); once it is up, a fresh slice of the waiting jobs is made due (UPDATE of their due time), so its
start-up is not counted as lateness:

- backlog: BACKLOG jobs due at once; fired per second from the first commit to the last (the capacity).
- open loop: jobs due at RATE per second for a while (each one's due time start + i/RATE); lateness of each
  (commit of its run minus its due time), percentiles. A worker that keeps up fires at RATE.

Each in three ways: `raw` (the baseline: a bare asyncpg `SELECT … FOR UPDATE SKIP LOCKED` + `DELETE` loop
over the same table, batches of 100), `worker` (JobWorker, trivial handler), `worker-write` (JobWorker with a
handler writing one row per job in the job's transaction, as a journey step records itself). The target
(≥ 2,000 steps/s with p99 lateness ≤ 1 s) holds when the open-loop run at 2,000/s keeps up with p99 under
a second and the backlog rate is over 2,000/s. A last, smaller backlog run of `worker-write` under cProfile
gives where the worker's time goes (details["profile"]).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import create_async_engine

from bench.children import REPO
from bench.context import BenchContext, Database, cpu_sample, cpu_usage, log
from bench.results import Baseline, Result, Target
from omni_kit.scheduler import jobs_metadata

SUITE = "journey_timers"
KIND = "journey.step"
RATE = 2000.0
TARGET_P99_S = 1.0
HEAD_START_S = 8.0
"""How far ahead of the UPDATE making the open loop's jobs due the first is due: the UPDATE (40,000 rows) and
the worker's next look (it polls at most a second apart, as it does for jobs another process scheduled; a
service's own commits wake it at once) must both be done by then, or the worker starts behind. With 3 s,
an UPDATE slowed down by a busy machine made every job of a run a second late."""

_STEPS = (
    "CREATE TABLE journey_steps (run_key text NOT NULL, step text NOT NULL, taken_at timestamptz NOT NULL, "
    "id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY)"
)
_MAKE_DUE = (
    "UPDATE scheduled_jobs SET due_at = $1::timestamptz + make_interval(secs => (substr(key, 5)::int - $2::int) / $3::float8) "
    "WHERE kind = $4 AND key >= $5 AND key < $6"
)


def _key(n: int) -> str:
    return f"run-{n:08d}"


class _Slices:
    """Hands out disjoint ranges of the seeded jobs' keys, so each measurement has jobs nobody fired yet."""

    def __init__(self) -> None:
        self.next = 0

    def take(self, count: int) -> tuple[int, int]:
        start, self.next = self.next, self.next + count
        return start, self.next


async def _create(database: Database) -> None:
    engine = create_async_engine(database.url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(jobs_metadata.create_all)
    finally:
        await engine.dispose()


async def _seed(ctx: BenchContext, database: Database, count: int) -> None:
    now = datetime.now(UTC)
    # Waiting a day to four weeks, spread; the payload a journey step would carry.
    records = (
        (
            KIND,
            _key(n),
            now + timedelta(days=1, seconds=(n * 7919) % (27 * 86_400)),
            json.dumps({"journey": "abandoned-cart", "version": 3, "step": "sms-if-not-bought"}),
        )
        for n in range(count)
    )
    async with ctx.connect(database) as connection:
        started = time.monotonic()
        await connection.copy_records_to_table(
            "scheduled_jobs", records=records, columns=("kind", "key", "due_at", "payload")
        )
        await connection.execute("ANALYZE scheduled_jobs")
        await connection.execute("CHECKPOINT")
        log(f"journey_timers: {count:,} waiting jobs seeded by COPY in {time.monotonic() - started:.1f}s")


async def _measure(
    ctx: BenchContext,
    database: Database,
    slices: _Slices,
    mode: str,
    count: int,
    rate: float | None,
    *,
    profile: bool = False,
) -> dict[str, Any]:
    """Start a child process working due jobs in `mode`; once it is up make `count` seeded jobs due (all at
    once when rate is None, else `rate` a second from HEAD_START_S ahead); return its figures with the cores used."""
    first, end = slices.take(count)
    span_s = count / rate if rate else 0.0
    before = cpu_sample(ctx)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.timers_work",
        mode,
        database.url,
        KIND,
        str(count),
        str(60 + span_s + 120),
        *(["profile"] if profile else []),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), timeout=60)).decode()
    if line.strip() == "READY":
        # The worker polls at most a second apart: it has seen the jobs before the first is due.
        async with ctx.connect(database) as connection:
            waiting = await connection.fetchval(
                "SELECT count(*) FROM scheduled_jobs WHERE due_at > now() + interval '1 hour'"
            )
            start = datetime.now(UTC) + timedelta(seconds=HEAD_START_S if rate else -1)
            await connection.execute(_MAKE_DUE, start, first, rate or 1e12, KIND, _key(first), _key(end))
    out, err = await process.communicate()
    if process.returncode != 0 or line.strip() != "READY":
        raise RuntimeError(f"timers worker {mode} failed: {line}{err.decode()[-2000:]}")
    figures: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    figures["cpu_cores"] = cpu_usage(before, cpu_sample(ctx))
    figures["waiting"] = int(waiting)
    figures["rate"] = rate
    lateness = figures["lateness_s"]
    log(
        f"journey_timers {mode} {'backlog' if rate is None else f'at {rate:,.0f}/s'}: {figures['fired']:,} fired, "
        f"{figures['per_second'] or 0:,.0f}/s, lateness p50 {lateness['p50']}s p99 {lateness['p99']}s, "
        f"{figures['cpu_s']:.1f}s CPU, peak {figures['peak_rss_mib']} MiB ({waiting:,} waiting)"
    )
    return figures


async def run(ctx: BenchContext) -> list[Result]:
    """Seed, then backlog and open-loop runs of the raw loop and the worker (trivial and writing handler)."""
    waiting = 100_000 if ctx.quick else 1_000_000
    backlog = 10_000 if ctx.quick else 60_000
    open_loop = int(RATE * (5 if ctx.quick else 20))
    modes = ("raw", "worker", "worker-write")
    database = ctx.make_database("bench_journey_timers")
    await _create(database)
    async with ctx.connect(database) as connection:
        await connection.execute(_STEPS)
    # Enough that a million are still waiting after every slice made due has been fired.
    await _seed(ctx, database, waiting + len(modes) * (backlog + open_loop) + backlog // 2)
    slices = _Slices()
    drained = {m: await _measure(ctx, database, slices, m, backlog, None) for m in modes}
    paced = {m: await _measure(ctx, database, slices, m, open_loop, RATE) for m in modes}
    profiled = await _measure(ctx, database, slices, "worker-write", backlog // 2, None, profile=True)

    raw_rate = Baseline(
        "raw SKIP LOCKED + DELETE loop, same table, batches of 100",
        drained["raw"]["per_second"] or 0,
        "jobs/s",
    )
    results: list[Result] = []
    setup = (
        f"scheduled_jobs seeded by COPY with about {waiting:,} jobs waiting (due in 1-28 days); durable "
        "PostgreSQL; the worker in its own process with omni_kit.db's engine."
    )
    for mode, what in (("worker", "trivial handler"), ("worker-write", "handler writing one row per job")):
        figures = drained[mode]
        results.append(
            Result(
                SUITE,
                f"due jobs fired/s, JobWorker, {what} (backlog of {backlog:,} due)",
                figures["per_second"],
                "jobs/s",
                higher_is_better=True,
                baselines=[raw_rate],
                targets=[Target(">=", RATE)],
                notes=f"{backlog:,} jobs made due at once; first to last commit. " + setup,
                details={"worker": figures, "raw": drained["raw"], "cpu_cores": figures["cpu_cores"]},
                clean=figures["fired"] == backlog,
            )
        )
    for mode, what in (("worker", "trivial handler"), ("worker-write", "handler writing one row per job")):
        figures = paced[mode]
        raw = paced["raw"]["lateness_s"]
        kept_up = figures["fired"] == open_loop
        for name in ("p50", "p99"):
            results.append(
                Result(
                    SUITE,
                    f"lateness {name} at {RATE:,.0f} due jobs/s, JobWorker, {what}",
                    figures["lateness_s"][name],
                    "s",
                    higher_is_better=False,
                    baselines=[Baseline(f"raw loop lateness {name} at the same rate", raw[name] or 0, "s")],
                    targets=[Target("<", TARGET_P99_S)] if name == "p99" else [],
                    notes=f"{open_loop:,} jobs due {RATE:,.0f} a second (open loop); lateness = commit of the "
                    f"job's run minus its due time; fired {figures['fired']:,} at {figures['per_second']}/s. "
                    + setup,
                    details={"worker": figures, "raw": paced["raw"], "cpu_cores": figures["cpu_cores"]}
                    if name == "p99"
                    else {"cpu_cores": figures["cpu_cores"]},
                    clean=kept_up,
                )
            )
    results.append(
        Result(
            SUITE,
            "JobWorker process peak memory",
            max(f["peak_rss_mib"] for m in ("worker", "worker-write") for f in (drained[m], paced[m])),
            "MiB",
            higher_is_better=False,
            baselines=[
                Baseline(
                    "raw loop process",
                    max(drained["raw"]["peak_rss_mib"], paced["raw"]["peak_rss_mib"]),
                    "MiB",
                )
            ],
            notes="Peak resident memory (ru_maxrss) of the worker's process over its backlog and open-loop runs.",
        )
    )
    results.append(
        Result(
            SUITE,
            "due jobs fired/s under cProfile, JobWorker, handler writing one row per job",
            profiled["per_second"],
            "jobs/s",
            higher_is_better=True,
            notes="The same backlog run, smaller, profiled with cProfile (slower for it): where the worker's "
            "process spends its time, in details.profile (own time, cumulative, calls, function).",
            details={"profile": profiled.get("profile", []), "cpu_s": profiled["cpu_s"]},
        )
    )
    return results
