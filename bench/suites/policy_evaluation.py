"""Off-policy evaluation on real logged bandit data: the Open Bandit Dataset sample (ZOZOTOWN fashion
recommendations, campaign "all": 10,000 impressions logged by a uniform-random policy and 10,000 by Bernoulli
Thompson sampling, 80 items, 3 positions, with propensities).

The sample ships inside the obp 0.5.7 source distribution on PyPI. The suite fetches it once with
`pip download --no-deps --no-binary :all: --ignore-requires-python obp==0.5.7` (obp itself does not install on
Python 3.11, and nothing of it is installed or committed) into .omni/bench-cache/ and reads three files from
the archive: obp/dataset/obd/random/all/all.csv, obp/dataset/obd/bts/all/all.csv and
obp/policy/conf/prior_bts.yaml (the BTS policy's Beta parameters per item).

Through decisioning's own API, in its own process: 80 offers (CreateOffer), the uniform-random log as 10,000
decisions at touchpoint "obd_all" (ImportDecisions; each impression is a decision with the 80 items as
candidates, the shown item chosen at its position with the logged propensity), its clicks (RecordOutcome).
Then EvaluatePolicy with the BTS policy as the candidate (a Thompson policy with the prior's alpha and beta
per item; its probability of each item at each position by 100,000 Monte Carlo draws, as obp computes it).
The truth it is compared with is the BTS policy's on-policy click-through rate in its own log. Targets: a
relative error of at most 0.25 for SNIPW and DR, and their 95% intervals covering the on-policy CTR.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import tarfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from bench.context import BenchContext, log
from bench.results import Result, Target
from omni.decisioning.v1 import decisioning_pb2 as d
from omni.decisioning.v1 import decisioning_pb2_grpc

SUITE = "policy_evaluation"
REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".omni" / "bench-cache"
OBP = "obp==0.5.7"
ARCHIVE = "obp-0.5.7.tar.gz"
TOUCHPOINT = "obd_all"
IMPORT_BATCH = 250
DRAWS = 100_000
BOOTSTRAP = 1_000
SEED = 12345
MAX_RELATIVE_ERROR = 0.25


def fetch_obp(cache: Path = CACHE) -> Path:
    """The obp source distribution, downloaded with pip into the cache the first time."""
    archive = cache / ARCHIVE
    if archive.exists():
        return archive
    cache.mkdir(parents=True, exist_ok=True)
    tools_pip = REPO / ".tools" / "bin" / "pip"
    pip = [str(tools_pip)] if tools_pip.exists() else [sys.executable, "-m", "pip"]
    subprocess.run(
        [
            *pip,
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--ignore-requires-python",
            OBP,
            "-d",
            str(cache),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return archive


def read_obd(archive: Path) -> dict[str, Any]:
    """The random and BTS logs of campaign "all" and the BTS prior, read from the archive."""
    root = ARCHIVE.removesuffix(".tar.gz")
    with tarfile.open(archive) as tar:

        def text(member: str) -> str:
            extracted = tar.extractfile(f"{root}/{member}")
            assert extracted is not None, member
            return extracted.read().decode()

        def rows(member: str) -> list[dict[str, str]]:
            return list(csv.DictReader(io.StringIO(text(member))))

        prior = yaml.safe_load(text("obp/policy/conf/prior_bts.yaml"))["all"]
        return {
            "random": rows("obp/dataset/obd/random/all/all.csv"),
            "bts": rows("obp/dataset/obd/bts/all/all.csv"),
            "alpha": [float(a) for a in prior["alpha"]],
            "beta": [float(b) for b in prior["beta"]],
        }


def logged_decisions(rows: list[dict[str, str]], offers: list[str]) -> list[d.LoggedDecision]:
    """Each logged impression as a decision: the 80 items as candidates, the shown one chosen at its
    position (1-3) with the logged propensity."""
    decisions = []
    for index, row in enumerate(rows):
        shown, position, propensity = (
            int(row["item_id"]),
            int(row["position"]),
            float(row["propensity_score"]),
        )
        created = d.LoggedDecision(
            decision_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"obd/random/all/{index}")),
            person_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"obd/random/all/person/{index}")),
            touchpoint=TOUCHPOINT,
            policy="imported:obd-random",
            candidates=[
                d.Candidate(
                    offer_id=offer,
                    rank=position if item == shown else 0,
                    propensity=propensity,
                    rank_propensity=propensity if item == shown else 0.0,
                    chosen=item == shown,
                )
                for item, offer in enumerate(offers)
            ],
        )
        created.create_time.FromDatetime(datetime.fromisoformat(row["timestamp"]))
        decisions.append(created)
    return decisions


async def run(ctx: BenchContext) -> list[Result]:
    """Load the uniform-random log through the API, evaluate the BTS policy, compare with its own CTR."""
    started = time.monotonic()
    obd = read_obd(fetch_obp())
    log(f"policy_evaluation: OBD sample read ({len(obd['random'])} random, {len(obd['bts'])} BTS rounds)")
    database = ctx.make_database("bench_policy_evaluation")
    async with (
        ctx.service("decisioning", ctx.service_settings(database, ctx.namespace())) as decisioning,
        ctx.channel(decisioning.target) as channel,
    ):
        stub = decisioning_pb2_grpc.DecisioningServiceStub(channel)
        offers = []
        for item in range(len(obd["alpha"])):
            created = await stub.CreateOffer(
                d.CreateOfferRequest(
                    offer=d.Offer(
                        name=f"obd item {item}", description="ZOZOTOWN item", touchpoints=[TOUCHPOINT]
                    )
                ),
                timeout=10.0,
            )
            offers.append(created.offer.id)
        decisions = logged_decisions(obd["random"], offers)
        import_started = time.monotonic()
        for first in range(0, len(decisions), IMPORT_BATCH):
            await stub.ImportDecisions(
                d.ImportDecisionsRequest(decisions=decisions[first : first + IMPORT_BATCH]), timeout=120.0
            )
        imported_in = time.monotonic() - import_started
        clicks = 0
        for index, row in enumerate(obd["random"]):
            if row["click"] == "1":
                clicks += 1
                await stub.RecordOutcome(
                    d.RecordOutcomeRequest(
                        outcome=d.Outcome(
                            outcome_id=f"obd/random/all/{index}/click",
                            decision_id=decisions[index].decision_id,
                            offer_id=offers[int(row["item_id"])],
                            type=d.OUTCOME_TYPE_CLICK,
                        )
                    ),
                    timeout=10.0,
                )
        log(f"policy_evaluation: {len(decisions)} decisions imported in {imported_in:.1f} s, {clicks} clicks")
        candidate = d.ThompsonPolicy(
            arms=[
                d.BetaArm(offer_id=offer, alpha=alpha, beta=beta)
                for offer, alpha, beta in zip(offers, obd["alpha"], obd["beta"], strict=True)
            ],
            draws=DRAWS,
        )
        evaluate_started = time.monotonic()
        answer = await stub.EvaluatePolicy(
            d.EvaluatePolicyRequest(
                touchpoint=TOUCHPOINT, thompson=candidate, bootstrap_samples=BOOTSTRAP, seed=SEED
            ),
            timeout=300.0,
        )
        evaluated_in = time.monotonic() - evaluate_started
    truth = sum(int(row["click"]) for row in obd["bts"]) / len(obd["bts"])
    common = {
        "on_policy_ctr": truth,
        "logged_actions": answer.logged_actions,
        "effective_sample_size": round(answer.effective_sample_size, 1),
        "logged_ctr": answer.logged_value,
        "uncovered": answer.uncovered,
        "draws": DRAWS,
        "bootstrap_samples": BOOTSTRAP,
        "seed": SEED,
        "evaluate_s": round(evaluated_in, 2),
        "import_s": round(imported_in, 2),
        "suite_s": round(time.monotonic() - started, 1),
    }
    results = []
    for estimate in answer.estimates:
        error = abs(estimate.value - truth) / truth
        covers = estimate.ci_low <= truth <= estimate.ci_high
        targeted = estimate.estimator in ("snipw", "dr")
        results.append(
            Result(
                SUITE,
                f"{estimate.estimator.upper()} relative error vs BTS on-policy CTR",
                error,
                "",
                higher_is_better=False,
                targets=[Target("<", MAX_RELATIVE_ERROR)] if targeted else [],
                notes=f"estimate {estimate.value:.5f}, 95% CI [{estimate.ci_low:.5f}, {estimate.ci_high:.5f}] "
                f"({'covers' if covers else 'does NOT cover'}) the on-policy CTR {truth:.5f}; "
                f"ESS {answer.effective_sample_size:,.0f} of {answer.logged_actions:,} logged actions.",
                details={
                    **common,
                    "estimate": estimate.value,
                    "ci_low": estimate.ci_low,
                    "ci_high": estimate.ci_high,
                    "ci_covers_on_policy_ctr": covers,
                },
            )
        )
        if targeted:
            results.append(
                Result(
                    SUITE,
                    f"{estimate.estimator.upper()} 95% CI covers the on-policy CTR",
                    1.0 if covers else 0.0,
                    "yes=1",
                    higher_is_better=True,
                    targets=[Target(">=", 1.0)],
                    notes=f"[{estimate.ci_low:.5f}, {estimate.ci_high:.5f}] vs {truth:.5f} (bootstrap over "
                    f"decisions, {BOOTSTRAP} resamples).",
                )
            )
    results.append(
        Result(
            SUITE,
            "ImportDecisions (80 candidates each)",
            len(decisions) / imported_in,
            "decisions/s",
            higher_is_better=True,
            notes=f"{len(decisions):,} decisions in batches of {IMPORT_BATCH}, one caller.",
        )
    )
    results.append(
        Result(
            SUITE,
            "EvaluatePolicy (BTS candidate, 100,000 draws, 1,000 resamples)",
            evaluated_in,
            "s",
            higher_is_better=False,
            notes=f"{answer.logged_actions:,} logged actions; reading the log, the Monte Carlo place "
            "probabilities, the reward model and the bootstrap.",
        )
    )
    return results
