"""Identity's probabilistic matcher on FEBRL3 (deduplication of one file of 5,000 records) and FEBRL4 (two files
of 5,000 records, 5,000 true matches), against peers measured in the same run.

FEBRL3 and FEBRL4 go through the running identity service (its own process, a fresh database for each run):
FEBRL3 with BatchMatchRecords in file order, once with the built-in model and once trained on the first half
(TrainMatchModel, then the second half), soc_sec_id never sent; FEBRL4 as service_evaluation does (A loaded,
half of B, TrainMatchModel, the other half). Peer: recordlinkage's ECM on the same file. Splink is not in
the lock (it would bring DuckDB and its own stack for a benchmark peer), so it is not run here.

The peer is the recordlinkage package run on the same data in the same process: once set up exactly as its
own FEBRL4 guide does, and once with wider blocking and its ECM classifier (the stronger of the two). The
matcher is Omni's own (blocking, comparison levels, Fellegi-Sunter weights trained by EM, thresholds), run
as the service runs it but without the database, so the figures compare matching and not storage.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any
from unittest import mock

from bench.context import BenchContext
from bench.results import Baseline, Result, Target
from omni.identity.v1 import identity_pb2_grpc, matching_pb2_grpc
from omni_identity.matching.evaluate import evaluate_dedup_peer, run_bench
from omni_identity.matching.service_evaluation import evaluate_dedup_service, evaluate_febrl4_service

SUITE = "identity_matching"


async def _through_service(
    ctx: BenchContext, label: str, evaluate: Any, matching: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run one evaluation against an identity service of its own, on a fresh database; matching: the
    OMNI_IDENTITY_MATCHING_* settings it starts with (read from the environment, which the child inherits)."""
    database = ctx.make_database(f"bench_matching_{label}")
    settings = ctx.service_settings(database, ctx.namespace())
    variables = {f"OMNI_IDENTITY_MATCHING_{k.upper()}": v for k, v in (matching or {}).items()}
    with mock.patch.dict(os.environ, variables):
        async with ctx.service("identity", settings) as identity, ctx.channel(identity.target) as channel:
            figures: dict[str, Any] = await evaluate(
                matching_pb2_grpc.MatchingServiceStub(channel), identity_pb2_grpc.IdentityServiceStub(channel)
            )
            return figures


async def run(ctx: BenchContext) -> list[Result]:
    """FEBRL3 and FEBRL4 through the service, FEBRL4 in process; F1 and records/s beside the peers'."""
    return [*(await _febrl3(ctx)), *(await _febrl4_service(ctx)), *(await _febrl4_in_process())]


async def _febrl3(ctx: BenchContext) -> list[Result]:
    built_in = await _through_service(
        ctx, "febrl3", lambda stub, identity: evaluate_dedup_service(stub, identity=identity)
    )
    trained = await _through_service(
        ctx,
        "febrl3_trained",
        lambda stub, identity: evaluate_dedup_service(stub, train_on_first_half=True, identity=identity),
    )
    repaired = await _through_service(
        ctx,
        "febrl3_repair",
        lambda stub, identity: evaluate_dedup_service(stub, identity=identity),
        {"repair": "merge"},
    )
    repaired_trained = await _through_service(
        ctx,
        "febrl3_trained_repair",
        lambda stub, identity: evaluate_dedup_service(stub, train_on_first_half=True, identity=identity),
        {"repair": "merge"},
    )
    peer_figures: dict[str, Any] = await asyncio.to_thread(evaluate_dedup_peer, "febrl3")
    ecm = peer_figures["recordlinkage_ecm"]
    completeness = peer_figures["pairs_completeness"]
    peer = Baseline(
        "recordlinkage ECM (blocking on given name, surname, postcode, date of birth)", ecm["f1"], "F1"
    )
    peer_note = f"peer precision {ecm['precision']:.4f}, recall {ecm['recall']:.4f}"
    results = []
    runs = (
        ("built-in model", built_in),
        ("trained on the first half", trained),
        ("built-in model, OMNI_IDENTITY_MATCHING_REPAIR=merge", repaired),
        ("trained on the first half, OMNI_IDENTITY_MATCHING_REPAIR=merge", repaired_trained),
    )
    for label, figures in runs:
        results.append(
            Result(
                suite=SUITE,
                name=f"FEBRL3 dedup F1 through BatchMatchRecords ({label})",
                value=figures["f1"],
                unit="F1",
                higher_is_better=True,
                baselines=[peer],
                targets=[Target(">=", 1.0, on="ratio")],
                notes=f"precision {figures['precision']:.4f}, recall {figures['recall']:.4f}; decisions: "
                f"{figures['linked']} linked, {figures['new_person']} new, {figures['review']} review "
                f"({figures['review_several_persons']} with several persons above the link threshold); "
                f"{peer_note}",
                details={**figures, "peer": peer_figures},
            )
        )
    results.append(
        Result(
            suite=SUITE,
            name="FEBRL3 records matched per second through BatchMatchRecords (built-in model, batches of 500)",
            value=built_in["records_per_second"],
            unit="records/s",
            higher_is_better=True,
            baselines=[
                Baseline(
                    "recordlinkage ECM, whole pipeline in process", ecm["records_per_second"], "records/s"
                )
            ],
            targets=[Target(">=", 1.0, on="ratio")],
            notes="records over the wall time of the BatchMatchRecords calls (gRPC, PostgreSQL, durable commits)",
        )
    )
    results.append(
        Result(
            suite=SUITE,
            name="FEBRL3 blocking pairs completeness",
            value=completeness["omni"],
            unit="share of true pairs",
            higher_is_better=True,
            baselines=[Baseline("recordlinkage ECM's blocking", completeness["recordlinkage_ecm"], "share")],
            notes=f"{completeness['omni_candidate_pairs']:,} candidate pairs (peer: "
            f"{completeness['recordlinkage_ecm_candidate_pairs']:,}) of 12.5 million",
            details=completeness,
        )
    )
    return results


async def _febrl4_service(ctx: BenchContext) -> list[Result]:
    figures = await _through_service(ctx, "febrl4", lambda stub, _: evaluate_febrl4_service(stub))
    return [
        Result(
            suite=SUITE,
            name=f"FEBRL4 F1 through BatchMatchRecords ({label})",
            value=figures[key]["f1"],
            unit="F1",
            higher_is_better=True,
            notes=f"precision {figures[key]['precision']:.4f}, recall {figures[key]['recall']:.4f}; A loaded at "
            f"{figures['load_records_per_second']:,.0f} records/s, B matched at "
            f"{figures['match_records_per_second']:,.0f} records/s",
            details=figures,
        )
        for label, key in (
            ("first half of B, built-in model", "built_in_model"),
            ("second half of B, trained model", "trained_model"),
        )
    ]


async def _febrl4_in_process() -> list[Result]:
    figures: dict[str, Any] = await asyncio.to_thread(run_bench)
    omni, ecm, guide = figures["omni"], figures["recordlinkage_ecm"], figures["recordlinkage_guide"]
    reviewed = figures["omni_relatives_reviewed"]
    peers = [
        Baseline("recordlinkage ECM, wider blocking", ecm["f1"], "F1"),
        Baseline("recordlinkage as its FEBRL4 guide", guide["f1"], "F1"),
    ]
    peer = f"peer ECM precision {ecm['precision']:.4f}, recall {ecm['recall']:.4f}"
    return [
        Result(
            suite=SUITE,
            name="FEBRL4 F1 (relatives linked: OMNI_IDENTITY_MATCHING_REVIEW_RELATIVES=false)",
            value=omni["f1"],
            unit="F1",
            higher_is_better=True,
            baselines=peers,
            targets=[Target(">=", 0.98), Target(">=", 1.0, on="ratio")],
            notes=f"precision {omni['precision']:.4f}, recall {omni['recall']:.4f}; {peer}",
            details=figures,
        ),
        Result(
            suite=SUITE,
            name="FEBRL4 F1 (default settings: relatives to review)",
            value=reviewed["f1"],
            unit="F1",
            higher_is_better=True,
            baselines=peers,
            targets=[Target(">=", 0.98), Target(">=", 1.0, on="ratio")],
            notes=f"precision {reviewed['precision']:.4f}, recall {reviewed['recall']:.4f}; a pair that "
            "differs in both given name and date of birth goes to an operator's review instead of being "
            "linked, and counts here as not linked; " + peer,
        ),
        Result(
            suite=SUITE,
            name="FEBRL4 records matched per second",
            value=omni["records_per_second"],
            unit="records/s",
            higher_is_better=True,
            baselines=[
                Baseline("recordlinkage ECM, wider blocking", ecm["records_per_second"], "records/s"),
                Baseline("recordlinkage as its FEBRL4 guide", guide["records_per_second"], "records/s"),
            ],
            notes="(|A| + |B|) over the wall time of the whole pipeline, training included, one process",
        ),
    ]
