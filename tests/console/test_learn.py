"""Multi-step journeys, experiments and outcome reports in the console, against the real services.

A multi-step journey (started by TriggerJourney) sends a welcome email, waits for an order or a day, then
branches; an experiment splits its sends between two templates. The retailer's customers are started on it,
some of them buy, and the console shows the journey's graph, each person's run, the experiment's arms with
their intervals, and the reports by channel and by channel count with their CSV.
"""

from __future__ import annotations

import csv
import html as html_lib
import io
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Struct, Value

from omni.common.v1 import common_pb2
from omni.decisioning.v1 import decisioning_pb2 as d
from omni.decisioning.v1 import experiments_pb2 as x
from omni.decisioning.v1 import experiments_pb2_grpc, reports_pb2_grpc
from omni.decisioning.v1 import reports_pb2 as r
from omni.gateway.v1 import gateway_pb2
from omni.identity.v1 import identity_pb2
from omni.profile.v1 import profile_pb2
from omni.segmentation.v1 import segmentation_pb2
from tests.console.conftest import Console, Stack, eventually, open_console


def days(count: int) -> Duration:
    return Duration(seconds=count * 86_400)


@dataclass
class Learn:
    """What the module set up: the journey, the experiment, the conversion, and the persons started on it."""

    journey: d.Journey
    experiment: x.Experiment
    definition: r.ConversionDefinition
    persons: list[str]
    buyers: list[str]


def specs_of(page: str) -> list[dict[str, object]]:
    """The Vega-Lite specs a page hands to vega-embed."""
    return [json.loads(html_lib.unescape(found)) for found in re.findall(r'data-spec="([^"]+)"', page)]


def main_of(page: str) -> str:
    """The page's main part, for a failure's message."""
    return page[page.find("<main") : page.find("</main>")]


@pytest.fixture(scope="module")
async def learn(stack: Stack) -> AsyncIterator[Learn]:
    omni = stack.omni
    run = uuid.uuid4().hex[:8]
    experiments = experiments_pb2_grpc.ExperimentServiceStub(omni.channels["decisioning"])
    reports = reports_pb2_grpc.ReportServiceStub(omni.channels["decisioning"])
    templates = []
    for arm in ("a", "b"):
        template_id = f"welcome-{arm}-{run}"
        await omni.gateway.CreateTemplate(
            gateway_pb2.CreateTemplateRequest(
                template=gateway_pb2.Template(
                    id=template_id,
                    channel=common_pb2.CHANNEL_EMAIL,
                    subject=f"Welcome {arm}",
                    body_text="Hi.",
                )
            )
        )
        templates.append(template_id)
    spec = d.JourneySpec(
        entry=d.JourneyEntry(api=d.ApiEntryTrigger()),
        entry_rule=d.EntryRule(frequency=d.EntryRule.FREQUENCY_ONCE),
        steps=[
            d.JourneyStep(
                id="welcome",
                message=d.MessageStep(
                    channels=[common_pb2.CHANNEL_EMAIL], template_id=templates[0], next="wait-order"
                ),
            ),
            d.JourneyStep(
                id="wait-order",
                wait_for_event=d.WaitForEventStep(
                    event_type="order_completed", timeout=days(1), on_event="thanks", on_timeout="vip"
                ),
            ),
            d.JourneyStep(
                id="vip",
                condition=d.ConditionStep(
                    trait=d.ConditionStep.TraitIs(trait="tier", equals="gold"),
                    if_true="split",
                    if_false="done",
                ),
            ),
            d.JourneyStep(
                id="split",
                random_split=d.RandomSplitStep(
                    branches=[
                        d.RandomSplitStep.Branch(name="nudge", percent=70, next="nudge-wait"),
                        d.RandomSplitStep.Branch(name="quiet", percent=30, next="done"),
                    ]
                ),
            ),
            d.JourneyStep(id="nudge-wait", wait=d.WaitStep(duration=days(2), next="done")),
            d.JourneyStep(
                id="thanks",
                update_profile=d.UpdateProfileStep(
                    trait="welcomed", value=Value(bool_value=True), next="done"
                ),
            ),
            d.JourneyStep(id="done", exit=d.ExitStep()),
        ],
        exit_criteria=[d.ExitCriterion(event_type="account_closed")],
    )
    created = await omni.decisioning.CreateJourney(
        d.CreateJourneyRequest(journey=d.Journey(name=f"welcome-series-{run}", spec=spec))
    )
    journey = (
        await omni.decisioning.PublishJourney(d.PublishJourneyRequest(journey_id=created.journey.id))
    ).journey
    definition = (
        await reports.CreateConversionDefinition(
            r.CreateConversionDefinitionRequest(
                definition=r.ConversionDefinition(
                    name=f"purchase-{run}",
                    event_type="order_completed",
                    window_s=7 * 86_400,
                    revenue_property="total",
                    currency="USD",
                )
            )
        )
    ).definition
    # Experiments split the sends of one-message journeys: persons entering the signed-up segment get a
    # welcome subject by arm.
    signed_up = (
        await omni.segmentation.CreateSegment(
            segmentation_pb2.CreateSegmentRequest(
                segment=segmentation_pb2.Segment(
                    name=f"signed-up-{run}",
                    condition=segmentation_pb2.Condition(
                        event_count=segmentation_pb2.EventCountCondition(
                            event_type=f"signed_up_{run}",
                            window=days(30),
                            comparison=segmentation_pb2.COMPARISON_GTE,
                            count=1,
                        )
                    ),
                )
            )
        )
    ).segment
    signup_journey = (
        await omni.decisioning.CreateJourney(
            d.CreateJourneyRequest(
                journey=d.Journey(
                    name=f"signup-welcome-{run}",
                    trigger_segment_id=signed_up.id,
                    channels=[common_pb2.CHANNEL_EMAIL],
                    template_id=templates[0],
                )
            )
        )
    ).journey
    experiment = (
        await experiments.CreateExperiment(
            x.CreateExperimentRequest(
                experiment=x.Experiment(
                    name=f"welcome-subject-{run}",
                    description="Which welcome subject brings the first order?",
                    attachment=x.ExperimentAttachment(journey_id=signup_journey.id),
                    arms=[
                        x.ExperimentArm(
                            name="subject_a", allocation_percent=50, template_id=templates[0], control=True
                        ),
                        x.ExperimentArm(name="subject_b", allocation_percent=50, template_id=templates[1]),
                    ],
                    conversion_definition_id=definition.id,
                )
            )
        )
    ).experiment
    await experiments.StartExperiment(x.StartExperimentRequest(experiment_id=experiment.id))

    persons = []
    for customer in stack.loaded.customers:
        lookup = await omni.identity.LookupPerson(
            identity_pb2.LookupPersonRequest(
                identifier=common_pb2.Identifier(type="email", value=customer.email)
            )
        )
        person_id = lookup.person.id
        await omni.profile.SetConsent(
            profile_pb2.SetConsentRequest(
                person_id=person_id,
                consent=profile_pb2.Consent(
                    channel=common_pb2.CHANNEL_EMAIL,
                    state=profile_pb2.CONSENT_STATE_GRANTED,
                    purpose=profile_pb2.CONSENT_PURPOSE_MARKETING,
                    source="signup",
                ),
                request_id=f"learn-{run}-{person_id}",
            )
        )
        persons.append(person_id)

    for person_id in persons:
        await omni.decisioning.TriggerJourney(
            d.TriggerJourneyRequest(
                journey_id=journey.id, person_id=person_id, request_id=f"{run}-{person_id}"
            )
        )

    for customer in stack.loaded.customers:
        await omni.profile.TrackEvent(
            profile_pb2.TrackEventRequest(
                event=profile_pb2.Event(
                    id=str(uuid.uuid4()),
                    type=f"signed_up_{run}",
                    channel=common_pb2.CHANNEL_WEB,
                    identifiers=[common_pb2.Identifier(type="email", value=customer.email)],
                )
            )
        )

    async def exposed() -> int:
        results = await experiments.GetExperimentResults(
            x.GetExperimentResultsRequest(experiment_id=experiment.id)
        )
        return sum(a.exposures for a in results.arms)

    await eventually(exposed, "persons exposed to the experiment's arms", within_s=60)
    buyers = persons[:4]
    for customer in stack.loaded.customers[:4]:
        properties = Struct()
        properties.update({"total": 59.9, "order_id": f"o-{uuid.uuid4().hex[:8]}"})
        await omni.profile.TrackEvent(
            profile_pb2.TrackEventRequest(
                event=profile_pb2.Event(
                    id=str(uuid.uuid4()),
                    type="order_completed",
                    channel=common_pb2.CHANNEL_WEB,
                    identifiers=[common_pb2.Identifier(type="email", value=customer.email)],
                    properties=properties,
                )
            )
        )
    yield Learn(journey, experiment, definition, persons, buyers)


async def test_a_multi_step_journey_is_its_graph_with_state_and_version(
    learn: Learn, console: Console
) -> None:
    listing = (await console.http.get("/journeys")).text
    row = re.search(rf"{learn.journey.name}</a></td><td>([^<]*)</td>", listing)
    assert row and row.group(1).startswith("published, version 1"), listing[-3000:]
    page = await console.http.get(f"/journeys/{learn.journey.id}")
    assert page.status_code == 200
    text = page.text
    assert "published" in text and "version 1" in text
    assert "Started by TriggerJourney" in text and "once ever per person" in text
    for step_id in ("welcome", "wait-order", "vip", "split", "nudge-wait", "thanks", "done"):
        assert f'id="step-{step_id}"' in text, step_id
    assert f"Send template {learn.journey.spec.steps[0].message.template_id}" in text
    assert "Wait for event order_completed" in text and "at most 1 day" in text
    assert "If trait tier = gold" in text and "Random split" in text and "Wait for 2 days" in text
    assert "Set trait welcomed" in text and "to true" in text
    # The ways out are labelled and point at their steps.
    for label, target in [
        ("event", "thanks"),
        ("timeout", "vip"),
        ("if true", "split"),
        ("if false", "done"),
        ("nudge (70%)", "nudge-wait"),
        ("quiet (30%)", "done"),
    ]:
        assert re.search(
            rf'<span class="exit-label">{re.escape(label)}</span> → <a href="#step-{target}">', text
        ), (label, target)
    assert "event account_closed is tracked" in text


async def test_the_person_page_shows_each_run_at_its_step_with_its_history(
    learn: Learn, console: Console
) -> None:
    person_id = learn.persons[-1]

    async def shown() -> str | None:
        text = (await console.http.get(f"/persons/{person_id}")).text
        return text if "at step <code>wait-order</code>" in text else None

    text = await eventually(shown, "the run waiting for an order on the person's page")
    assert "Journey runs" in text and learn.journey.name in text and "version 1" in text
    assert re.search(r"<td><code>welcome</code></td><td>message</td><td>sent</td>", text), "the history"
    assert "active" in text


async def test_experiments_list_and_results_with_intervals(learn: Learn, console: Console) -> None:
    listing = (await console.http.get("/experiments")).text
    assert learn.experiment.name in listing and "subject_a 50% (control)" in listing, main_of(listing)

    async def converted() -> str | None:
        text = (await console.http.get(f"/experiments/{learn.experiment.id}")).text
        return text if re.search(r"<td class=\"num\">[1-9]\d*</td>\s*<td>\d", text) else None

    text = await eventually(converted, "conversions in the experiment's results", within_s=60)
    assert "subject_a (control)" in text and "subject_b" in text
    assert "Sample ratio as planned" in text or "Sample-ratio mismatch" in text
    assert re.search(r"\d+\.\d% \[\d+\.\d%, \d+\.\d%\]", text), "a rate with its interval"
    specs = specs_of(text)
    assert specs, "a chart of the rates"
    rate = specs[0]
    layers = [layer["mark"]["type"] for layer in rate["layer"]]  # type: ignore[index]
    assert layers == ["rule", "errorbar", "point"]
    values = rate["data"]["values"]  # type: ignore[index]
    assert [v["label"] for v in values] == ["subject_a", "subject_b"]
    assert all(v["low"] <= v["value"] <= v["high"] for v in values)
    assert "the data as a table" in text, "the chart's table alternative"
    verdicts = re.findall(r'<td class="verdict">([^<]+)</td>', text)
    assert verdicts[0] == "control"
    assert verdicts[1].startswith(("not yet significant: ", "better", "worse", "—")), verdicts
    assert (await console.http.get(f"/experiments/{uuid.uuid4()}")).status_code == 404


async def test_reports_by_channel_and_channel_count_with_csv(learn: Learn, console: Console) -> None:
    query = {"definition": learn.definition.id, "model": "last-touch"}

    async def reported() -> str | None:
        text = (await console.http.get("/reports", params=query)).text
        return text if '<th scope="row">email</th>' in text and '<th scope="row">1</th>' in text else None

    try:
        text = await eventually(reported, "the channel and channel-count reports", within_s=60)
    except AssertionError:
        raise AssertionError(main_of((await console.http.get("/reports", params=query)).text)) from None
    assert "Observational." in text and "association" in text
    specs = specs_of(text)
    assert len(specs) == 2 and {s["description"] for s in specs} == {  # type: ignore[misc]
        "Conversion rate by channel with 95% intervals",
        "Conversion rate by channel count with 95% intervals",
    }
    assert f'href="/reports/channel.csv?definition={learn.definition.id}&amp;model=last-touch"' in text
    export = await console.http.get("/reports/channel.csv", params=query)
    assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert any(row.get("value") == "email" for row in rows), rows
    counts = await console.http.get("/reports/channel-count.csv", params=query)
    assert (counts.status_code == 200 and "3+" in counts.text) or "1" in counts.text
    assert (await console.http.get("/reports/weather.csv", params=query)).status_code == 400
    assert (await console.http.get("/reports", params={"model": "psychic"})).status_code == 400


async def test_without_the_read_scopes_the_pages_say_so(stack: Stack, learn: Learn) -> None:
    scopes = ["decisioning.journeys:read", "identity.persons:read"]
    async with open_console(stack.settings.model_copy(update={"scopes": scopes})) as limited:
        listing = (await limited.http.get("/experiments")).text
        assert "Not shown: the console&#39;s credentials do not hold decisioning.experiments:read" in listing
        reports_page = (await limited.http.get("/reports")).text
        assert "do not hold decisioning.reports:read" in reports_page
        export = await limited.http.get("/reports/channel.csv", params={"definition": learn.definition.id})
        assert export.status_code == 403
