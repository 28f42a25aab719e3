"""Journey steps: due steps taken per second by decisioning's real journey Engine with a million runs waiting,
and how late, against the durable timers underneath (journey_timers' raw loop and JobWorker) in the same run.

A database with decisioning's schema (its migrations) holds one published journey

    wait-1 (14 days) → send (email, template "cart-reminder") → wait-2 (3 days) → done (exit)

and RUNS runs of it seeded by COPY, each waiting with its job ("journey.step", keyed by the run) due in 1-28
days: the first EXITS of them waiting for `done` (a cheap step: the run completes), the rest for `send` (a
message: the person's contact verdict read, the contact logged, decisioning.send_requested staged in the outbox,
then wait-2 taken and its job scheduled: two steps, two step records). The persons of the runs made due have an
email marketing verdict (COPY into contact_verdicts), so every send goes.

For each measurement the process working the jobs starts (bench/journey_work.py: JobWorker with Engine.run_steps
registered as decisioning's main registers it); once it is up a fresh slice of waiting runs' jobs is made due:

- backlog: BACKLOG jobs due at once; due steps fired per second from the first commit to the last.
- open loop: jobs due at RATE a second for OPEN_S seconds; lateness (commit minus due time), percentiles.

The baselines are journey_timers' `raw` loop and `worker-write` (JobWorker with a handler writing one row per
job) on the same scheduled_jobs table, the same way. A last, smaller backlog of message steps runs under
cProfile (details["profile"]).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2

from bench.children import REPO
from bench.context import BenchContext, Database, cpu_sample, cpu_usage, log
from bench.results import Baseline, Result, Target
from bench.suites import journey_timers
from omni.common.v1 import common_pb2
from omni.decisioning.v1 import decisioning_pb2 as d
from omni_decisioning.main import MIGRATIONS
from omni_decisioning.orchestration import spec as specs
from omni_decisioning.orchestration.engine import STEP_JOB
from omni_kit.db import create_engine, migrate

SUITE = "journey_steps"
RATE = 2000.0
TARGET_P99_S = 1.0
HEAD_START_S = 8.0
"""As journey_timers: the UPDATE making the slice due and the worker's next look are done before the first is due."""
JOURNEY_ID = uuid.UUID("00000000-0000-7000-8000-00000000a11e")
_PERSON_BASE = 1 << 64

_MAKE_DUE = (
    "UPDATE scheduled_jobs SET due_at = $1::timestamptz + "
    "make_interval(secs => (('x' || right(key, 12))::bit(48)::bigint - $2::bigint) / $3::float8) "
    "WHERE kind = $4 AND key >= $5 AND key < $6"
)


def _run_id(n: int) -> uuid.UUID:
    return uuid.UUID(int=n)


def _person_id(n: int) -> uuid.UUID:
    return uuid.UUID(int=_PERSON_BASE + n)


def _spec() -> d.JourneySpec:
    def days(n: int) -> duration_pb2.Duration:
        return duration_pb2.Duration(seconds=n * 86_400)

    return d.JourneySpec(
        entry=d.JourneyEntry(api=d.ApiEntryTrigger()),
        entry_rule=d.EntryRule(frequency=d.EntryRule.FREQUENCY_EVERY_TIME),
        steps=[
            d.JourneyStep(id="wait-1", wait=d.WaitStep(duration=days(14), next="send")),
            d.JourneyStep(
                id="send",
                message=d.MessageStep(
                    channels=[common_pb2.CHANNEL_EMAIL], template_id="cart-reminder", next="wait-2"
                ),
            ),
            d.JourneyStep(id="wait-2", wait=d.WaitStep(duration=days(3), next="done")),
            d.JourneyStep(id="done", exit=d.ExitStep()),
        ],
    )


async def _seed(ctx: BenchContext, database: Database, runs: int, exits: int, verdicts: range) -> None:
    engine = create_engine(database.url, application_name="bench-journey-steps-migrate")
    try:
        await migrate(engine, MIGRATIONS)
    finally:
        await engine.dispose()
    now = datetime.now(UTC)
    spec = json.dumps(specs.to_json(_spec()))
    async with ctx.connect(database) as connection:
        await connection.execute(journey_timers._STEPS)
        await connection.execute(
            "INSERT INTO journeys (id, name, create_time, update_time, multi_step, state, version, draft) "
            "VALUES ($1, 'abandoned cart', $2, $2, true, 'published', 1, $3::jsonb)",
            JOURNEY_ID,
            now,
            spec,
        )
        await connection.execute(
            "INSERT INTO journey_versions (journey_id, version, spec, publish_time) VALUES ($1, 1, $2::jsonb, $3)",
            JOURNEY_ID,
            spec,
            now,
        )
        started = time.monotonic()

        def step(n: int) -> str:
            return "done" if n < exits else "send"

        def due(n: int) -> datetime:
            return now + timedelta(days=1, seconds=(n * 7919) % (27 * 86_400))

        visits = {
            "done": json.dumps({"wait-1": 1, "send": 1, "wait-2": 1}),
            "send": json.dumps({"wait-1": 1}),
        }
        await connection.copy_records_to_table(
            "journey_flow_runs",
            records=(
                (
                    _run_id(n),
                    JOURNEY_ID,
                    1,
                    _person_id(n),
                    "",
                    f"bench:{n}",
                    "active",
                    step(n),
                    due(n),
                    visits[step(n)],
                    '{"trigger": {"cart": "c-1"}}',
                    now,
                )
                for n in range(runs)
            ),
            columns=(
                "id",
                "journey_id",
                "version",
                "person_id",
                "key",
                "trigger_id",
                "state",
                "current_step",
                "due_at",
                "visits",
                "data",
                "start_time",
            ),
        )
        await connection.copy_records_to_table(
            "scheduled_jobs",
            records=((STEP_JOB, str(_run_id(n)), due(n), json.dumps({"step": step(n)})) for n in range(runs)),
            columns=("kind", "key", "due_at", "payload"),
        )
        allowed = json.dumps(
            [{"channel": "email", "purpose": "marketing", "allowed": True, "reason": "consent_granted"}]
        )
        await connection.copy_records_to_table(
            "contact_verdicts",
            records=((_person_id(n), 1, allowed, now) for n in verdicts),
            columns=("person_id", "version", "verdicts", "decide_time"),
        )
        for table in ("journey_flow_runs", "scheduled_jobs", "contact_verdicts"):
            await connection.execute(f"ANALYZE {table}")
        await connection.execute("CHECKPOINT")
        log(
            f"journey_steps: {runs:,} waiting runs and their jobs seeded by COPY in {time.monotonic() - started:.1f}s"
        )


async def _engine(
    ctx: BenchContext,
    database: Database,
    first: int,
    count: int,
    rate: float | None,
    what: str,
    *,
    profile: bool = False,
    timeout_s: float = 240.0,
) -> dict[str, Any]:
    """Start the engine's process; once up make runs first..first+count due (at once, or `rate` a second)."""
    end = first + count
    span_s = count / rate if rate else 0.0
    before = cpu_sample(ctx)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.journey_work",
        database.url,
        str(count),
        str(timeout_s + span_s),
        *(["profile"] if profile else []),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), timeout=60)).decode()
    waiting = 0
    if line.strip() == "READY":
        async with ctx.connect(database) as connection:
            waiting = await connection.fetchval(
                "SELECT count(*) FROM scheduled_jobs WHERE kind = $1 AND due_at > now() + interval '1 hour'",
                STEP_JOB,
            )
            start = datetime.now(UTC) + timedelta(seconds=HEAD_START_S if rate else -1)
            await connection.execute(
                _MAKE_DUE, start, first, rate or 1e12, STEP_JOB, str(_run_id(first)), str(_run_id(end))
            )
    out, err = await process.communicate()
    async with ctx.connect(database) as connection:
        # What did not fire in time waits again, so it is not fired (late) in the next measurement.
        await connection.execute(
            "UPDATE scheduled_jobs SET due_at = now() + interval '30 days' "
            "WHERE kind = $1 AND key >= $2 AND key < $3 AND due_at <= now() + interval '1 hour'",
            STEP_JOB,
            str(_run_id(first)),
            str(_run_id(end)),
        )
    if process.returncode != 0 or line.strip() != "READY":
        raise RuntimeError(f"journey worker failed: {line}{err.decode()[-2000:]}")
    figures: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    warnings = [w for w in err.decode().splitlines() if w.startswith(("WARNING", "ERROR")) or "failed" in w]
    figures["warnings"] = {"count": len(warnings), "first": warnings[:3]}
    figures["cpu_cores"] = cpu_usage(before, cpu_sample(ctx))
    figures["waiting"] = int(waiting)
    figures["rate"] = rate
    lateness = figures["lateness_s"]
    log(
        f"journey_steps engine {what} {'backlog' if rate is None else f'at {rate:,.0f}/s'}: "
        f"{figures['fired']:,}/{count:,} fired, {figures['per_second'] or 0:,.0f}/s, lateness p50 "
        f"{lateness['p50']}s p99 {lateness['p99']}s, {figures['cpu_s']:.1f}s CPU ({waiting:,} waiting); "
        f"warnings: {figures['warnings']}"
    )
    return figures


async def run(ctx: BenchContext) -> list[Result]:
    """Seed, then backlog and open-loop runs of the baselines and of the engine (exit steps, message steps)."""
    runs = 100_000 if ctx.quick else 1_000_000
    backlog = 5_000 if ctx.quick else 20_000
    open_s = 5 if ctx.quick else 10
    open_loop = int(RATE * open_s)
    profiled = backlog // 4
    exits = backlog + open_loop
    sends = backlog + open_loop + profiled
    database = ctx.make_database("bench_journey_steps")
    await _seed(ctx, database, runs, exits, range(exits, exits + sends))
    # The baselines' jobs (journey_timers' keys, never an engine's run) in the same table.
    await journey_timers._seed(ctx, database, 2 * (backlog + open_loop))
    slices = journey_timers._Slices()
    base = {
        m: await journey_timers._measure(ctx, database, slices, m, backlog, None)
        for m in ("raw", "worker-write")
    }
    base_paced = {
        m: await journey_timers._measure(ctx, database, slices, m, open_loop, RATE)
        for m in ("raw", "worker-write")
    }
    exit_backlog = await _engine(ctx, database, 0, backlog, None, "exit")
    exit_paced = await _engine(ctx, database, backlog, open_loop, RATE, "exit")
    send_backlog = await _engine(ctx, database, exits, backlog, None, "message")
    send_paced = await _engine(ctx, database, exits + backlog, open_loop, RATE, "message")
    profile = await _engine(
        ctx, database, exits + backlog + open_loop, profiled, None, "message (cProfile)", profile=True
    )

    setup = (
        f"{runs:,} waiting runs of one published journey (and their jobs) seeded by COPY, due in 1-28 days; "
        "decisioning's real Engine (Engine.run_steps under JobWorker, batches of 100, as main registers it) "
        "in its own process; durable PostgreSQL."
    )
    kinds = {
        "exit": "the due step an exit (the run completes): one step per job",
        "message": "the due step an email (verdict read, contact logged, send requested in the outbox) "
        "then a 3-day wait scheduled: two steps per job",
    }
    results: list[Result] = []
    for what, figures in (("exit", exit_backlog), ("message", send_backlog)):
        results.append(
            Result(
                SUITE,
                f"due journey steps fired/s, Engine, {what} step (backlog of {backlog:,} due)",
                figures["per_second"],
                "jobs/s",
                higher_is_better=True,
                baselines=[
                    Baseline(
                        "raw SKIP LOCKED + DELETE loop, same table", base["raw"]["per_second"] or 0, "jobs/s"
                    ),
                    Baseline(
                        "JobWorker writing one row per job (journey_timers' worker-write)",
                        base["worker-write"]["per_second"] or 0,
                        "jobs/s",
                    ),
                ],
                targets=[Target(">=", RATE)],
                notes=f"{backlog:,} runs' jobs made due at once; first to last commit; {kinds[what]}. "
                + setup,
                details={"engine": figures, "baselines": base, "cpu_cores": figures["cpu_cores"]},
                clean=figures["fired"] == backlog and not figures["failed_jobs"],
            )
        )
    for what, figures in (("exit", exit_paced), ("message", send_paced)):
        for name in ("p50", "p99"):
            results.append(
                Result(
                    SUITE,
                    f"lateness {name} at {RATE:,.0f} due steps/s, Engine, {what} step",
                    figures["lateness_s"][name],
                    "s",
                    higher_is_better=False,
                    baselines=[
                        Baseline(
                            f"raw loop lateness {name} at the same rate",
                            base_paced["raw"]["lateness_s"][name] or 0,
                            "s",
                        ),
                        Baseline(
                            f"JobWorker writing one row per job, lateness {name} at the same rate",
                            base_paced["worker-write"]["lateness_s"][name] or 0,
                            "s",
                        ),
                    ],
                    targets=[Target("<", TARGET_P99_S)] if name == "p99" else [],
                    notes=f"{open_loop:,} runs' jobs due {RATE:,.0f} a second (open loop); {kinds[what]}; "
                    f"fired {figures['fired']:,} at {figures['per_second']}/s. " + setup,
                    details={"engine": figures, "baselines": base_paced, "cpu_cores": figures["cpu_cores"]}
                    if name == "p99"
                    else {"cpu_cores": figures["cpu_cores"]},
                    clean=figures["fired"] == open_loop and not figures["failed_jobs"],
                )
            )
    results.append(
        Result(
            SUITE,
            "due journey steps fired/s under cProfile, Engine, message step",
            profile["per_second"],
            "jobs/s",
            higher_is_better=True,
            notes="A smaller backlog of message steps, profiled with cProfile (slower for it): where the "
            "engine's process spends its time, in details.profile (own time, cumulative, calls, function).",
            details={"profile": profile.get("profile", []), "cpu_s": profile["cpu_s"]},
        )
    )
    return results
