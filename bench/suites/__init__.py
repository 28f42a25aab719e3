"""The benchmark suites, in the order a full run takes them. Each module has ``async run(ctx) -> list[Result]``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bench.context import BenchContext
from bench.results import Result
from bench.suites import (
    baselines,
    cli_import,
    decide,
    gateway_send,
    identity_matching,
    identity_resolve,
    journey_steps,
    journey_timers,
    outcome_reports,
    policy_evaluation,
    profile_ingest,
    profile_read,
    segment_backfill,
    segment_live,
    terminal_identify,
)

Suite = Callable[[BenchContext], Awaitable[list[Result]]]

SUITES: dict[str, Suite] = {
    "baselines": baselines.run,
    "identity_resolve": identity_resolve.run,
    "identity_matching": identity_matching.run,
    "profile_ingest": profile_ingest.run,
    "import": cli_import.run,
    "profile_read": profile_read.run,
    "segment_live": segment_live.run,
    "segment_backfill": segment_backfill.run,
    "decide": decide.run,
    "gateway_send": gateway_send.run,
    "journey_timers": journey_timers.run,
    "journey_steps": journey_steps.run,
    "terminal_identify": terminal_identify.run,
    "policy_evaluation": policy_evaluation.run,
    "outcome_reports": outcome_reports.run,
}
