"""The analytical copy of outcomes, kept incrementally from events, and the reports read from it.

Every touch (a message the gateway sent, an offer a decision showed) adds one to the hourly rollup of each of
its dimensions' values; each receipt (delivered, opened, clicked) adds to the rollups of the touch's hour.
A conversion event (profile's event_tracked matching a definition) is recorded once, then credited, for each
attribution model, to the touches in its window, and each credit adds to the conversion rollups of the
credited touch's hour: reports sum a few rollup rows per value, whatever the number of events behind them.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from omni_decisioning.experiments import stats
from omni_decisioning.experiments.conversions import credits, matches, revenue_minor
from omni_decisioning.experiments.entities import Anchor, Dimension, Model, Touch
from omni_decisioning.experiments.repository import ExperimentRepository, OutcomeRepository

MAX_REPORT_ROWS = 10_000
CHANNEL_COUNT_NOTE = (
    "Observational: persons reached on more channels differ from the others in more than the number of "
    "channels (they engage more, enter more segments, consent to more channels), so this report shows "
    "association, not effect. For the effect, run an experiment whose arms differ in the number of channels."
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def hour_of(at: datetime) -> datetime:
    """The hour a time falls in (the rollups' bucket)."""
    return at.replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class ReportLine:
    """One value of a report's dimension, with the estimators applied."""

    value: str
    sent: int
    delivered: int
    opened: int
    clicked: int
    converted: int
    revenue_minor: int
    delivery_rate: stats.Interval
    open_rate: stats.Interval
    click_rate: stats.Interval
    conversion_rate: stats.Interval
    revenue_per_recipient: stats.Interval


def _line(
    value: str,
    sent: int,
    delivered: int,
    opened: int,
    clicked: int,
    converted: int,
    revenue: int,
    revenue_sq: float,
) -> ReportLine:
    return ReportLine(
        value=value,
        sent=sent,
        delivered=delivered,
        opened=opened,
        clicked=clicked,
        converted=converted,
        revenue_minor=revenue,
        delivery_rate=stats.wilson(delivered, sent),
        open_rate=stats.wilson(opened, delivered),
        click_rate=stats.wilson(clicked, delivered),
        conversion_rate=stats.wilson(converted, sent),
        revenue_per_recipient=stats.mean_interval(stats.Moments(sent, revenue, revenue_sq)),
    )


class Outcomes:
    """Feeds the analytical copy from events, and answers reports from it."""

    def __init__(self, repository: OutcomeRepository, experiments: ExperimentRepository) -> None:
        self._repository = repository
        self._experiments = experiments

    async def message_sent(
        self,
        session: AsyncSession,
        *,
        request_id: str,
        person_id: uuid.UUID,
        channel: int,
        journey_id: str,
        template_id: str,
        at: datetime,
    ) -> None:
        """A message went out: a touch, counted once per request id."""
        arm = await self._experiments.arm_of_request(session, request_id) if request_id else None
        touch = Touch(
            touch_id=request_id,
            kind="message",
            person_id=person_id,
            channel=channel,
            journey=journey_id or "none",
            template=template_id or "none",
            experiment_arm=arm or "none",
            offer="none",
            source=await self._repository.person_source(session, person_id),
            sent_at=at,
        )
        bucket = hour_of(at)
        if not await self._repository.insert_touch(session, touch, bucket):
            return
        await self._repository.person_reached(session, person_id, channel)
        await self._repository.add_rollup(session, bucket, touch.values(), "sent")

    async def offer_shown(
        self,
        session: AsyncSession,
        *,
        decision_id: str,
        person_id: uuid.UUID,
        offer_ids: list[str],
        at: datetime,
    ) -> None:
        """A decision showed offers: an impression touch per offer."""
        bucket = hour_of(at)
        for offer_id in offer_ids:
            touch = Touch(
                touch_id=f"decision:{decision_id}:{offer_id}",
                kind="impression",
                person_id=person_id,
                channel=0,
                journey="none",
                template="none",
                experiment_arm="none",
                offer=offer_id,
                source="unknown",
                sent_at=at,
            )
            if await self._repository.insert_touch(session, touch, bucket):
                await self._repository.add_rollup(session, bucket, touch.values(), "sent")

    async def receipt(self, session: AsyncSession, *, request_id: str, column: str, at: datetime) -> None:
        """A message was delivered, opened or clicked (the first of each counts)."""
        row = await self._repository.mark_touch(session, request_id, column, at)
        if row is None:
            return
        touch = Touch(
            touch_id=row.touch_id,
            kind=row.kind,
            person_id=row.person_id,
            channel=row.channel,
            journey=row.journey,
            template=row.template,
            experiment_arm=row.experiment_arm,
            offer=row.offer,
            source=row.source,
            sent_at=row.sent_at,
        )
        await self._repository.add_rollup(session, row.bucket, touch.values(), column)
        await self._repository.person_counted(session, row.person_id, column)

    async def event_tracked(
        self,
        session: AsyncSession,
        *,
        event_id: str,
        person_id: uuid.UUID,
        event_type: str,
        properties: Mapping[str, Any],
        context: Mapping[str, Any],
        source: str,
        at: datetime,
    ) -> None:
        """A person's event: their acquisition source if it is their first, and a conversion of every
        definition it matches, credited to the touches in the window."""
        await self._repository.set_source_once(session, person_id, acquisition_source(context, source))
        for definition in await self._experiments.definitions_for(session, event_type):
            if not matches(definition, event_type, properties):
                continue
            revenue = revenue_minor(definition, properties)
            if not await self._repository.record_conversion(
                session,
                event_id=event_id,
                definition_id=definition.id,
                person_id=person_id,
                at=at,
                revenue=revenue,
            ):
                continue
            kind = "impression" if definition.anchor == Anchor.IMPRESSION else "message"
            touches = await self._repository.touches_before(session, person_id, kind, at, definition.window_s)
            if not touches:
                continue
            buckets = {touch.touch_id: bucket for touch, bucket in touches}
            for model in Model:
                for touch, share in credits(model, [t for t, _ in touches], revenue):
                    first, before = await self._repository.credit(
                        session,
                        touch_id=touch.touch_id,
                        definition_id=definition.id,
                        model=model,
                        revenue=share,
                    )
                    await self._repository.add_conversion_rollup(
                        session,
                        bucket=buckets[touch.touch_id],
                        values=touch.values(),
                        definition_id=definition.id,
                        model=model,
                        converted=1 if first else 0,
                        revenue=share,
                        revenue_sq=2 * before * share + share * share,
                    )
            if kind == "message":
                await self._repository.person_converted(session, person_id, definition.id, revenue)

    async def report(
        self,
        session: AsyncSession,
        *,
        dimension: Dimension,
        definition_id: uuid.UUID,
        model: Model,
        start: datetime | None,
        end: datetime | None,
    ) -> tuple[list[ReportLine], bool, str]:
        """The report's lines by value, whether lines were left out, and its note."""
        if dimension == Dimension.CHANNEL_COUNT:
            rows = await self._repository.report_channel_count(session, definition_id)
            lines = [
                _line(
                    r.value,
                    r.sent,
                    r.delivered,
                    r.opened,
                    r.clicked,
                    r.converted,
                    int(r.revenue),
                    float(r.revenue_sq),
                )
                for r in rows
            ]
            return lines, False, CHANNEL_COUNT_NOTE
        low = hour_of(start) if start is not None else _EPOCH
        high = end if end is not None else datetime.now(UTC) + timedelta(hours=1)
        if high != hour_of(high):
            high = hour_of(high) + timedelta(hours=1)
        counts = await self._repository.report_counts(session, dimension, low, high, MAX_REPORT_ROWS + 1)
        converted = await self._repository.report_conversions(
            session, dimension, definition_id, model, low, high
        )
        lines = []
        for row in counts[:MAX_REPORT_ROWS]:
            credit = converted.get(row.value)
            lines.append(
                _line(
                    row.value,
                    int(row.sent),
                    int(row.delivered),
                    int(row.opened),
                    int(row.clicked),
                    int(credit.converted) if credit is not None else 0,
                    int(credit.revenue) if credit is not None else 0,
                    float(credit.revenue_sq) if credit is not None else 0.0,
                )
            )
        note = (
            "Rates are Wilson 95% intervals; revenue per recipient a normal 95% interval. Attribution: "
            f"{model.value.replace('_', ' ')}."
        )
        return lines, len(counts) > MAX_REPORT_ROWS, note


def acquisition_source(context: Mapping[str, Any], source: str) -> str:
    """The campaign source an event came with (context.campaign.source, context.utm_source), else the
    sending system's source, else "direct"."""
    campaign = context.get("campaign")
    if isinstance(campaign, Mapping) and isinstance(campaign.get("source"), str) and campaign["source"]:
        return str(campaign["source"])[:100]
    utm = context.get("utm_source")
    if isinstance(utm, str) and utm:
        return utm[:100]
    return source or "direct"
