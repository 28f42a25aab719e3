"""`omni apply|diff|get` on every kind, and `omni person show`, against the real services.

The round trip: files applied to an empty installation create everything; diff then finds nothing to do;
`get all` prints documents that apply takes unchanged (nothing to do again); a changed file is an update
through the Update RPCs (with the changed fields as the mask), a removed object is archived with --prune,
and a change a service cannot make (a one-message journey, a computed trait, a running experiment's arms, a
conversion definition) is reported, not half-done. A changed multi-step journey is published as its next
version, the one before staying readable.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import yaml

from omni.common.v1 import common_pb2
from omni.decisioning.v1 import (
    decisioning_pb2,
    experiments_pb2,
    experiments_pb2_grpc,
    reports_pb2,
    reports_pb2_grpc,
)
from omni.profile.v1 import profile_pb2
from omni.segmentation.v1 import segmentation_pb2
from tests.e2e.cli import omni_cli
from tests.e2e.conftest import Omni

SEGMENTS = """\
apiVersion: omni/v1
kind: Segment
spec:
  name: cli-buyers
  description: bought at least once in 30 days
  condition:
    event_count:
      event_type: order_completed
      window: 2592000s
      comparison: COMPARISON_GTE
      count: '1'
---
apiVersion: omni/v1
kind: Segment
spec:
  name: cli-gold
  condition:
    trait: {trait: plan, comparison: COMPARISON_EQ, value: gold}
"""

REST = """\
apiVersion: omni/v1
kind: ComputedTrait
spec:
  name: orders_90d
  kind: COMPUTED_TRAIT_KIND_COUNT
  event_type: order_completed
  window_days: 90
---
apiVersion: omni/v1
kind: Template
spec:
  id: cli-welcome
  channel: CHANNEL_EMAIL
  subject: Welcome, {{ first_name }}
  body_text: Nice to meet you.
---
apiVersion: omni/v1
kind: Offer
spec:
  name: cli-free-shipping
  description: Free shipping for buyers
  touchpoints: [checkout]
  segment: cli-buyers
  priority: 10
  valid_from: 2026-01-01T00:00:00Z
---
apiVersion: omni/v1
kind: Journey
spec:
  name: cli-welcome-journey
  trigger_segment: cli-gold
  channels: [CHANNEL_EMAIL]
  template_id: cli-welcome
"""


async def test_apply_diff_get_round_trip_of_every_kind(omni: Omni, tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "segments.yaml").write_text(SEGMENTS)
    (config / "rest.yml").write_text(REST)

    code, out = await omni_cli(omni, "diff", "-f", str(config))
    assert code == 1, out
    assert out.count("+ create") == 6 and "trigger_segment: cli-gold" in out, out

    code, out = await omni_cli(omni, "apply", "-f", str(config))
    assert code == 0, out
    assert "6 created, 0 updated, 0 archived, 0 unchanged" in out, out
    segments = (await omni.segmentation.ListSegments(segmentation_pb2.ListSegmentsRequest())).segments
    by_name = {s.name: s for s in segments}
    offers = (await omni.decisioning.ListOffers(decisioning_pb2.ListOffersRequest())).offers
    assert [(o.name, o.segment_id, o.touchpoints[:]) for o in offers] == [
        ("cli-free-shipping", by_name["cli-buyers"].id, ["checkout"])
    ]
    journeys = (await omni.decisioning.ListJourneys(decisioning_pb2.ListJourneysRequest())).journeys
    assert [(j.name, j.trigger_segment_id, j.template_id) for j in journeys] == [
        ("cli-welcome-journey", by_name["cli-gold"].id, "cli-welcome")
    ]
    traits = (await omni.profile.ListComputedTraits(profile_pb2.ListComputedTraitsRequest())).computed_traits
    assert "orders_90d" in [t.name for t in traits]  # beside the ones profile defines itself

    # Applied again: nothing to do (and the creates' idempotency keys would have answered the same).
    code, out = await omni_cli(omni, "diff", "-f", str(config))
    assert code == 0 and "no changes" in out, out
    code, out = await omni_cli(omni, "apply", "-f", str(config))
    assert code == 0 and "0 created, 0 updated, 0 archived, 6 unchanged" in out, out

    # get prints what apply takes unchanged: references by name, no server fields.
    code, exported = await omni_cli(omni, "get", "all")
    assert code == 0, exported
    documents = list(yaml.safe_load_all(exported))
    names = sorted((d["kind"], d["spec"].get("name") or d["spec"]["id"]) for d in documents)
    assert [n for n in names if n[1].startswith("cli-") or n[1] == "orders_90d"] == [
        ("ComputedTrait", "orders_90d"),
        ("Journey", "cli-welcome-journey"),
        ("Offer", "cli-free-shipping"),
        ("Segment", "cli-buyers"),
        ("Segment", "cli-gold"),
        ("Template", "cli-welcome"),
    ]
    offer = next(d for d in documents if d["kind"] == "Offer")["spec"]
    assert offer["segment"] == "cli-buyers" and "segment_id" not in offer and "version" not in offer
    (tmp_path / "exported.yaml").write_text(exported)
    code, out = await omni_cli(omni, "diff", "-f", str(tmp_path / "exported.yaml"))
    assert code == 0 and "no changes" in out, out
    code, one = await omni_cli(omni, "get", "segments", "cli-gold")
    assert code == 0 and [d["spec"]["name"] for d in yaml.safe_load_all(one)] == ["cli-gold"]

    # A change: the update carries only the changed fields; the version moves on.
    before = by_name["cli-buyers"]
    (config / "segments.yaml").write_text(SEGMENTS.replace("count: '1'", "count: '2'"))
    (config / "rest.yml").write_text(
        REST.replace("priority: 10", "priority: 20").replace("Nice to meet you.", "Welcome aboard.")
    )
    code, out = await omni_cli(omni, "diff", "-f", str(config))
    assert code == 1, out
    assert (
        "~ update segments/cli-buyers (condition)" in out
        and "~ update offers/cli-free-shipping (priority)" in out
    )
    assert "~ update templates/cli-welcome (body_text)" in out, out
    code, out = await omni_cli(omni, "apply", "-f", str(config))
    assert code == 0 and "0 created, 3 updated, 0 archived, 3 unchanged" in out, out
    after = (
        await omni.segmentation.GetSegment(segmentation_pb2.GetSegmentRequest(segment_id=before.id))
    ).segment
    assert after.condition.event_count.count == 2 and after.version > before.version
    assert after.description == before.description

    # Prune: the offer left out of the files is archived; computed traits (profile's own among them) cannot
    # be, which is said, not failed.
    (config / "rest.yml").write_text(REST.split("---\napiVersion: omni/v1\nkind: Offer")[0])
    (config / "more.yaml").write_text(
        textwrap.dedent("""\
            kind: Offer
            spec: {name: cli-other, touchpoints: [home]}
            """)
    )
    code, out = await omni_cli(omni, "apply", "-f", str(config), "--prune")
    assert code == 0, out
    assert "created offers/cli-other" in out and "archived offers/cli-free-shipping" in out, out
    assert "cannot archive computed_traits/orders_30d" in out, out
    offers = (await omni.decisioning.ListOffers(decisioning_pb2.ListOffersRequest())).offers
    assert [o.name for o in offers] == ["cli-other"]

    # A change decisioning has no RPC for is reported and refused; the rest is still applied.
    (config / "rest.yml").write_text(REST.replace("trigger_segment: cli-gold", "trigger_segment: cli-buyers"))
    code, out = await omni_cli(omni, "apply", "-f", str(config))
    assert code == 1, out
    assert "not applied journeys/cli-welcome-journey" in out and "decisioning cannot change journeys" in out


async def test_apply_explains_bad_files_and_unreachable_services(omni: Omni, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Segment\nspec: {name: x, colour: red}\n")
    code, out = await omni_cli(omni, "apply", "-f", str(bad))
    assert code == 2 and "Segment has no field colour" in out, out
    bad.write_text("kind: Offer\nspec: {name: lonely, segment: nowhere}\n")
    code, out = await omni_cli(omni, "diff", "-f", str(bad))
    assert code == 2 and "segment 'nowhere': no such Segment" in out, out
    bad.write_text(
        "kind: Segment\nspec: {name: Bad Name, condition: {trait: {trait: plan, comparison: COMPARISON_EXISTS}}}\n"
    )
    code, out = await omni_cli(omni, "apply", "-f", str(bad))
    assert code == 1 and "INVALID_ARGUMENT" in out and "name" in out, out

    env_target = {"OMNI_CLI_SEGMENTATION_TARGET": "127.0.0.1:1"}
    code, out = await omni_cli(omni, "get", "segments", env=env_target)
    assert code == 2 and "cannot reach segmentation at 127.0.0.1:1" in out, out


async def test_person_show_prints_the_360_view(omni: Omni) -> None:
    event = profile_pb2.Event(
        id="cli-order-1",
        type="order_completed",
        channel=common_pb2.CHANNEL_STORE,
        identifiers=[
            common_pb2.Identifier(type="email", value="ada@example.com"),
            common_pb2.Identifier(type="loyalty_card", value="LC-77"),
        ],
        source="pos",
    )
    event.properties.update({"order_id": "o-1", "revenue": 42.5})
    event.traits.update({"first_name": "Ada", "plan": "gold"})
    person_id = (await omni.profile.TrackEvent(profile_pb2.TrackEventRequest(event=event))).person_id
    await omni.profile.SetConsent(
        profile_pb2.SetConsentRequest(
            person_id=person_id,
            consent=profile_pb2.Consent(
                channel=common_pb2.CHANNEL_EMAIL,
                state=profile_pb2.CONSENT_STATE_GRANTED,
                purpose=profile_pb2.CONSENT_PURPOSE_MARKETING,
                source="web",
            ),
        )
    )
    for who in ("ada@example.com", "loyalty_card:LC-77", person_id):
        code, out = await omni_cli(omni, "person", "show", who)
        assert code == 0, out
        assert person_id in out
        for text in ("ada@example.com", "LC-77", "first_name", "Ada", "gold", "pos", "marketing", "granted"):
            assert text in out, (text, out)
        assert "order_completed" in out and "store" in out and "revenue=42.5" in out
    code, out = await omni_cli(omni, "person", "show", "nobody@example.com")
    assert code == 2 and "no person with email 'nobody@example.com'" in out, out


FLOW = """\
apiVersion: omni/v1
kind: Segment
spec:
  name: cli-vip
  condition:
    trait: {trait: tier, comparison: COMPARISON_EQ, value: gold}
---
apiVersion: omni/v1
kind: Template
spec: {id: cli-cart-email, channel: CHANNEL_EMAIL, subject: Your cart, body_text: Come back.}
---
apiVersion: omni/v1
kind: Template
spec: {id: cli-cart-email-b, channel: CHANNEL_EMAIL, subject: "Still thinking?", body_text: Come back.}
---
apiVersion: omni/v1
kind: Template
spec: {id: cli-cart-sms, channel: CHANNEL_SMS, body_text: Your cart is still there}
---
apiVersion: omni/v1
kind: ConversionDefinition
spec:
  name: cli-purchase
  event_type: order_completed
  filters: [{path: total, operator: FILTER_OPERATOR_GREATER, value: 0}]
  window_s: 604800
  revenue_property: total
  currency: EUR
---
apiVersion: omni/v1
kind: MultiStepJourney
spec:
  name: cli-cart
  entry: {event: {event_type: cart_abandoned}}
  entry_rule: {frequency: FREQUENCY_EVERY_TIME, key_property: cart_id}
  steps:
  - {id: email, message: {channels: [CHANNEL_EMAIL], template_id: cli-cart-email, next: wait-order}}
  - {id: wait-order, wait_for_event: {event_type: order_completed, match_key: true, timeout: 86400s, on_timeout: vip}}
  - {id: vip, condition: {in_segment: cli-vip, if_true: sms}}
  - {id: sms, message: {channels: [CHANNEL_SMS], template_id: cli-cart-sms}}
  exit_criteria: [{event_type: order_completed, match_key: true}]
---
apiVersion: omni/v1
kind: MultiStepJourney
spec:
  name: cli-vip-welcome
  entry: {segment: {segment: cli-vip}}
  steps:
  - {id: hello, message: {channels: [CHANNEL_EMAIL], template_id: cli-cart-email}}
---
apiVersion: omni/v1
kind: Experiment
spec:
  name: cli-cart-subjects
  description: Which subject line brings carts back?
  attachment: {journey: cli-cart}
  arms:
  - {name: subject_a, allocation_percent: 45, template_id: cli-cart-email, control: true}
  - {name: subject_b, allocation_percent: 45, template_id: cli-cart-email-b}
  - {name: holdout, allocation_percent: 10, holdout: true}
  conversion_definition: cli-purchase
  state: EXPERIMENT_STATE_RUNNING
"""


async def test_journeys_experiments_and_conversions_round_trip(omni: Omni, tmp_path: Path) -> None:
    experiments = experiments_pb2_grpc.ExperimentServiceStub(omni.channels["decisioning"])
    reports = reports_pb2_grpc.ReportServiceStub(omni.channels["decisioning"])
    config = tmp_path / "flow.yaml"
    config.write_text(FLOW)

    # Nothing exists yet: the plan names what the journeys and the experiment refer to by name.
    code, out = await omni_cli(omni, "diff", "-f", str(config))
    assert code == 1, out
    assert out.count("+ create") == 8, out
    assert "in_segment: cli-vip" in out and "journey: cli-cart" in out and "<new" not in out, out

    code, out = await omni_cli(omni, "apply", "-f", str(config))
    assert code == 0, out
    assert "8 created, 0 updated, 0 archived, 0 unchanged" in out, out
    segment = (await omni.segmentation.ListSegments(segmentation_pb2.ListSegmentsRequest())).segments[0]
    journeys = {
        j.name: j
        for j in (await omni.decisioning.ListJourneys(decisioning_pb2.ListJourneysRequest())).journeys
    }
    cart = journeys["cli-cart"]
    assert (cart.version, cart.state) == (1, decisioning_pb2.JOURNEY_STATE_PUBLISHED)
    published = (
        await omni.decisioning.GetJourney(decisioning_pb2.GetJourneyRequest(journey_id=cart.id))
    ).journey
    assert published.spec.steps[2].condition.in_segment_id == segment.id
    assert published.spec.steps[1].wait_for_event.timeout.seconds == 86400
    welcome = (
        await omni.decisioning.GetJourney(
            decisioning_pb2.GetJourneyRequest(journey_id=journeys["cli-vip-welcome"].id)
        )
    ).journey
    assert welcome.spec.entry.segment.segment_id == segment.id and welcome.version == 1
    definition = (
        await reports.ListConversionDefinitions(reports_pb2.ListConversionDefinitionsRequest())
    ).definitions[0]
    experiment = (await experiments.ListExperiments(experiments_pb2.ListExperimentsRequest())).experiments[0]
    assert experiment.state == experiments_pb2.EXPERIMENT_STATE_RUNNING
    assert experiment.attachment.journey_id == cart.id
    assert experiment.conversion_definition_id == definition.id
    assert [a.name for a in experiment.arms] == ["subject_a", "subject_b", "holdout"]

    code, out = await omni_cli(omni, "diff", "-f", str(config))
    assert code == 0 and "no changes" in out, out
    code, out = await omni_cli(omni, "apply", "-f", str(config))
    assert code == 0 and "0 created, 0 updated, 0 archived, 8 unchanged" in out, out

    # get exports the published journeys, the experiment and the definition as apply takes them.
    code, exported = await omni_cli(omni, "get", "all")
    assert code == 0, exported
    documents = {
        (d["kind"], d["spec"].get("name") or d["spec"]["id"]): d["spec"] for d in yaml.safe_load_all(exported)
    }
    cart_spec = documents["MultiStepJourney", "cli-cart"]
    assert cart_spec["steps"][2]["condition"]["in_segment"] == "cli-vip", cart_spec
    assert "version" not in cart_spec and "id" not in cart_spec and "state" not in cart_spec
    assert documents["MultiStepJourney", "cli-vip-welcome"]["entry"] == {"segment": {"segment": "cli-vip"}}
    exported_experiment = documents["Experiment", "cli-cart-subjects"]
    assert exported_experiment["attachment"] == {"journey": "cli-cart"}
    assert exported_experiment["conversion_definition"] == "cli-purchase"
    assert exported_experiment["state"] == "EXPERIMENT_STATE_RUNNING"
    assert ("ConversionDefinition", "cli-purchase") in documents
    assert ("Journey", "cli-cart") not in documents  # a multi-step journey is not a one-message one
    (tmp_path / "exported.yaml").write_text(exported)
    code, out = await omni_cli(omni, "diff", "-f", str(tmp_path / "exported.yaml"))
    assert code == 0 and "no changes" in out, out
    code, one = await omni_cli(omni, "get", "multi_step_journeys", "cli-cart")
    assert code == 0 and [d["spec"]["name"] for d in yaml.safe_load_all(one)] == ["cli-cart"], one

    # A changed journey is a new version; the one before stays readable as it was.
    config.write_text(FLOW.replace("timeout: 86400s", "timeout: 172800s"))
    code, out = await omni_cli(omni, "diff", "-f", str(config))
    assert code == 1 and "~ update multi_step_journeys/cli-cart (steps)" in out, out
    assert "-      timeout: 86400s" in out and "+      timeout: 172800s" in out, out
    code, out = await omni_cli(omni, "apply", "-f", str(config))
    assert code == 0 and "0 created, 1 updated, 0 archived, 7 unchanged" in out, out
    latest = (
        await omni.decisioning.GetJourney(decisioning_pb2.GetJourneyRequest(journey_id=cart.id))
    ).journey
    first = (
        await omni.decisioning.GetJourney(decisioning_pb2.GetJourneyRequest(journey_id=cart.id, version=1))
    ).journey
    assert latest.version == 2 and latest.spec.steps[1].wait_for_event.timeout.seconds == 172800
    assert first.version == 1 and first.spec.steps[1].wait_for_event.timeout.seconds == 86400
    code, out = await omni_cli(omni, "apply", "-f", str(config))
    assert code == 0 and "8 unchanged" in out, out

    # A running experiment's arms (and a conversion definition) cannot change: said, not applied.
    changed = FLOW.replace("timeout: 86400s", "timeout: 172800s")
    changed = changed.replace("allocation_percent: 45", "allocation_percent: 40").replace(
        "allocation_percent: 10", "allocation_percent: 20"
    )
    config.write_text(changed.replace("window_s: 604800", "window_s: 86400"))
    code, out = await omni_cli(omni, "diff", "-f", str(config))
    assert code == 1, out
    assert "! cannot experiments/cli-cart-subjects (arms)" in out, out
    assert "a running experiment's arms cannot change" in out, out
    assert "! cannot conversion_definitions/cli-purchase (window_s)" in out, out
    code, out = await omni_cli(omni, "apply", "-f", str(config))
    assert code == 1 and "not applied experiments/cli-cart-subjects" in out, out
    assert "2 not applied" in out, out
    after = (
        await experiments.GetExperiment(experiments_pb2.GetExperimentRequest(experiment_id=experiment.id))
    ).experiment
    assert [a.allocation_percent for a in after.arms] == [45, 45, 10]

    # Stopping is a state the file asks for; a journey left out is archived with --prune.
    stopped = FLOW.replace("timeout: 86400s", "timeout: 172800s").replace(
        "EXPERIMENT_STATE_RUNNING", "EXPERIMENT_STATE_STOPPED"
    )
    config.write_text(
        stopped.split("---\napiVersion: omni/v1\nkind: MultiStepJourney\nspec:\n  name: cli-vip-welcome")[0]
        + "---\n"
        + stopped.split("---\n")[-1]
    )
    code, out = await omni_cli(omni, "apply", "-f", str(config), "--prune")
    assert code == 0, out
    assert "updated experiments/cli-cart-subjects (state)" in out, out
    assert "archived multi_step_journeys/cli-vip-welcome" in out, out
    after = (
        await experiments.GetExperiment(experiments_pb2.GetExperimentRequest(experiment_id=experiment.id))
    ).experiment
    assert after.state == experiments_pb2.EXPERIMENT_STATE_STOPPED
    archived = (
        await omni.decisioning.GetJourney(
            decisioning_pb2.GetJourneyRequest(journey_id=journeys["cli-vip-welcome"].id)
        )
    ).journey
    assert archived.state == decisioning_pb2.JOURNEY_STATE_ARCHIVED

    # A stopped experiment does not run again.
    config.write_text(FLOW.replace("timeout: 86400s", "timeout: 172800s"))
    code, out = await omni_cli(omni, "diff", "-f", str(config))
    assert code == 1 and "a stopped experiment cannot become running" in out, out

    # A draft made elsewhere and never published: the file that matches it publishes it.
    draft_spec = decisioning_pb2.JourneySpec(
        entry=decisioning_pb2.JourneyEntry(api=decisioning_pb2.ApiEntryTrigger()),
        steps=[decisioning_pb2.JourneyStep(id="done", exit=decisioning_pb2.ExitStep())],
    )
    draft = (
        await omni.decisioning.CreateJourney(
            decisioning_pb2.CreateJourneyRequest(
                journey=decisioning_pb2.Journey(name="cli-draft", spec=draft_spec)
            )
        )
    ).journey
    (tmp_path / "draft.yaml").write_text(
        "kind: MultiStepJourney\nspec: {name: cli-draft, entry: {api: {}}, steps: [{id: done, exit: {}}]}\n"
    )
    code, out = await omni_cli(omni, "diff", "-f", str(tmp_path / "draft.yaml"))
    assert code == 1 and "~ update multi_step_journeys/cli-draft (unpublished)" in out, out
    code, out = await omni_cli(omni, "apply", "-f", str(tmp_path / "draft.yaml"))
    assert code == 0 and "0 created, 1 updated" in out, out
    published = (
        await omni.decisioning.GetJourney(decisioning_pb2.GetJourneyRequest(journey_id=draft.id))
    ).journey
    assert (published.version, published.state) == (1, decisioning_pb2.JOURNEY_STATE_PUBLISHED)
