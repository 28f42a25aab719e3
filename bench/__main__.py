"""``python -m bench`` (``make bench``): run the benchmark suites and write bench/results/.

    python -m bench                  full run (about 6-8 minutes), writes bench/results/latest.{json,md}
    python -m bench --quick          smoke run (about a minute), writes latest-quick.{json,md}
    python -m bench --suite decide   one suite (repeatable), writes latest-<suites>.{json,md}

One PostgreSQL (durable: fsync and synchronous commit on, as in production) and one NATS JetStream server
are started in a temporary directory for the whole run; each suite gets fresh databases and its own event
namespace, runs the services under test in child processes and drives them from this process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench.context import BenchContext, Durations, cpu_sample_machine, log
from bench.results import Result, failed, machine_info, table, write_results
from bench.suites import SUITES
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres
from omni_kit.embedded.nats import nats_server_binary

REPO = Path(__file__).resolve().parent.parent
SUITE_TIMEOUT_S = 900.0
"""A suite still running after this is failed (gateway_send starts 10 sender processes, each with a warm-up;
on a busy 2-core machine their start-up alone takes minutes)."""
SUITE_TIMEOUTS_S = {"import": 3600.0, "outcome_reports": 900.0}
"""Suites that need longer: the import suite sends a 1M-row file through the command; outcome_reports seeds
10M outcome events before measuring."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run (about a minute)")
    parser.add_argument(
        "--suite", action="append", choices=sorted(SUITES), help="run only this suite (repeatable)"
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench" / "results", help="directory for the results files"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=None,
        metavar="SECONDS",
        help="first wait up to SECONDS for the machine to be quiet, others using under 0.3 cores "
        "(default: 60 for a full run, 0 for --quick and --suite)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen suites; exit 1 if a suite failed to run (missed targets are not failures)."""
    args = parse_args(argv)
    names = [name for name in SUITES if not args.suite or name in args.suite]
    stem = (
        "latest"
        if not args.quick and not args.suite
        else "latest-" + "-".join((["quick"] if args.quick else []) + (names if args.suite else []))
    )
    started = time.monotonic()
    durations = Durations.for_mode(args.quick)
    full = not args.quick and not args.suite
    busy = _wait_quiet(args.wait_quiet if args.wait_quiet is not None else (60.0 if full else 0.0))
    machine = machine_info(REPO)
    machine["busy_cores_before_start"] = busy
    work_dir = Path(tempfile.mkdtemp(prefix="omni-bench-"))
    postgres = EmbeddedPostgres(work_dir / "postgres", durable=True)
    nats = EmbeddedNats(work_dir / "nats")
    results: list[Result] = []
    try:
        log(f"starting PostgreSQL and NATS in {work_dir}")
        postgres.start()
        nats.start()
        machine["postgres"] = postgres.psql("SELECT version()").split(",")[0].strip()
        machine["nats"] = _nats_version()
        ctx = BenchContext(
            postgres=postgres,
            nats=nats,
            work_dir=work_dir,
            quick=args.quick,
            durations=durations,
        )
        results = asyncio.run(_run_suites(ctx, names))
        ctx.drop_databases()
    finally:
        nats.stop()
        postgres.stop()
        if args.keep:
            log(f"kept {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    run: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "suites": names,
        "elapsed_s": round(time.monotonic() - started),
        "setup": "PostgreSQL durable (fsync and synchronous_commit on); services in their own processes "
        "with default settings; load generated from the parent process; all traffic on 127.0.0.1.",
        "durations_s": durations.__dict__,
    }
    json_path, md_path = write_results(args.out, stem, run=run, machine=machine, results=results)
    print(table(results))
    print(
        f"\nwritten: {json_path.relative_to(REPO) if json_path.is_relative_to(REPO) else json_path}, "
        f"{md_path.name}"
    )
    return 1 if any(r.error for r in results) else 0


async def _run_suites(ctx: BenchContext, names: list[str]) -> list[Result]:
    results: list[Result] = []
    for name in names:
        log(f"suite {name}")
        began = time.monotonic()
        ctx.service_errors.clear()
        try:
            suite_results = await asyncio.wait_for(
                SUITES[name](ctx), timeout=SUITE_TIMEOUTS_S.get(name, SUITE_TIMEOUT_S)
            )
        except Exception as error:
            traceback.print_exc()
            message = f"{type(error).__name__}: {error}".strip()
            suite_results = [failed(name, "suite did not complete", "", message[:2000])]
        if ctx.service_errors:
            # What the services logged as errors explains failed calls; it goes with the suite's first figure.
            suite_results[0].details["service_log_errors"] = dict(ctx.service_errors)
            for service, records in ctx.service_errors.items():
                log(f"{service} logged errors during {name}:\n" + "\n".join(records))
        results += suite_results
        log(f"suite {name} took {time.monotonic() - began:.0f} s")
        settled = await asyncio.to_thread(_settle, ctx)
        log(f"PostgreSQL settled in {settled:.1f} s after {name}")
    return results


def _settle(ctx: BenchContext, limit_s: float = 60.0) -> float:
    """Leave PostgreSQL as the next suite should find it: the suite's databases dropped, its dirty pages
    written (CHECKPOINT) and no vacuum of its tables still running; return the seconds it took.

    Each suite measures its own services on fresh databases; the writes of the one before (the ingest suite
    leaves hundreds of thousands of rows) would otherwise be flushed and vacuumed during the next suite's
    measurement and counted against it.
    """
    began = time.monotonic()
    ctx.drop_databases()
    ctx.postgres.psql("CHECKPOINT")
    while time.monotonic() - began < limit_s:
        busy = ctx.postgres.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
        ).strip()
        if busy == "0":
            break
        time.sleep(0.5)
    return time.monotonic() - began


def _wait_quiet(limit_s: float, window_s: float = 3.0, quiet_cores: float = 0.3) -> float:
    """Measure how many cores the machine uses before we start; wait up to ``limit_s`` for it to be quiet."""
    deadline = time.monotonic() + limit_s
    while True:
        before = cpu_sample_machine()
        time.sleep(window_s)
        busy = (cpu_sample_machine() - before) / window_s
        if busy < quiet_cores or time.monotonic() >= deadline:
            if busy >= quiet_cores:
                log(
                    f"the machine is busy: {busy:.2f} cores used by others before the run; figures will be noisy"
                )
            return round(busy, 2)
        log(f"waiting for a quiet machine ({busy:.2f} cores busy)")


def _nats_version() -> str:
    try:
        out = subprocess.run(
            [str(nats_server_binary()), "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.stdout.strip().removeprefix("nats-server: ") or "?"


if __name__ == "__main__":
    sys.exit(main())
