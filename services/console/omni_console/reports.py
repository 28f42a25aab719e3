"""Outcome reports: by channel, and by the number of channels a person was reached on (1, 2, 3+), each row
with its rates and 95% intervals, from decisioning's ReportService; and the same reports as CSV.

A report counts conversions of one definition (the page lets the user pick one; the first by default) under
one attribution model. The channel-count report is observational, and the page shows the service's note
saying so beside it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from omni.decisioning.v1 import reports_pb2
from omni_console.calls import Part, fetch
from omni_console.clients import Clients
from omni_console.experiments import conversion_definitions

READ = "decisioning.reports:read"

DIMENSIONS = {
    "channel": reports_pb2.REPORT_DIMENSION_CHANNEL,
    "channel-count": reports_pb2.REPORT_DIMENSION_CHANNEL_COUNT,
}
"""The reports the page shows, by the name in their CSV link."""

MODELS = {
    "last-touch": reports_pb2.ATTRIBUTION_MODEL_LAST_TOUCH,
    "first-touch": reports_pb2.ATTRIBUTION_MODEL_FIRST_TOUCH,
    "linear": reports_pb2.ATTRIBUTION_MODEL_LINEAR,
}
"""The attribution models, by the name the page's form sends."""

OBSERVATIONAL = (
    "Observational: persons reached on more channels are also the ones who consented to more channels, engage "
    "more and enter more segments, so a higher rate there is association, not effect. Whether another "
    "channel makes people buy is answered by an experiment whose arms differ in the channels used."
)
"""Shown with the channel-count report when the service sends no note of its own."""


class ReportQueryError(ValueError):
    """A report asked for with a name the console does not know."""


@dataclass(frozen=True)
class Reports:
    """The page: the definitions to choose from, the chosen one, and the two reports."""

    definitions: Part[list[reports_pb2.ConversionDefinition]]
    definition_id: str
    model: str
    channel: Part[reports_pb2.GetOutcomeReportResponse] | None
    channel_count: Part[reports_pb2.GetOutcomeReportResponse] | None


def request(dimension: str, definition_id: str, model: str) -> reports_pb2.GetOutcomeReportRequest:
    """The report request for a dimension's and a model's names; ReportQueryError for unknown names."""
    if dimension not in DIMENSIONS:
        raise ReportQueryError(f"no report by {dimension!r}; there are {', '.join(DIMENSIONS)}")
    if model not in MODELS:
        raise ReportQueryError(f"no attribution model {model!r}; there are {', '.join(MODELS)}")
    return reports_pb2.GetOutcomeReportRequest(
        dimension=DIMENSIONS[dimension], conversion_definition_id=definition_id, model=MODELS[model]
    )


async def load(clients: Clients, definition_id: str, model: str) -> Reports:
    """The definitions, and the two reports for the chosen one (the first definition when none is chosen)."""
    definitions = await conversion_definitions(clients)
    chosen = definition_id or next((d.id for d in definitions.value or []), "")
    if not chosen:
        return Reports(definitions, "", model, None, None)

    async def report(dimension: str) -> Part[reports_pb2.GetOutcomeReportResponse]:
        asked = request(dimension, chosen, model)
        return await fetch(clients, READ, lambda: clients.reports.GetOutcomeReport(asked))

    channel, channel_count = await asyncio.gather(report("channel"), report("channel-count"))
    return Reports(definitions, chosen, model, channel, channel_count)


async def export(clients: Clients, dimension: str, definition_id: str, model: str) -> Part[str]:
    """A report as the service's CSV."""
    asked = reports_pb2.ExportOutcomeReportRequest(report=request(dimension, definition_id, model))

    async def call() -> str:
        return str((await clients.reports.ExportOutcomeReport(asked)).csv)

    return await fetch(clients, READ, call)


def rate_rows(report: reports_pb2.GetOutcomeReportResponse) -> list[tuple[str, float, float, float]]:
    """(value, conversion rate, low, high) per row, for the chart."""
    return [
        (row.value, row.conversion_rate.value, row.conversion_rate.low, row.conversion_rate.high)
        for row in report.rows
    ]
