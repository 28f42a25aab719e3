"""Outcome reports: GetOutcomeReport over an analytical copy holding 10M outcome events.

Decisioning runs on its own; its analytical copy is seeded as if its outcomes consumer had applied 10M events:
messages sent (4.1M touches over 90 days, 1M persons, 3 channels, 50 journeys, 200 templates, 10
experiments), their deliveries, opens and clicks, and conversions (each credited under the three models). A
slice of 205,000 touches is generated and COPY'd, then repeated 20 times inside PostgreSQL with other ids,
persons and times.
The hourly rollups are then built from those rows by the same grouping the consumer keeps up one event at a
time. Each report (every dimension; the channel report under each model) is asked 10 times through the API:
its latency. The baseline is the template report computed straight from the touches (one GROUP BY over the
4.1M rows, joined with the credits): what a report would cost without the rollups.
"""

from __future__ import annotations

import random
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.context import BenchContext, log
from bench.results import Baseline, Result, Target
from omni.decisioning.v1 import reports_pb2 as r
from omni.decisioning.v1 import reports_pb2_grpc

SUITE = "outcome_reports"
SEED = 19
CHUNK = 200_000
DEFINITION = uuid.UUID("0190f000-0000-7000-8000-000000000001")
CHANNEL_NAMES = "CASE channel WHEN 3 THEN 'email' WHEN 4 THEN 'sms' WHEN 5 THEN 'push' ELSE 'unspecified' END"
DIMENSIONS = {
    "channel": CHANNEL_NAMES,
    "journey": "journey",
    "template": "template",
    "experiment_arm": "experiment_arm",
    "acquisition_source": "source",
}
SOURCES = ("instagram", "newsletter", "search", "tiktok", "referral", "direct", "affiliate", "podcast")
_TOUCH_COLUMNS = (
    "touch_id", "kind", "person_id", "channel", "journey", "template", "experiment_arm", "offer", "source",
    "sent_at", "bucket", "delivered_at", "opened", "clicked",
)  # fmt: skip

# Loaded as a bulk load would: the tables' keys and indexes dropped first and built again once the rows are in.
_DROP_KEYS = [
    "ALTER TABLE outcome_touches DROP CONSTRAINT outcome_touches_pkey",
    "DROP INDEX outcome_touches_person",
    "ALTER TABLE outcome_credits DROP CONSTRAINT outcome_credits_pkey",
    "ALTER TABLE outcome_conversions DROP CONSTRAINT outcome_conversions_pkey",
    "DROP INDEX outcome_conversions_person",
]
_ADD_KEYS = [
    "ALTER TABLE outcome_touches ADD PRIMARY KEY (touch_id)",
    "CREATE INDEX outcome_touches_person ON outcome_touches (person_id, sent_at)",
    "ALTER TABLE outcome_credits ADD PRIMARY KEY (touch_id, definition_id, model)",
    "ALTER TABLE outcome_conversions ADD PRIMARY KEY (event_id, definition_id)",
    "CREATE INDEX outcome_conversions_person ON outcome_conversions (definition_id, person_id, occurred_at)",
]
# The COPY'd slice again as copies 1 to $1: other ids and persons (person n of copy k is n + k * $2), times
# shifted by k hours, so rollups, persons and conversions grow as they would with more traffic.
_SHIFTED_PERSON = (
    "('00000000-0000-0000-0000-' || lpad(to_hex(('x' || right(person_id::text, 12))::bit(48)::bigint"
    " + k::bigint * $2::int), 12, '0'))::uuid"
)
_REPEAT_TOUCHES = f"""
INSERT INTO outcome_touches
SELECT touch_id || '#' || k, kind, {_SHIFTED_PERSON}, channel, journey, template, experiment_arm, offer, source,
       sent_at - make_interval(hours => k), bucket - make_interval(hours => k),
       delivered_at - make_interval(hours => k), opened, clicked
FROM outcome_touches CROSS JOIN generate_series(1, $1::int) AS k
"""
_REPEAT_CONVERSIONS = f"""
INSERT INTO outcome_conversions
SELECT event_id || '#' || k, definition_id, {_SHIFTED_PERSON}, occurred_at - make_interval(hours => k), revenue_minor
FROM outcome_conversions CROSS JOIN generate_series(1, $1::int) AS k
"""
_REPEAT_CREDITS = """
INSERT INTO outcome_credits SELECT touch_id || '#' || k, definition_id, model, revenue_minor
FROM outcome_credits CROSS JOIN generate_series(1, $1::int) AS k
"""

_BASELINE = """
SELECT t.template AS value, count(*) AS sent, count(t.delivered_at) AS delivered,
       count(*) FILTER (WHERE t.opened) AS opened, count(*) FILTER (WHERE t.clicked) AS clicked,
       count(c.touch_id) AS converted, coalesce(sum(c.revenue_minor), 0) AS revenue,
       coalesce(sum(c.revenue_minor::numeric ^ 2), 0) AS revenue_sq
FROM outcome_touches t
LEFT JOIN outcome_credits c ON c.touch_id = t.touch_id AND c.definition_id = $1 AND c.model = 'last_touch'
GROUP BY t.template
"""


def _slice_rollups() -> list[str]:
    """The hour rollups and per-person rows of the COPY'd slice (what the consumer keeps up one event at a
    time), built before the slice is repeated."""
    statements = []
    for dimension, expression in DIMENSIONS.items():
        value = expression.replace("channel", "t.channel") if dimension == "channel" else f"t.{expression}"
        statements.append(
            f"""INSERT INTO outcome_rollups (grain, bucket, dimension, value, sent, delivered, opened, clicked)
            SELECT 'hour', t.bucket, '{dimension}', {value}, count(*), count(t.delivered_at),
                   count(*) FILTER (WHERE t.opened), count(*) FILTER (WHERE t.clicked)
            FROM outcome_touches t GROUP BY 2, 4"""
        )
        statements.append(
            f"""INSERT INTO conversion_rollups (grain, bucket, dimension, value, definition_id, model, converted,
                   revenue_minor, revenue_sq)
            SELECT 'hour', t.bucket, '{dimension}', {value}, c.definition_id, c.model, count(*),
                   sum(c.revenue_minor), sum(c.revenue_minor::numeric ^ 2)
            FROM outcome_credits c JOIN outcome_touches t USING (touch_id) GROUP BY 2, 4, 5, 6"""
        )
    statements.append(
        """INSERT INTO outcome_persons (person_id, source, channel_mask, channel_count, sent, delivered, opened,
               clicked)
        SELECT person_id, min(source), bit_or(1 << channel), count(DISTINCT channel), count(*),
               count(delivered_at), count(*) FILTER (WHERE opened), count(*) FILTER (WHERE clicked)
        FROM outcome_touches GROUP BY person_id"""
    )
    statements.append(
        """INSERT INTO outcome_person_conversions (person_id, definition_id, revenue_minor)
        SELECT person_id, definition_id, sum(revenue_minor) FROM outcome_conversions GROUP BY 1, 2"""
    )
    return statements


# Copy k of the slice is the slice shifted by k hours with other persons: its hour rollups are the slice's
# shifted by k hours, its persons the slice's persons under other ids. So the full rollups are the slice's
# summed over the shifts (and the day rows summed from the hour rows), exactly what grouping the 4.1M rows
# would give, at a fraction of the cost.
_EXPAND = [
    "CREATE TEMP TABLE slice_rollups AS SELECT * FROM outcome_rollups",
    "TRUNCATE outcome_rollups",
    """INSERT INTO outcome_rollups (grain, bucket, dimension, value, sent, delivered, opened, clicked)
    SELECT 'hour', bucket - make_interval(hours => k), dimension, value, sum(sent), sum(delivered), sum(opened),
           sum(clicked)
    FROM slice_rollups CROSS JOIN generate_series(0, $1::int) AS k GROUP BY 2, 3, 4""",
    """INSERT INTO outcome_rollups (grain, bucket, dimension, value, sent, delivered, opened, clicked)
    SELECT 'day', date_trunc('day', bucket, 'UTC'), dimension, value, sum(sent), sum(delivered), sum(opened),
           sum(clicked)
    FROM outcome_rollups WHERE grain = 'hour' GROUP BY 2, 3, 4""",
    "CREATE TEMP TABLE slice_conversions AS SELECT * FROM conversion_rollups",
    "TRUNCATE conversion_rollups",
    """INSERT INTO conversion_rollups (grain, bucket, dimension, value, definition_id, model, converted,
           revenue_minor, revenue_sq)
    SELECT 'hour', bucket - make_interval(hours => k), dimension, value, definition_id, model, sum(converted),
           sum(revenue_minor), sum(revenue_sq)
    FROM slice_conversions CROSS JOIN generate_series(0, $1::int) AS k GROUP BY 2, 3, 4, 5, 6""",
    """INSERT INTO conversion_rollups (grain, bucket, dimension, value, definition_id, model, converted,
           revenue_minor, revenue_sq)
    SELECT 'day', date_trunc('day', bucket, 'UTC'), dimension, value, definition_id, model, sum(converted),
           sum(revenue_minor), sum(revenue_sq)
    FROM conversion_rollups WHERE grain = 'hour' GROUP BY 2, 3, 4, 5, 6""",
]
_EXPAND_PERSONS = [
    f"""INSERT INTO outcome_persons
    SELECT {_SHIFTED_PERSON}, source, channel_mask, channel_count, sent, delivered, opened, clicked
    FROM outcome_persons CROSS JOIN generate_series(1, $1::int) AS k""",
    f"""INSERT INTO outcome_person_conversions
    SELECT {_SHIFTED_PERSON}, definition_id, revenue_minor
    FROM outcome_person_conversions CROSS JOIN generate_series(1, $1::int) AS k""",
]
_LABEL = "CASE WHEN p.channel_count >= 3 THEN '3+' ELSE p.channel_count::text END"
_REACH = [
    f"""INSERT INTO reach_rollups (value, persons, delivered, opened, clicked)
    SELECT {_LABEL}, count(*), count(*) FILTER (WHERE p.delivered > 0), count(*) FILTER (WHERE p.opened > 0),
           count(*) FILTER (WHERE p.clicked > 0)
    FROM outcome_persons p WHERE p.channel_count > 0 GROUP BY 1""",
    f"""INSERT INTO reach_conversion_rollups (definition_id, value, converted, revenue_minor, revenue_sq)
    SELECT c.definition_id, {_LABEL}, count(*), sum(c.revenue_minor), sum(c.revenue_minor::numeric ^ 2)
    FROM outcome_person_conversions c JOIN outcome_persons p USING (person_id) GROUP BY 1, 2""",
]


async def run(ctx: BenchContext) -> list[Result]:
    """Seed the analytical copy, build its rollups, then time every report through the API."""
    # One slice of touches is generated here and COPY'd; the full run repeats it inside PostgreSQL with shifted
    # ids, persons and times (Python would take minutes to generate 4.1M rows on a busy 2-core machine).
    copies = 1 if ctx.quick else 20
    messages = 205_000
    persons = messages // 4
    database = ctx.make_database("bench_reports_decisioning")
    rng = random.Random(SEED)
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = now - timedelta(days=90)
    arms = [
        f"{uuid.UUID(int=e + 1)}/{arm}" for e in range(10) for arm in ("subject_a", "subject_b", "holdout")
    ]
    async with (
        ctx.service("decisioning", ctx.service_settings(database, ctx.namespace())) as decisioning,
        ctx.channel(decisioning.target) as channel,
    ):
        stub = reports_pb2_grpc.ReportServiceStub(channel)
        seeded = time.monotonic()
        events = {"sent": 0, "delivered": 0, "opened": 0, "clicked": 0, "converted": 0}
        async with ctx.connect(database) as connection:
            await connection.execute(
                "INSERT INTO conversion_definitions VALUES ($1, 'purchase', 'order_completed', '[]', 604800, "
                "'delivery', 'total', 'EUR', now())",
                DEFINITION,
            )
            for statement in _DROP_KEYS:
                await connection.execute(statement)
            for offset in range(0, messages, CHUNK):
                touches: list[tuple[Any, ...]] = []
                credits: list[tuple[Any, ...]] = []
                conversions: list[tuple[Any, ...]] = []
                for n in range(offset, min(offset + CHUNK, messages)):
                    person = rng.randrange(persons)
                    # Persons differ in how many channels they are reached on: a third email only, a third
                    # email and SMS, a third all three.
                    channel = (3, 4, 5)[rng.randrange(1 + person % 3)]
                    journey = rng.randrange(50)
                    sent_at = start + timedelta(seconds=rng.randrange(90 * 86_400))
                    delivered = rng.random() < 0.92
                    opened = delivered and rng.random() < 0.4
                    clicked = opened and rng.random() < 0.3
                    touch_id = f"journey:{n}"
                    touches.append(
                        (
                            touch_id, "message", uuid.UUID(int=person + 1), channel, f"journey-{journey}",
                            f"template-{journey * 4 + rng.randrange(4)}",
                            arms[rng.randrange(len(arms))] if rng.random() < 0.3 else "none", "none",
                            SOURCES[person % len(SOURCES)], sent_at, sent_at.replace(minute=0, second=0),
                            sent_at + timedelta(seconds=30) if delivered else None, opened, clicked,
                        )
                    )  # fmt: skip
                    events["sent"] += 1
                    events["delivered"] += delivered
                    events["opened"] += opened
                    events["clicked"] += clicked
                    if rng.random() < (0.12 if clicked else 0.04):
                        revenue = rng.randrange(1_000, 20_000)
                        at = sent_at + timedelta(hours=rng.uniform(0, 48))
                        conversions.append((f"order-{n}", DEFINITION, uuid.UUID(int=person + 1), at, revenue))
                        credits.extend(
                            (touch_id, DEFINITION, model, revenue)
                            for model in ("last_touch", "first_touch", "linear")
                        )
                        events["converted"] += 1
                await connection.copy_records_to_table(
                    "outcome_touches", records=touches, columns=_TOUCH_COLUMNS
                )
                await connection.copy_records_to_table(
                    "outcome_credits",
                    records=credits,
                    columns=("touch_id", "definition_id", "model", "revenue_minor"),
                )
                await connection.copy_records_to_table(
                    "outcome_conversions",
                    records=conversions,
                    columns=("event_id", "definition_id", "person_id", "occurred_at", "revenue_minor"),
                )
            copied = time.monotonic() - seeded
            log(f"reports: slice of {messages:,} touches COPY'd in {copied:.0f} s")
            rolled = time.monotonic()
            for statement in _slice_rollups():
                await connection.execute(statement)
            if copies > 1:
                await connection.execute(_REPEAT_TOUCHES, copies - 1, persons)
                await connection.execute(_REPEAT_CONVERSIONS, copies - 1, persons)
                await connection.execute(_REPEAT_CREDITS, copies - 1)
                log(f"reports: slice repeated {copies - 1} times in {time.monotonic() - rolled:.0f} s")
                for statement in _EXPAND_PERSONS:
                    await connection.execute(statement, copies - 1, persons)
            for statement in _EXPAND:
                if "$1" in statement:
                    await connection.execute(statement, copies - 1)
                else:
                    await connection.execute(statement)
            for statement in _REACH:
                await connection.execute(statement)
            for statement in _ADD_KEYS:
                await connection.execute(statement)
            await connection.execute("ANALYZE")
            rollup_s = time.monotonic() - rolled
            events = {key: value * copies for key, value in events.items()}
            messages *= copies
            persons *= copies
            stored = int(await connection.fetchval("SELECT count(*) FROM outcome_touches"))
            assert stored == messages, f"{stored:,} touches stored, {messages:,} meant"
            reached = int(await connection.fetchval("SELECT sum(persons) FROM reach_rollups"))
            rollup_rows = int(await connection.fetchval("SELECT count(*) FROM outcome_rollups"))
            total = sum(events.values())
            log(
                f"reports: {total:,} outcome events ({messages:,} touches, {reached:,} persons reached) in the "
                f"analytical copy; repeated, rolled up and indexed in {rollup_s:.0f} s ({rollup_rows:,} rollup rows)"
            )
            baseline_started = time.monotonic()
            await connection.fetch(_BASELINE, DEFINITION)
            baseline_s = time.monotonic() - baseline_started

        cases = [
            (name, value, r.ATTRIBUTION_MODEL_LAST_TOUCH) for name, value in r.ReportDimension.items()[1:]
        ]
        cases += [
            ("REPORT_DIMENSION_CHANNEL", r.REPORT_DIMENSION_CHANNEL, model)
            for model in (r.ATTRIBUTION_MODEL_FIRST_TOUCH, r.ATTRIBUTION_MODEL_LINEAR)
        ]
        latencies: dict[str, list[float]] = {}
        rows: dict[str, int] = {}
        for name, dimension, model in cases:
            label = f"{name.removeprefix('REPORT_DIMENSION_').lower()} ({r.AttributionModel.Name(model).removeprefix('ATTRIBUTION_MODEL_').lower()})"
            request = r.GetOutcomeReportRequest(
                dimension=dimension, conversion_definition_id=str(DEFINITION), model=model
            )
            timings = []
            for _ in range(10):
                started = time.monotonic()
                response = await stub.GetOutcomeReport(request, timeout=30)
                timings.append((time.monotonic() - started) * 1000)
            latencies[label] = timings
            rows[label] = len(response.rows)
            log(
                f"reports: {label}: median {statistics.median(timings):.0f} ms, max {max(timings):.0f} ms, {len(response.rows)} rows"
            )

    worst = max(max(t) for t in latencies.values())
    return [
        Result(
            SUITE,
            f"GetOutcomeReport over {total / 1e6:.1f}M outcome events, slowest report (max of 10 calls)",
            worst,
            "ms",
            higher_is_better=False,
            baselines=[
                Baseline("template report straight from the touches (no rollups)", baseline_s * 1000, "ms")
            ],
            targets=[Target("<", 1000)],
            notes=f"Analytical copy seeded by COPY (a slice of 205,000 touches, repeated {copies} times in SQL with "
            f"other ids, persons and times): {messages:,} messages to {persons:,} persons over 90 days "
            f"({events['delivered']:,} delivered, {events['opened']:,} opened, {events['clicked']:,} clicked, "
            f"{events['converted']:,} conversions credited under 3 models); hour and day rollups ({rollup_rows:,} "
            "rows) summed from the slice's over its shifts. Every dimension under last touch, the channel report under "
            "first touch and linear too; each asked 10 times in a row over gRPC.",
            details={
                "events": total,
                "per_report_ms": {
                    k: {"median": round(statistics.median(v), 1), "max": round(max(v), 1)}
                    for k, v in latencies.items()
                },
                "rows": rows,
                "seed_s": round(copied, 1),
                "rollup_build_s": round(rollup_s, 1),
            },
        )
    ]
