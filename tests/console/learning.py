"""What the console's learning pages are tested with: a multi-step journey (started by TriggerJourney) that
sends a welcome email, waits for an order or a day, then branches; a one-message journey whose sends an
experiment splits between two subjects; a conversion definition; the retailer's customers started on both,
and some of them buying."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

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
from tests.console.conftest import Stack, eventually


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


async def set_up(stack: Stack) -> Learn:
    """The journeys, the conversion and the experiment, with the retailer's customers going through them."""
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
    return Learn(journey, experiment, definition, persons, buyers)
