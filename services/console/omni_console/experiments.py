"""Experiments: the list, and per experiment its arms with exposures, conversion rate and lift, each with its
95% interval, and the verdicts in words (ExperimentService, served by decisioning).

The figures are the service's (Wilson intervals for rates, delta-method intervals for lifts); the page only
shows them. An interval end the service cannot bound (too few units) is infinite and shown as "unbounded".
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from omni.decisioning.v1 import experiments_pb2, reports_pb2
from omni_console.calls import Part, fetch
from omni_console.clients import Clients
from omni_console.formatting import channel_name

READ = "decisioning.experiments:read"
REPORTS = "decisioning.reports:read"
SAMPLE_RATIO_ALPHA = 0.001


@dataclass(frozen=True)
class ExperimentView:
    """An experiment, its results, and the name of the conversion it counts."""

    experiment: experiments_pb2.Experiment
    results: Part[experiments_pb2.GetExperimentResultsResponse]
    conversion: str


async def listing(clients: Clients, show_archived: bool = False) -> Part[list[experiments_pb2.Experiment]]:
    """Every experiment, oldest first (the archived ones too when asked)."""

    async def call() -> list[experiments_pb2.Experiment]:
        found: list[experiments_pb2.Experiment] = []
        token = ""
        while True:
            request = experiments_pb2.ListExperimentsRequest(
                page_size=500, page_token=token, show_archived=show_archived
            )
            response = await clients.experiments.ListExperiments(request)
            found.extend(response.experiments)
            token = response.next_page_token
            if not token:
                return found

    return await fetch(clients, READ, call)


async def view(clients: Clients, experiment_id: str) -> Part[ExperimentView]:
    """One experiment with its results; a problem when there is none."""

    async def get() -> experiments_pb2.Experiment:
        request = experiments_pb2.GetExperimentRequest(experiment_id=experiment_id)
        return (await clients.experiments.GetExperiment(request)).experiment

    async def results() -> experiments_pb2.GetExperimentResultsResponse:
        request = experiments_pb2.GetExperimentResultsRequest(experiment_id=experiment_id)
        return await clients.experiments.GetExperimentResults(request)

    found, answered = await asyncio.gather(fetch(clients, READ, get), fetch(clients, READ, results))
    if found.value is None:
        return Part(problem=found.problem, denied=found.denied)
    names = await conversion_names(clients)
    definition_id = found.value.conversion_definition_id
    return Part(ExperimentView(found.value, answered, (names.value or {}).get(definition_id, definition_id)))


async def conversion_names(clients: Clients) -> Part[dict[str, str]]:
    """The conversion definitions' names by id."""
    definitions = await conversion_definitions(clients)
    if definitions.value is None:
        return Part(problem=definitions.problem, denied=definitions.denied)
    return Part({d.id: d.name for d in definitions.value})


async def conversion_definitions(clients: Clients) -> Part[list[reports_pb2.ConversionDefinition]]:
    """Every conversion definition, oldest first."""

    async def call() -> list[reports_pb2.ConversionDefinition]:
        found: list[reports_pb2.ConversionDefinition] = []
        token = ""
        while True:
            request = reports_pb2.ListConversionDefinitionsRequest(page_size=500, page_token=token)
            response = await clients.reports.ListConversionDefinitions(request)
            found.extend(response.definitions)
            token = response.next_page_token
            if not token:
                return found

    return await fetch(clients, REPORTS, call)


def attachment_text(attachment: experiments_pb2.ExperimentAttachment) -> tuple[str, str | None]:
    """What an experiment varies, in words, and a link to it where the console has a page for it."""
    which = attachment.WhichOneof("target")
    if which == "journey_id":
        return f"the sends of journey {attachment.journey_id}", f"/journeys/{attachment.journey_id}"
    if which == "template_id":
        return f"every journey send of template {attachment.template_id}", None
    return f"the offers of group {attachment.offer_group}", None


def arm_text(arm: experiments_pb2.ExperimentArm) -> str:
    """What an arm changes, in words."""
    if arm.holdout:
        return "holdout: nothing is sent"
    changes = []
    if arm.template_id:
        changes.append(f"template {arm.template_id}")
    if arm.channel:
        changes.append(f"channel {channel_name(arm.channel)}")
    if arm.send_delay_s:
        changes.append(f"sent {arm.send_delay_s:,} s later")
    if arm.offer_id:
        changes.append(f"offer {arm.offer_id}")
    return ", ".join(changes) or "the attachment as it is"


def percent(value: float, signed: bool = False) -> str:
    """A share as a percentage with one decimal ("12.0%", "+16.7%"); infinite ends as "unbounded"."""
    if math.isinf(value) or math.isnan(value):
        return "unbounded"
    return f"{value * 100:+.1f}%" if signed else f"{value * 100:.1f}%"


def estimate_text(estimate: experiments_pb2.Estimate, signed: bool = False) -> str:
    """An estimate with its 95% interval: "12.0% [11.0%, 13.0%]"."""
    return (
        f"{percent(estimate.value, signed)} "
        f"[{percent(estimate.low, signed)}, {percent(estimate.high, signed)}]"
    )


def sample_ratio_text(results: experiments_pb2.GetExperimentResultsResponse) -> str:
    """The sample-ratio check in words."""
    arms = len(results.arms)
    figures = (
        f"χ² = {results.sample_ratio_chi_square:.2f} on {max(arms - 1, 1)} df, "
        f"p = {results.sample_ratio_p_value:.3g}"
    )
    if results.sample_ratio_mismatch:
        return (
            f"Sample-ratio mismatch ({figures}): the split observed is not the split planned. "
            "Assignment or logging is broken; trust no figure of this experiment until it is explained."
        )
    return f"Sample ratio as planned ({figures}): no mismatch."


def verdict_text(arm: experiments_pb2.ArmResult) -> str:
    """An arm's verdict in words, saying what "not yet significant" means."""
    if arm.verdict == "not yet significant":
        return "not yet significant: the interval of its lift includes 0, so we cannot tell yet"
    return arm.verdict or "—"
