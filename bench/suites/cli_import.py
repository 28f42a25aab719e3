"""`omni import events`: a file of shop events through the command, against the ingest measured in this run.

Baseline first: identity and profile on fresh databases, 4 callers sending BatchTrackEvents of 500-1,000
pre-encoded events back to back (profile_ingest's load, shorter). Then identity and profile again on fresh
databases, and `omni import events FILE` run as an operator runs it (its own process, default settings:
segments of 10,000 rows, 4 streams, messages of 1,000) on an NDJSON file of the same mix of events (1M rows;
50,000 with --quick). The figure is rows/s from the command's start to its exit: reading, parsing, building
and sending the events, and the checkpoints. Profile's database is then counted: every row must be an event.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from pathlib import Path

from bench.context import BenchContext, cpu_sample, cpu_usage, log
from bench.load import closed_loop
from bench.results import Baseline, Result, Target
from bench.workloads import ShopEvents
from omni.profile.v1 import profile_pb2

SUITE = "import"
CALLERS = 4
BATCH_MIN, BATCH_MAX = 500, 1000
SEED = 23
METHOD = "/omni.profile.v1.ProfileService/BatchTrackEvents"


def write_file(path: Path, rows: int) -> None:
    """An NDJSON file of `rows` shop events (other customers than the baseline's)."""
    events = ShopEvents(SEED + 1)
    with path.open("wb") as handle:
        for start in range(0, rows, 10_000):
            handle.write(b"".join(events.import_line() for _ in range(min(10_000, rows - start))))


async def run(ctx: BenchContext) -> list[Result]:
    """Measure the ingest baseline, then the import of a file, each on fresh services."""
    d = ctx.durations
    rows = 50_000 if ctx.quick else 1_000_000
    baseline_s = d.ingest / 2
    path = ctx.work_dir / "import-events.ndjson"
    started = time.monotonic()
    await asyncio.to_thread(write_file, path, rows)
    log(
        f"import: wrote {rows:,} rows ({path.stat().st_size / 1e6:,.0f} MB) in {time.monotonic() - started:.1f} s"
    )

    namespace = ctx.namespace()
    identity_db, profile_db = ctx.make_database("bench_imp_base_id"), ctx.make_database("bench_imp_base_pr")
    events = ShopEvents(SEED)
    rng = random.Random(SEED)
    async with ctx.service("identity", ctx.service_settings(identity_db, namespace)) as identity:
        settings = ctx.service_settings(profile_db, namespace, identity_target=identity.target)
        async with ctx.service("profile", settings) as profile, ctx.channel(profile.target) as channel:
            track = channel.unary_unary(
                METHOD, response_deserializer=profile_pb2.BatchTrackEventsResponse.FromString
            )

            async def call(_: int) -> int:
                size = rng.randint(BATCH_MIN, BATCH_MAX)
                await track(events.batch_wire(size), timeout=60.0)
                return size

            ingest = await closed_loop(call, concurrency=CALLERS, duration_s=baseline_s, warmup_s=d.warmup)
    log(f"import baseline: BatchTrackEvents {ingest.per_second:,.0f} events/s")

    namespace = ctx.namespace()
    identity_db, profile_db = ctx.make_database("bench_imp_id"), ctx.make_database("bench_imp_pr")
    async with ctx.service("identity", ctx.service_settings(identity_db, namespace)) as identity:
        settings = ctx.service_settings(profile_db, namespace, identity_target=identity.target)
        async with ctx.service("profile", settings) as profile:
            env = dict(os.environ)
            env["OMNI_CLI_PROFILE_TARGET"] = profile.target
            env["OMNI_CLI_IDENTITY_TARGET"] = identity.target
            output = ctx.work_dir / "import-command.log"
            children = {"identity": identity, "profile": profile}
            before = cpu_sample(ctx, children)
            started = time.monotonic()
            with output.open("wb") as sink:
                command = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "omni_kit.cli",
                    "import",
                    "events",
                    str(path),
                    "--source",
                    "bench",
                    env=env,
                    stdout=sink,
                    stderr=sink,
                )
                code = await command.wait()
            elapsed = time.monotonic() - started
            cpu = cpu_usage(before, cpu_sample(ctx, children))
            if code != 0:
                raise RuntimeError(f"omni import exited {code}: {output.read_text()[-2000:]}")
            async with ctx.connect(profile_db) as connection:
                stored = int(await connection.fetchval("SELECT count(*) FROM events"))
    rate = rows / elapsed
    log(
        f"import: {rows:,} rows in {elapsed:,.1f} s = {rate:,.0f} rows/s; {stored:,} events stored; cpu {cpu}"
    )
    if stored != rows:
        raise RuntimeError(f"{stored:,} events stored for {rows:,} rows")
    return [
        Result(
            SUITE,
            f"omni import events, {rows:,}-row NDJSON file (start to exit)",
            rate,
            "rows/s",
            higher_is_better=True,
            baselines=[
                Baseline(
                    f"BatchTrackEvents end to end ({CALLERS} callers, {baseline_s:g} s)",
                    ingest.per_second,
                    "events/s",
                )
            ],
            targets=[Target(">=", 0.80, on="ratio")],
            notes="The command in its own process with its defaults (segments of 10,000 rows on 4 "
            "StreamTrackEvents calls, messages of 1,000, a checkpoint per segment, ids derived from the rows); "
            "the mix of profile_ingest (page/product views, cart lines, orders on web/app/store, 50,000 "
            "customers). Baseline: profile_ingest's load on other fresh services in the same run. "
            f"Every row stored as one event ({stored:,})." + ingest.health(),
            details={"rows": rows, "seconds": round(elapsed, 1), "events_stored": stored, "cpu_cores": cpu}
            | {"baseline": ingest.summary()},
            clean=ingest.clean,
        )
    ]
