"""`omni apply|diff|get` on every kind, and `omni person show`, against the real services.

The round trip: files applied to an empty installation create everything; diff then finds nothing to do;
`get all` prints documents that apply takes unchanged (nothing to do again); a changed file is an update
through the Update RPCs (with the changed fields as the mask), a removed object is archived with --prune,
and a change a service cannot make (a journey, a computed trait) is reported, not half-done.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import yaml

from omni.common.v1 import common_pb2
from omni.decisioning.v1 import decisioning_pb2
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
