"""Outcome reports over JetStream, PostgreSQL and gRPC: the gateway's sends and receipts and profile's events
are fed as those services publish them, reports come back with intervals. A simulated multi-channel population
gives the channel-count report; one person's three touches show the attribution models."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf.struct_pb2 import Struct, Value
from google.protobuf.timestamp_pb2 import Timestamp

from omni.common.v1 import common_pb2 as c
from omni.decisioning.v1 import reports_pb2 as r
from omni.decisioning.v1 import reports_pb2_grpc
from omni.gateway.v1 import events_pb2 as gateway_events
from omni.gateway.v1 import gateway_pb2 as g
from omni.identity.v1 import events_pb2 as identity_events
from omni.profile.v1 import events_pb2 as profile_events
from omni.profile.v1 import profile_pb2 as p

from .support import Decisioning

CHANNELS = [c.CHANNEL_EMAIL, c.CHANNEL_SMS, c.CHANNEL_PUSH]
# The simulated world: persons reached on more channels buy more often (and, in truth, for other reasons too).
BUY_RATE = {1: 0.10, 2: 0.20, 3: 0.35}


def _reports(decisioning: Decisioning) -> reports_pb2_grpc.ReportServiceStub:
    return reports_pb2_grpc.ReportServiceStub(
        grpc.aio.insecure_channel(f"127.0.0.1:{decisioning.runtime.port}")
    )


async def _definition(reports: reports_pb2_grpc.ReportServiceStub, case: str) -> str:
    return (
        await reports.CreateConversionDefinition(
            r.CreateConversionDefinitionRequest(
                definition=r.ConversionDefinition(
                    name=f"purchase-{case}-{uuid.uuid4().hex[:6]}",
                    event_type="order_completed",
                    filters=[
                        r.ConversionFilter(
                            path="case", operator=r.FILTER_OPERATOR_EQUAL, value=Value(string_value=case)
                        )
                    ],
                    window_s=86_400,
                    revenue_property="total",
                    currency="EUR",
                )
            )
        )
    ).definition.id


async def _sent(
    decisioning: Decisioning, person: uuid.UUID, channel: int, at: datetime, template: str
) -> None:
    message = g.Message(
        request_id=f"test:{uuid.uuid4()}",
        person_id=str(person),
        channel=channel,
        template_id=template,  # type: ignore[arg-type]
    )
    message.update_time.FromDatetime(at)
    await decisioning.feed(
        gateway_events.MessageSentEvent(message=message),
        event_type="gateway.message_sent",
        person_id=str(person),
    )
    receipt = gateway_events.MessageReceiptEvent(message=message, kind=gateway_events.RECEIPT_KIND_DELIVERED)
    receipt.occur_time.FromDatetime(at + timedelta(seconds=5))
    await decisioning.feed(
        receipt,
        event_type="gateway.message_receipt",
        person_id=str(person),
    )


async def _tracked(
    decisioning: Decisioning,
    person: uuid.UUID,
    kind: str,
    at: datetime,
    *,
    case: str = "",
    total: float = 0,
    source: str = "",
) -> None:
    properties = Struct()
    if case:
        properties.update({"case": case, "total": total})
    context = Struct()
    if source:
        context.update({"campaign": {"source": source, "medium": "social"}})
    event = p.Event(
        id=str(uuid.uuid4()), type=kind, person_id=str(person), properties=properties, context=context
    )
    event.occurred_at.FromDatetime(at)
    await decisioning.feed(
        profile_events.EventTrackedEvent(event=event),
        event_type="profile.event_tracked",
        person_id=str(person),
    )


async def test_channel_count_report_over_a_multi_channel_population(decisioning: Decisioning) -> None:
    reports = _reports(decisioning)
    case = f"population-{uuid.uuid4().hex[:6]}"
    definition = await _definition(reports, case)
    rng = random.Random(42)
    now = datetime.now(UTC)
    reached: dict[int, int] = {1: 0, 2: 0, 3: 0}
    bought: dict[int, int] = {1: 0, 2: 0, 3: 0}
    for _ in range(240):
        person = uuid.uuid4()
        count = rng.choice([1, 1, 2, 3])
        await _tracked(decisioning, person, "signed_up", now - timedelta(hours=2), source="instagram")
        for channel in CHANNELS[:count]:
            await _sent(decisioning, person, channel, now - timedelta(hours=1), "population")
        reached[count] += 1
        if rng.random() < BUY_RATE[count]:
            bought[count] += 1
            await _tracked(decisioning, person, "order_completed", now, case=case, total=50.0)
    # About a thousand events for the outcomes consumer: more than support.WAIT_S on a busy machine.
    deadline = asyncio.get_running_loop().time() + 60
    while await decisioning.scalar(
        "SELECT count(*) FROM outcome_person_conversions WHERE definition_id = :d", d=uuid.UUID(definition)
    ) < sum(bought.values()):
        assert asyncio.get_running_loop().time() < deadline, "the population's conversions were not applied"
        await asyncio.sleep(0.1)
    while await decisioning.scalar(
        "SELECT count(delivered_at) FROM outcome_touches WHERE template = 'population'"
    ) < sum(count * n for count, n in reached.items()):
        assert asyncio.get_running_loop().time() < deadline, "the population's sends were not applied"
        await asyncio.sleep(0.1)
    response = await reports.GetOutcomeReport(
        r.GetOutcomeReportRequest(
            dimension=r.REPORT_DIMENSION_CHANNEL_COUNT, conversion_definition_id=definition
        )
    )
    assert response.note.startswith("Observational")
    rows = {row.value: row for row in response.rows}
    # Other tests of the module reach persons on one channel too; count only this population's conversions.
    for count, label in ((1, "1"), (2, "2"), (3, "3+")):
        row = rows[label]
        assert row.sent >= reached[count]
        assert row.converted == bought[count]
        assert row.revenue_minor == 5000 * bought[count]
        assert row.conversion_rate.low <= row.conversion_rate.value <= row.conversion_rate.high
        assert (
            row.revenue_per_recipient.low <= row.revenue_per_recipient.value <= row.revenue_per_recipient.high
        )
    assert rows["3+"].sent == reached[3] and rows["2"].sent == reached[2]
    assert rows["3+"].delivered == reached[3]
    # With these rates and counts, 3+ channels beats 1 with intervals apart (observationally).
    assert rows["3+"].conversion_rate.low > rows["1"].conversion_rate.value

    source = await reports.GetOutcomeReport(
        r.GetOutcomeReportRequest(
            dimension=r.REPORT_DIMENSION_ACQUISITION_SOURCE, conversion_definition_id=definition
        )
    )
    by_source = {row.value: row for row in source.rows}
    assert by_source["instagram"].sent == sum(count * n for count, n in reached.items())


async def test_attribution_models_credit_the_touches_in_the_window(decisioning: Decisioning) -> None:
    reports = _reports(decisioning)
    case = f"attribution-{uuid.uuid4().hex[:6]}"
    definition = await _definition(reports, case)
    person = uuid.uuid4()
    now = datetime.now(UTC)
    template = f"attr-{uuid.uuid4().hex[:6]}"
    await _sent(
        decisioning, person, c.CHANNEL_EMAIL, now - timedelta(days=3), template
    )  # outside the 1-day window
    await _sent(decisioning, person, c.CHANNEL_EMAIL, now - timedelta(hours=3), template)
    await _sent(decisioning, person, c.CHANNEL_SMS, now - timedelta(hours=2), template)
    await _sent(decisioning, person, c.CHANNEL_PUSH, now - timedelta(hours=1), template)
    await _tracked(decisioning, person, "order_completed", now, case=case, total=90.01)
    await decisioning.eventually(
        "SELECT count(*) FROM conversion_rollups WHERE definition_id = :d", d=uuid.UUID(definition)
    )

    async def credited(model: r.AttributionModel.ValueType) -> dict[str, tuple[int, int]]:
        report = await reports.GetOutcomeReport(
            r.GetOutcomeReportRequest(
                dimension=r.REPORT_DIMENSION_CHANNEL, conversion_definition_id=definition, model=model
            )
        )
        return {row.value: (row.converted, row.revenue_minor) for row in report.rows if row.converted}

    assert await credited(r.ATTRIBUTION_MODEL_LAST_TOUCH) == {"push": (1, 9001)}
    assert await credited(r.ATTRIBUTION_MODEL_FIRST_TOUCH) == {"email": (1, 9001)}
    assert await credited(r.ATTRIBUTION_MODEL_LINEAR) == {
        "email": (1, 3000),
        "sms": (1, 3000),
        "push": (1, 3001),
    }
    # The template report over the window of the last two days leaves the old email out of sent.
    report = await reports.GetOutcomeReport(
        r.GetOutcomeReportRequest(
            dimension=r.REPORT_DIMENSION_TEMPLATE,
            conversion_definition_id=definition,
            start_time=_ts(now - timedelta(days=2)),
        )
    )
    row = next(row for row in report.rows if row.value == template)
    assert (row.sent, row.delivered, row.converted, row.revenue_minor) == (3, 3, 1, 9001)


def _ts(at: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return stamp


async def test_erasure_deletes_the_persons_outcomes_and_later_ones_are_dropped(
    decisioning: Decisioning,
) -> None:
    reports = _reports(decisioning)
    case = f"erasure-{uuid.uuid4().hex[:6]}"
    await _definition(reports, case)
    person = uuid.uuid4()
    now = datetime.now(UTC)
    await _sent(decisioning, person, c.CHANNEL_EMAIL, now - timedelta(hours=1), "erasure")
    await _tracked(decisioning, person, "order_completed", now, case=case, total=10.0)
    await decisioning.eventually(
        "SELECT count(*) FROM outcome_person_conversions WHERE person_id = :p", p=person
    )
    await decisioning.feed(
        identity_events.PersonForgottenEvent(person_id=str(person), forgotten_person_ids=[str(person)]),
        event_type="identity.person_forgotten",
        person_id=str(person),
    )
    await decisioning.eventually("SELECT count(*) FROM person_lineage WHERE person_id = :p", p=person)
    # A send announced after the erasure (staged before it) is dropped, not recorded again.
    await _sent(decisioning, person, c.CHANNEL_SMS, now, "erasure")
    marker = uuid.uuid4()
    await _sent(decisioning, marker, c.CHANNEL_SMS, now, "erasure")
    await decisioning.eventually("SELECT count(*) FROM outcome_touches WHERE person_id = :p", p=marker)
    for table in ("outcome_touches", "outcome_conversions", "outcome_persons", "outcome_person_conversions"):
        assert await decisioning.scalar(f"SELECT count(*) FROM {table} WHERE person_id = :p", p=person) == 0
