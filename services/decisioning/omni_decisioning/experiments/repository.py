"""All SQL of experiments, conversion definitions and the analytical copy of outcomes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from omni_decisioning.experiments.entities import (
    Anchor,
    Arm,
    Attachment,
    AttachmentKind,
    ConversionDefinition,
    Dimension,
    Experiment,
    ExperimentState,
    Model,
    Operator,
    PropertyFilter,
    Touch,
)


def _experiment(row: Any) -> Experiment:
    return Experiment(
        id=row.id,
        name=row.name,
        description=row.description,
        attachment=Attachment(AttachmentKind(row.attachment_kind), row.attachment_value),
        arms=tuple(Arm(**arm) for arm in row.arms),
        conversion_definition_id=row.conversion_definition_id,
        state=ExperimentState(row.state),
        create_time=row.create_time,
        start_time=row.start_time,
        stop_time=row.stop_time,
        archive_time=row.archive_time,
    )


def _definition(row: Any) -> ConversionDefinition:
    return ConversionDefinition(
        id=row.id,
        name=row.name,
        event_type=row.event_type,
        filters=tuple(
            PropertyFilter(path=f["path"], operator=Operator(f["operator"]), value=f.get("value"))
            for f in row.filters
        ),
        window_s=row.window_s,
        anchor=Anchor(row.anchor),
        revenue_property=row.revenue_property,
        currency=row.currency,
        create_time=row.create_time,
    )


_EXPERIMENT_COLUMNS = (
    "id, name, description, attachment_kind, attachment_value, arms, conversion_definition_id, state, "
    "create_time, start_time, stop_time, archive_time"
)


class ExperimentRepository:
    """Experiments, exposures and conversion definitions."""

    async def insert_experiment(self, session: AsyncSession, experiment: Experiment) -> bool:
        """Store an experiment; False when its name is taken."""
        result = await session.execute(
            sa.text(
                f"INSERT INTO experiments ({_EXPERIMENT_COLUMNS}) VALUES (:id, :name, :description, :kind, "
                ":value, CAST(:arms AS jsonb), :definition, :state, :create_time, NULL, NULL, NULL) "
                "ON CONFLICT (name) DO NOTHING"
            ),
            {
                "id": experiment.id,
                "name": experiment.name,
                "description": experiment.description,
                "kind": experiment.attachment.kind.value,
                "value": experiment.attachment.value,
                "arms": json.dumps([asdict(arm) for arm in experiment.arms]),
                "definition": experiment.conversion_definition_id,
                "state": experiment.state.value,
                "create_time": experiment.create_time,
            },
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def journey_exists(self, session: AsyncSession, journey_id: uuid.UUID) -> bool:
        """Whether decisioning has the journey."""
        return bool(
            await session.scalar(sa.text("SELECT 1 FROM journeys WHERE id = :id"), {"id": journey_id})
        )

    async def message_step_exists(self, session: AsyncSession, journey_id: uuid.UUID, step_id: str) -> bool:
        """Whether the journey's draft or one of its published versions has a message step of that id."""
        step = json.dumps([{"id": step_id, "message": {}}])
        return bool(
            await session.scalar(
                sa.text(
                    "SELECT 1 FROM journeys j WHERE j.id = :id AND ("
                    "coalesce(j.draft -> 'steps' @> CAST(:step AS jsonb), false) OR EXISTS ("
                    "SELECT 1 FROM journey_versions v WHERE v.journey_id = j.id "
                    "AND v.spec -> 'steps' @> CAST(:step AS jsonb)))"
                ),
                {"id": journey_id, "step": step},
            )
        )

    async def get_experiment(
        self, session: AsyncSession, experiment_id: uuid.UUID, *, for_update: bool = False
    ) -> Experiment | None:
        """An experiment, locked for the transaction when asked."""
        row = (
            await session.execute(
                sa.text(
                    f"SELECT {_EXPERIMENT_COLUMNS} FROM experiments WHERE id = :id"
                    + (" FOR UPDATE" if for_update else "")
                ),
                {"id": experiment_id},
            )
        ).one_or_none()
        return _experiment(row) if row is not None else None

    async def list_experiments(
        self, session: AsyncSession, *, after: uuid.UUID | None, limit: int, show_archived: bool
    ) -> list[Experiment]:
        """Experiments in creation (id) order after an id."""
        rows = await session.execute(
            sa.text(
                f"SELECT {_EXPERIMENT_COLUMNS} FROM experiments WHERE (CAST(:after AS uuid) IS NULL OR id > :after) "
                "AND (:archived OR state <> 'archived') ORDER BY id LIMIT :limit"
            ),
            {"after": after, "limit": limit, "archived": show_archived},
        )
        return [_experiment(row) for row in rows]

    async def set_state(
        self, session: AsyncSession, experiment_id: uuid.UUID, state: ExperimentState, at: datetime
    ) -> bool:
        """Move an experiment to a state, stamping its time; False when another runs on its attachment."""
        column = {"running": "start_time", "stopped": "stop_time", "archived": "archive_time"}[state.value]
        try:
            async with session.begin_nested():
                await session.execute(
                    sa.text(f"UPDATE experiments SET state = :state, {column} = :at WHERE id = :id"),
                    {"state": state.value, "at": at, "id": experiment_id},
                )
        except sa.exc.IntegrityError:
            return False
        return True

    async def running_on(self, session: AsyncSession, attachments: Sequence[Attachment]) -> list[Experiment]:
        """The running experiments on any of the attachments."""
        if not attachments:
            return []
        rows = await session.execute(
            sa.text(
                f"SELECT {_EXPERIMENT_COLUMNS} FROM experiments WHERE state = 'running' AND "
                "(attachment_kind, attachment_value) IN (SELECT * FROM unnest(CAST(:kinds AS text[]), "
                "CAST(:values AS text[])))"
            ),
            {"kinds": [a.kind.value for a in attachments], "values": [a.value for a in attachments]},
        )
        return [_experiment(row) for row in rows]

    async def log_exposure(
        self,
        session: AsyncSession,
        *,
        experiment_id: uuid.UUID,
        person_id: uuid.UUID,
        arm: str,
        at: datetime,
        request_id: str | None,
    ) -> None:
        """Record that the person reached the arm (the first time counts)."""
        await session.execute(
            sa.text(
                "INSERT INTO experiment_exposures (experiment_id, person_id, arm, exposed_at, request_id) "
                "VALUES (:experiment, :person, :arm, :at, :request) ON CONFLICT DO NOTHING"
            ),
            {"experiment": experiment_id, "person": person_id, "arm": arm, "at": at, "request": request_id},
        )

    async def arm_of_request(self, session: AsyncSession, request_id: str) -> str | None:
        """ "<experiment id>/<arm>" of the exposure whose send had this request id (experiments proper only)."""
        row = (
            await session.execute(
                sa.text(
                    "SELECT experiment_id, arm FROM experiment_exposures WHERE request_id = :request "
                    "AND experiment_id <> '00000000-0000-0000-0000-000000000000' LIMIT 1"
                ),
                {"request": request_id},
            )
        ).one_or_none()
        return f"{row.experiment_id}/{row.arm}" if row is not None else None

    async def arm_totals(
        self, session: AsyncSession, experiment_id: uuid.UUID, definition: ConversionDefinition
    ) -> dict[str, tuple[int, int, int, float]]:
        """Per arm: exposures, persons converted within the window after their exposure, their revenue and
        the sum of squares of revenue per person."""
        rows = await session.execute(
            sa.text(
                """
                SELECT e.arm, count(*) AS exposures, count(c.person_id) AS converted,
                       coalesce(sum(c.revenue), 0) AS revenue, coalesce(sum(c.revenue::numeric ^ 2), 0) AS revenue_sq
                FROM experiment_exposures e
                LEFT JOIN LATERAL (
                    SELECT o.person_id, sum(o.revenue_minor) AS revenue
                    FROM outcome_conversions o
                    WHERE o.definition_id = :definition AND o.person_id = e.person_id
                      AND o.occurred_at >= e.exposed_at
                      AND o.occurred_at <= e.exposed_at + make_interval(secs => :window)
                    GROUP BY o.person_id
                ) c ON true
                WHERE e.experiment_id = :experiment
                GROUP BY e.arm
                """
            ),
            {"definition": definition.id, "experiment": experiment_id, "window": definition.window_s},
        )
        return {
            row.arm: (int(row.exposures), int(row.converted), int(row.revenue), float(row.revenue_sq))
            for row in rows
        }

    async def forget_persons(self, session: AsyncSession, person_ids: Sequence[uuid.UUID]) -> None:
        """Erasure: delete the persons' exposures and everything of theirs in the analytical copy (the rollups
        hold counts, no person)."""
        ids = list(person_ids)
        await session.execute(
            sa.text(
                "DELETE FROM outcome_credits WHERE touch_id IN "
                "(SELECT touch_id FROM outcome_touches WHERE person_id = ANY(:ids))"
            ),
            {"ids": ids},
        )
        for table in (
            "experiment_exposures",
            "outcome_touches",
            "outcome_conversions",
            "outcome_persons",
            "outcome_person_conversions",
        ):
            await session.execute(sa.text(f"DELETE FROM {table} WHERE person_id = ANY(:ids)"), {"ids": ids})

    async def insert_definition(self, session: AsyncSession, definition: ConversionDefinition) -> bool:
        """Store a conversion definition; False when its name is taken."""
        result = await session.execute(
            sa.text(
                "INSERT INTO conversion_definitions (id, name, event_type, filters, window_s, anchor, "
                "revenue_property, currency, create_time) VALUES (:id, :name, :event_type, "
                "CAST(:filters AS jsonb), :window_s, :anchor, :revenue_property, :currency, :create_time) "
                "ON CONFLICT (name) DO NOTHING"
            ),
            {
                "id": definition.id,
                "name": definition.name,
                "event_type": definition.event_type,
                "filters": json.dumps(
                    [
                        {"path": f.path, "operator": int(f.operator), "value": f.value}
                        for f in definition.filters
                    ]
                ),
                "window_s": definition.window_s,
                "anchor": definition.anchor.value,
                "revenue_property": definition.revenue_property,
                "currency": definition.currency,
                "create_time": definition.create_time,
            },
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def get_definition(
        self, session: AsyncSession, definition_id: uuid.UUID
    ) -> ConversionDefinition | None:
        """A conversion definition."""
        row = (
            await session.execute(
                sa.text("SELECT * FROM conversion_definitions WHERE id = :id"), {"id": definition_id}
            )
        ).one_or_none()
        return _definition(row) if row is not None else None

    async def list_definitions(
        self, session: AsyncSession, *, after: uuid.UUID | None, limit: int
    ) -> list[ConversionDefinition]:
        """Definitions in creation order after an id."""
        rows = await session.execute(
            sa.text(
                "SELECT * FROM conversion_definitions WHERE (CAST(:after AS uuid) IS NULL OR id > :after) "
                "ORDER BY id LIMIT :limit"
            ),
            {"after": after, "limit": limit},
        )
        return [_definition(row) for row in rows]

    async def definitions_for(self, session: AsyncSession, event_type: str) -> list[ConversionDefinition]:
        """The definitions counting events of a type."""
        rows = await session.execute(
            sa.text("SELECT * FROM conversion_definitions WHERE event_type = :type"), {"type": event_type}
        )
        return [_definition(row) for row in rows]


# A rollup row per grain: the touch's hour and its day (the caller passes the hour as :bucket).
_GRAINS = "(VALUES ('hour', CAST(:bucket AS timestamptz)), ('day', date_trunc('day', CAST(:bucket AS timestamptz), 'UTC'))) AS grains(g, b)"


def _over_range(table: str, columns: str, where: str) -> str:
    """The rows of a rollup table for a range: its whole days from the day rows and the hours at either end
    from the hour rows, as three index range scans."""
    parts = [
        ("day", ":day_from", ":day_to"),
        ("hour", ":start", ":head_to"),
        ("hour", ":tail_from", ":end"),
    ]
    return " UNION ALL ".join(
        f"SELECT {columns} FROM {table} WHERE {where} AND grain = '{grain}' AND bucket >= {low} AND bucket < {high}"
        for grain, low, high in parts
    )


def _range(start: datetime, end: datetime) -> dict[str, datetime]:
    """The parameters of _over_range for hours [start, end) (both on the hour, UTC)."""
    day_from = start.replace(hour=0) + (timedelta(days=1) if start.hour else timedelta(0))
    day_to = end.replace(hour=0)
    if day_from >= day_to:  # no whole day inside: hours only
        return {
            "day_from": start,
            "day_to": start,
            "start": start,
            "head_to": end,
            "tail_from": end,
            "end": end,
        }
    return {
        "day_from": day_from,
        "day_to": day_to,
        "start": start,
        "head_to": day_from,
        "tail_from": day_to,
        "end": end,
    }


class OutcomeRepository:
    """The analytical copy: touches, credits, per-person facts and rollups."""

    async def person_source(self, session: AsyncSession, person_id: uuid.UUID) -> str:
        """The person's acquisition source ("unknown" before any event)."""
        source = await session.scalar(
            sa.text("SELECT source FROM outcome_persons WHERE person_id = :person"), {"person": person_id}
        )
        return str(source) if source is not None else "unknown"

    async def set_source_once(self, session: AsyncSession, person_id: uuid.UUID, source: str) -> None:
        """Record the person's acquisition source unless one is known."""
        await session.execute(
            sa.text(
                "INSERT INTO outcome_persons (person_id, source) VALUES (:person, :source) "
                "ON CONFLICT (person_id) DO UPDATE SET source = excluded.source "
                "WHERE outcome_persons.source = 'unknown'"
            ),
            {"person": person_id, "source": source},
        )

    async def insert_touch(self, session: AsyncSession, touch: Touch, bucket: datetime) -> bool:
        """Record a touch; False when it was recorded before."""
        result = await session.execute(
            sa.text(
                "INSERT INTO outcome_touches (touch_id, kind, person_id, channel, journey, template, "
                "experiment_arm, offer, source, sent_at, bucket) VALUES (:touch_id, :kind, :person_id, "
                ":channel, :journey, :template, :experiment_arm, :offer, :source, :sent_at, :bucket) "
                "ON CONFLICT DO NOTHING"
            ),
            {
                "touch_id": touch.touch_id,
                "kind": touch.kind,
                "person_id": touch.person_id,
                "channel": touch.channel,
                "journey": touch.journey,
                "template": touch.template,
                "experiment_arm": touch.experiment_arm,
                "offer": touch.offer,
                "source": touch.source,
                "sent_at": touch.sent_at,
                "bucket": bucket,
            },
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def mark_touch(self, session: AsyncSession, touch_id: str, column: str, at: datetime) -> Any:
        """Set a touch's delivered/opened/clicked the first time; the touch (bucket, dimensions, person) when
        this changed it, else None."""
        assignment = {
            "delivered": "delivered_at = :at",
            "opened": "opened = true",
            "clicked": "clicked = true",
        }
        condition = {"delivered": "delivered_at IS NULL", "opened": "NOT opened", "clicked": "NOT clicked"}
        return (
            await session.execute(
                sa.text(
                    f"UPDATE outcome_touches SET {assignment[column]} WHERE touch_id = :touch AND "
                    f"{condition[column]} RETURNING *"
                ),
                {"touch": touch_id, "at": at},
            )
        ).one_or_none()

    async def person_reached(self, session: AsyncSession, person_id: uuid.UUID, channel: int) -> None:
        """Count a message to the person and the channel it reached them on; a person reached on a new
        channel moves, with what they did, to their new row of the channel-count rollups."""
        bit = 1 << channel
        row = (
            await session.execute(
                sa.text(
                    "WITH old AS (SELECT channel_count FROM outcome_persons WHERE person_id = :person) "
                    "INSERT INTO outcome_persons AS p (person_id, channel_mask, channel_count, sent) "
                    "VALUES (:person, :bit, 1, 1) ON CONFLICT (person_id) DO UPDATE SET sent = p.sent + 1, "
                    "channel_mask = p.channel_mask | :bit, channel_count = p.channel_count "
                    "+ CASE WHEN p.channel_mask & :bit = 0 THEN 1 ELSE 0 END "
                    "RETURNING coalesce((SELECT channel_count FROM old), 0) AS before, p.channel_count AS after, "
                    "p.delivered > 0 AS delivered, p.opened > 0 AS opened, p.clicked > 0 AS clicked"
                ),
                {"person": person_id, "bit": bit},
            )
        ).one()
        before, after = reach_label(row.before), reach_label(row.after)
        if before == after:
            return
        flags = [int(row.delivered), int(row.opened), int(row.clicked)]
        moves = [(after, 1)] + ([(before, -1)] if before else [])
        for value, sign in moves:
            await session.execute(
                sa.text(
                    "INSERT INTO reach_rollups AS r (value, persons, delivered, opened, clicked) "
                    "VALUES (:value, :n, :d, :o, :c) ON CONFLICT (value) DO UPDATE SET persons = r.persons + :n, "
                    "delivered = r.delivered + :d, opened = r.opened + :o, clicked = r.clicked + :c"
                ),
                {"value": value, "n": sign, "d": sign * flags[0], "o": sign * flags[1], "c": sign * flags[2]},
            )
            await session.execute(
                sa.text(
                    "INSERT INTO reach_conversion_rollups AS r (definition_id, value, converted, revenue_minor, "
                    "revenue_sq) SELECT definition_id, :value, :sign, :sign * revenue_minor, "
                    ":sign * revenue_minor::numeric ^ 2 FROM outcome_person_conversions WHERE person_id = :person "
                    "ON CONFLICT (definition_id, value) DO UPDATE SET converted = r.converted + excluded.converted, "
                    "revenue_minor = r.revenue_minor + excluded.revenue_minor, "
                    "revenue_sq = r.revenue_sq + excluded.revenue_sq"
                ),
                {"value": value, "sign": sign, "person": person_id},
            )

    async def person_counted(self, session: AsyncSession, person_id: uuid.UUID, column: str) -> None:
        """Count a delivery, open or click of one of the person's messages (their first of each in the
        channel-count rollups)."""
        row = (
            await session.execute(
                sa.text(
                    f"UPDATE outcome_persons SET {column} = {column} + 1 WHERE person_id = :person "
                    f"RETURNING {column} AS count, channel_count"
                ),
                {"person": person_id},
            )
        ).one_or_none()
        if row is not None and row.count == 1 and row.channel_count > 0:
            await session.execute(
                sa.text(f"UPDATE reach_rollups SET {column} = {column} + 1 WHERE value = :value"),
                {"value": reach_label(row.channel_count)},
            )

    async def add_rollup(
        self, session: AsyncSession, bucket: datetime, values: dict[Dimension, str], column: str
    ) -> None:
        """Add one to a count of the touch's hour for each of its dimensions' values."""
        await session.execute(
            sa.text(
                f"INSERT INTO outcome_rollups (grain, bucket, dimension, value, {column}) "
                f"SELECT g, b, d, v, 1 FROM {_GRAINS} CROSS JOIN unnest(CAST(:dimensions AS text[]), "
                "CAST(:values AS text[])) AS x(d, v) "
                f"ON CONFLICT (dimension, grain, bucket, value) DO UPDATE SET {column} = outcome_rollups.{column} + 1"
            ),
            {"bucket": bucket, "dimensions": [d.value for d in values], "values": list(values.values())},
        )

    async def record_conversion(
        self,
        session: AsyncSession,
        *,
        event_id: str,
        definition_id: uuid.UUID,
        person_id: uuid.UUID,
        at: datetime,
        revenue: int,
    ) -> bool:
        """Record a conversion event once per definition; False when seen before."""
        result = await session.execute(
            sa.text(
                "INSERT INTO outcome_conversions (event_id, definition_id, person_id, occurred_at, revenue_minor) "
                "VALUES (:event, :definition, :person, :at, :revenue) ON CONFLICT DO NOTHING"
            ),
            {
                "event": event_id,
                "definition": definition_id,
                "person": person_id,
                "at": at,
                "revenue": revenue,
            },
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def touches_before(
        self, session: AsyncSession, person_id: uuid.UUID, kind: str, at: datetime, window_s: int
    ) -> list[tuple[Touch, datetime]]:
        """The person's touches of a kind whose anchor (delivery, else send) lies within the window before
        `at`, oldest first, with their buckets."""
        rows = await session.execute(
            sa.text(
                "SELECT *, coalesce(delivered_at, sent_at) AS anchor_at FROM outcome_touches "
                "WHERE person_id = :person AND kind = :kind AND sent_at <= :at "
                "AND coalesce(delivered_at, sent_at) <= :at "
                "AND coalesce(delivered_at, sent_at) >= :at - make_interval(secs => :window) "
                "ORDER BY anchor_at, touch_id"
            ),
            {"person": person_id, "kind": kind, "at": at, "window": window_s},
        )
        return [
            (
                Touch(
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
                    anchor_at=row.anchor_at,
                ),
                row.bucket,
            )
            for row in rows
        ]

    async def credit(
        self,
        session: AsyncSession,
        *,
        touch_id: str,
        definition_id: uuid.UUID,
        model: Model,
        revenue: int,
    ) -> tuple[bool, int]:
        """Credit a touch with a conversion: whether it is its first under the model, and its revenue before."""
        row = (
            await session.execute(
                sa.text(
                    "INSERT INTO outcome_credits AS c (touch_id, definition_id, model, revenue_minor) "
                    "VALUES (:touch, :definition, :model, :revenue) ON CONFLICT (touch_id, definition_id, model) "
                    "DO UPDATE SET revenue_minor = c.revenue_minor + excluded.revenue_minor "
                    "RETURNING (xmax = 0) AS first, c.revenue_minor - :revenue AS before"
                ),
                {"touch": touch_id, "definition": definition_id, "model": model.value, "revenue": revenue},
            )
        ).one()
        return bool(row.first), int(row.before)

    async def add_conversion_rollup(
        self,
        session: AsyncSession,
        *,
        bucket: datetime,
        values: dict[Dimension, str],
        definition_id: uuid.UUID,
        model: Model,
        converted: int,
        revenue: int,
        revenue_sq: int,
    ) -> None:
        """Add a credit to the conversion rollups of the touch's hour and dimensions' values."""
        await session.execute(
            sa.text(
                "INSERT INTO conversion_rollups AS r (grain, bucket, dimension, value, definition_id, model, "
                "converted, revenue_minor, revenue_sq) SELECT g, b, d, v, :definition, :model, :converted, "
                f":revenue, :revenue_sq FROM {_GRAINS} CROSS JOIN unnest(CAST(:dimensions AS text[]), "
                "CAST(:values AS text[])) AS x(d, v) "
                "ON CONFLICT (definition_id, model, dimension, grain, bucket, value) DO UPDATE SET "
                "converted = r.converted + excluded.converted, revenue_minor = r.revenue_minor + "
                "excluded.revenue_minor, revenue_sq = r.revenue_sq + excluded.revenue_sq"
            ),
            {
                "bucket": bucket,
                "dimensions": [d.value for d in values],
                "values": list(values.values()),
                "definition": definition_id,
                "model": model.value,
                "converted": converted,
                "revenue": revenue,
                "revenue_sq": revenue_sq,
            },
        )

    async def person_converted(
        self, session: AsyncSession, person_id: uuid.UUID, definition_id: uuid.UUID, revenue: int
    ) -> None:
        """Record that a reached person converted (revenue adds up), in their channel-count rollup too."""
        row = (
            await session.execute(
                sa.text(
                    "INSERT INTO outcome_person_conversions AS c (person_id, definition_id, revenue_minor) "
                    "VALUES (:person, :definition, :revenue) ON CONFLICT (definition_id, person_id) DO UPDATE "
                    "SET revenue_minor = c.revenue_minor + excluded.revenue_minor "
                    "RETURNING (xmax = 0) AS first, c.revenue_minor - :revenue AS before, "
                    "(SELECT channel_count FROM outcome_persons WHERE person_id = :person) AS channel_count"
                ),
                {"person": person_id, "definition": definition_id, "revenue": revenue},
            )
        ).one()
        if not row.channel_count:
            return
        await session.execute(
            sa.text(
                "INSERT INTO reach_conversion_rollups AS r (definition_id, value, converted, revenue_minor, "
                "revenue_sq) VALUES (:definition, :value, :converted, :revenue, :sq) "
                "ON CONFLICT (definition_id, value) DO UPDATE SET converted = r.converted + excluded.converted, "
                "revenue_minor = r.revenue_minor + excluded.revenue_minor, revenue_sq = r.revenue_sq + excluded.revenue_sq"
            ),
            {
                "definition": definition_id,
                "value": reach_label(row.channel_count),
                "converted": 1 if row.first else 0,
                "revenue": revenue,
                "sq": 2 * int(row.before) * revenue + revenue * revenue,
            },
        )

    async def report_counts(
        self, session: AsyncSession, dimension: Dimension, start: datetime, end: datetime, limit: int
    ) -> list[Any]:
        """Sent, delivered, opened and clicked per value of a dimension, touches sent in [start, end)."""
        rows = await session.execute(
            sa.text(
                "SELECT value, sum(sent) AS sent, sum(delivered) AS delivered, sum(opened) AS opened, "
                "sum(clicked) AS clicked FROM ("
                + _over_range(
                    "outcome_rollups", "value, sent, delivered, opened, clicked", "dimension = :dimension"
                )
                + ") AS r GROUP BY value ORDER BY value LIMIT :limit"
            ),
            {"dimension": dimension.value, **_range(start, end), "limit": limit},
        )
        return list(rows)

    async def report_conversions(
        self,
        session: AsyncSession,
        dimension: Dimension,
        definition_id: uuid.UUID,
        model: Model,
        start: datetime,
        end: datetime,
    ) -> dict[str, Any]:
        """Converted, revenue and its sum of squares per value of a dimension."""
        rows = await session.execute(
            sa.text(
                "SELECT value, sum(converted) AS converted, sum(revenue_minor) AS revenue, "
                "sum(revenue_sq) AS revenue_sq FROM ("
                + _over_range(
                    "conversion_rollups",
                    "value, converted, revenue_minor, revenue_sq",
                    "definition_id = :definition AND model = :model AND dimension = :dimension",
                )
                + ") AS r GROUP BY value"
            ),
            {
                "definition": definition_id,
                "model": model.value,
                "dimension": dimension.value,
                **_range(start, end),
            },
        )
        return {row.value: row for row in rows}

    async def report_channel_count(self, session: AsyncSession, definition_id: uuid.UUID) -> list[Any]:
        """Per number of channels reached (1, 2, 3+): persons reached, with a delivery, an open, a click,
        converted, their revenue and its sum of squares (from the channel-count rollups)."""
        rows = await session.execute(
            sa.text(
                """
                SELECT r.value, r.persons AS sent, r.delivered, r.opened, r.clicked,
                       coalesce(c.converted, 0) AS converted, coalesce(c.revenue_minor, 0) AS revenue,
                       coalesce(c.revenue_sq, 0) AS revenue_sq
                FROM reach_rollups r
                LEFT JOIN reach_conversion_rollups c ON c.definition_id = :definition AND c.value = r.value
                WHERE r.persons > 0
                ORDER BY r.value
                """
            ),
            {"definition": definition_id},
        )
        return list(rows)


def reach_label(channel_count: int) -> str:
    """A person's row of the channel-count report: "1", "2", "3+" ("" when not reached)."""
    if channel_count <= 0:
        return ""
    return "3+" if channel_count >= 3 else str(channel_count)
